"""Fixtures shared by the whole suite: real data from ../shared, small models made here."""

from __future__ import annotations

import fcntl
import gzip
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ARENA_SHARED_DIR", ROOT.parent / "shared"))
SHARED_DATA = Path(os.environ.get("ARENA_DATA_MIRROR", SHARED / "data"))
SHARED_MODELS = Path(os.environ.get("ARENA_MODEL_MIRROR", SHARED / "models"))

#: Test accuracy of the shared advertorch LeNet-5 on the full MNIST test set (shared/README.md).
LENET5_MNIST_ACCURACY = 0.9889

# --- Parallel runs (pytest-xdist, `-n N`): what each test process keeps to itself. -----------------------------
# settings.py is read before any conftest, with one var/ for the whole run; each test process (gw0, gw1...) then
# moves what lives there to var/xdist/<gw0...> (below), for itself and, through ARENA_VAR_DIR, for the worker and
# manage.py processes its tests start: SQLite test database, filesystem broker and results, media, data (hidden
# seeds), scratch. PostgreSQL: pytest-django names each process's test database after it (test_<name>_gw0). A Redis
# broker (and a Redis cache) is one server for all, so each process takes the database number after the configured
# one plus its index (redis://.../10: gw0 on 10, gw1 on 11...): queues, unacknowledged messages and FLUSHDB stay
# within one process. RabbitMQ is shared as it is: every test's queues and worker names are its own anyway.

#: pytest-xdist's name for this test process (gw0, gw1...); None in a plain run and in xdist's controller.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
#: Databases a Redis server has unless its configuration says otherwise.
REDIS_DATABASES = 16


def redis_for_worker(url: str, worker: str) -> str:
    """``url`` with its Redis database number moved up by the worker's index; other URLs as they are."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return url
    db = int(parts.path.strip("/") or 0) + int(worker.removeprefix("gw"))
    if db >= REDIS_DATABASES:
        raise RuntimeError(f"xdist worker {worker} would need Redis database {db} ({url} plus its index): "
                           f"configure a lower database number or run fewer workers")
    return urlunsplit(parts._replace(path=f"/{db}"))


def _own_var(settings, worker: str) -> None:
    """Every setting that settings.py put under var/ moves to var/xdist/<worker>/ (those set elsewhere stay)."""
    shared = Path(settings.VAR_DIR)
    own = shared / "xdist" / worker

    def moved(path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        return own / path.relative_to(shared) if path.is_relative_to(shared) else path

    os.environ["ARENA_VAR_DIR"] = str(own)  # what the processes the tests start compute theirs from
    settings.VAR_DIR = own
    for name in ("MEDIA_ROOT", "ARENA_DATA_DIR", "ARENA_SCRATCH_DIR", "STATIC_ROOT"):
        setattr(settings, name, moved(getattr(settings, name)))
    settings.STATIC_ROOT.mkdir(parents=True, exist_ok=True)
    test_database = settings.DATABASES["default"].get("TEST", {})
    if test_database.get("NAME") and settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        test_database["NAME"] = str(moved(test_database["NAME"]))  # pytest-django then appends _gw0 too
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {})
    for key, value in options.items():  # the filesystem broker's folders
        if "folder" in key:
            options[key] = str(moved(value))
            Path(options[key]).mkdir(parents=True, exist_ok=True)
    if settings.CELERY_RESULT_BACKEND.startswith("file://"):
        results = moved(settings.CELERY_RESULT_BACKEND.removeprefix("file://"))
        results.mkdir(parents=True, exist_ok=True)
        settings.CELERY_RESULT_BACKEND = f"file://{results}"


def _own_redis(settings, worker: str) -> None:
    """This process's own Redis databases, for itself and the processes it starts (they inherit the environment)."""
    broker = settings.CELERY_BROKER_URL
    own = redis_for_worker(broker, worker)
    if own != broker:
        # Celery reads both from the environment first (in this process too, whatever its app has loaded).
        settings.CELERY_BROKER_URL = os.environ["CELERY_BROKER_URL"] = own
        if settings.CELERY_RESULT_BACKEND == broker:  # the default: results kept on the broker
            settings.CELERY_RESULT_BACKEND = os.environ["CELERY_RESULT_BACKEND"] = own
    cache = settings.CACHES["default"]
    if cache["BACKEND"].endswith("RedisCache"):  # CACHE_URL: every test starts by clearing it (FLUSHDB)
        cache["LOCATION"] = os.environ["CACHE_URL"] = redis_for_worker(cache["LOCATION"], worker)


def _evaluate_at_the_tests_own_priority() -> None:
    """Evaluations in the tests run at the test processes' own priority (ARENA_EVAL_NICE 0 unless set).

    Here every process is "the site", and several run at once on two cores, where a niced job would wait
    behind the other processes' tests. The lowered priority itself is tested where it is applied
    (tests/evaluator/test_sandbox.py, tests/web/test_evaluation_limits.py).
    """
    from django.conf import settings

    os.environ.setdefault("ARENA_EVAL_NICE", "0")  # for the workers and scorers the tests start
    settings.ARENA_EVAL_NICE = int(os.environ["ARENA_EVAL_NICE"])  # and this process, whose settings are loaded


_evaluate_at_the_tests_own_priority()

if XDIST_WORKER:  # as this conftest is imported: before any test, fixture, database or Celery connection
    from django.conf import settings as _settings

    _own_var(_settings, XDIST_WORKER)
    _own_redis(_settings, XDIST_WORKER)


#: Tests that count every process on the host, or hold a wall-clock limit on CPU work: under xdist, each runs
#: while no other test of the run does.
RUN_ALONE = frozenset({
    # /proc before and after a fork bomb: another test's browser, workers or sandboxes would read as left over.
    "tests/evaluator/test_sandbox_hostile.py::test_fork_bomb_is_stopped_quickly_and_the_host_recovers",
    # A CPU-bound check with a wall-clock limit (20 s): measured at 33 s beside two other test processes on two
    # loaded cores, 10.8 s alone.
    "tests/evaluator/test_models_hostile_archives.py::test_too_many_nodes_is_refused_quickly[evades_the_pre_count]",
})


@contextmanager
def _turn(folder: Path, alone: bool) -> Iterator[None]:
    """A readers-writer lock over the run's test processes (flock on two files in ``folder``): every test holds
    ``turn`` shared, a test of RUN_ALONE holds it alone. A lone test waits at ``gate`` for the tests running then,
    and holds it while it runs, so that the tests started after it wait too (else they could keep it waiting)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "gate.lock", "a") as gate, open(folder / "turn.lock", "a") as turn:
        fcntl.flock(gate, fcntl.LOCK_EX)
        fcntl.flock(turn, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(gate, fcntl.LOCK_UN)
        yield  # closing the files releases the locks (the processes a test starts do not inherit them)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Under xdist, each test (its fixtures' setup and teardown included) takes its turn: see RUN_ALONE."""
    if not XDIST_WORKER:
        return (yield)
    with _turn(_settings.VAR_DIR.parent, item.nodeid in RUN_ALONE):  # var/xdist/, one for the run's processes
        return (yield)


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@pytest.fixture(scope="session")
def mnist_test() -> tuple[np.ndarray, np.ndarray]:
    """The real MNIST test set, read independently of the evaluator's loaders."""
    images = _read_idx(SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz")[:, None]
    labels = _read_idx(SHARED_DATA / "mnist" / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels


@pytest.fixture(scope="session")
def lenet5_safetensors(tmp_path_factory) -> Path:
    """The shared MNIST LeNet-5 converted to zoo safetensors, as a researcher would upload it."""
    from evaluator.models.convert import convert_checkpoint

    out = tmp_path_factory.mktemp("models") / "lenet5.safetensors"
    convert_checkpoint("mnist_lenet5", SHARED_MODELS / "mnist" / "mnist_lenet5_clntrained.pt", out)
    return out


@pytest.fixture(scope="session")
def lenet5_pt2(tmp_path_factory) -> Path:
    """The same LeNet-5 exported with torch.export (the recommended format)."""
    import torch
    from safetensors.torch import load_file

    from evaluator.models.convert import convert_checkpoint, export_module
    from evaluator.models.zoo import build_model
    from evaluator.spec import InputSpec

    folder = tmp_path_factory.mktemp("pt2")
    weights = folder / "lenet5.safetensors"
    convert_checkpoint("mnist_lenet5", SHARED_MODELS / "mnist" / "mnist_lenet5_clntrained.pt", weights)
    model = build_model("mnist_lenet5")
    model.load_state_dict(load_file(weights))
    model.eval()
    out = folder / "lenet5.pt2"
    with torch.no_grad():
        export_module(model, InputSpec(1, 28, 28), out)
    return out
