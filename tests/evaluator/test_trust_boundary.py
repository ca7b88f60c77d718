"""The trust boundary: the model runs alone in its process and can influence nothing but its outputs.

Each hostile model here is one that reached rank 1 against the platform before the boundary
existed (issue 13), or a variant of one. They are exported with ``torch.export`` exactly as a
researcher would export an honest model: the tricks live in the graph, not in the loader.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from evaluator.data.evalsets import write_evaluation_set
from evaluator.errors import EvaluationError
from evaluator.remote import client
from evaluator.remote.client import HostOptions, ModelProcess, host_model
from evaluator.sandbox import bubblewrap_path
from evaluator.scoring import run_job
from evaluator.scoring.classifier import run_attacks
from evaluator.scoring.consistency import check_batch_consistency
from evaluator.scoring.feeding import predict
from evaluator.spec import ArtifactSpec, EvaluationSetSpec, InputSpec, JobSpec, ThreatModel

DIGITS = InputSpec(1, 28, 28)
needs_bwrap = pytest.mark.skipif(bubblewrap_path() is None, reason="bubblewrap is not installed")


def export(model: nn.Module, path: Path, shape: tuple[int, ...] = (1, 28, 28)) -> Path:
    program = torch.export.export(model.eval(), (torch.rand(4, *shape),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(program, str(path))
    return path


class Linear(nn.Module):
    """An honest digits classifier (fixed weights)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class ProbeAware(Linear):
    """Honest on images that look like the contract probe (uniform noise), batch-dependent on digits.

    Real digits are mostly black with few grey pixels; the probe is uniform noise, mostly grey.
    On digits, every logit gets the batch's mean logits added: the contract check (on the probe)
    sees a clean, batch-independent model, the hidden set does not.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(x.flatten(1))
        grey = ((x > 0.1) & (x < 0.9)).float().flatten(1).mean(dim=1, keepdim=True)
        natural = (grey < 0.4).float()
        return logits + natural * 5.0 * logits.mean(dim=0, keepdim=True)


class BatchMeanDetector(nn.Module):
    """A weak detector (one pixel's brightness) plus ten times the batch's mean: reads the class off the batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x[:, 0, 14, 14]
        return score + 10.0 * score.mean()


class Slow(nn.Module):
    """Honest, but each call costs hundreds of GFLOP: far beyond a 1 s per batch budget."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)
        self.register_buffer("w", torch.eye(1536) * 0.999)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.w
        for _ in range(60):
            h = h @ self.w
        return self.fc(x.flatten(1)) + h[0, 0] * 0.0


def digits_set(folder: Path, mnist_test, n: int = 300, name: str = "hidden.safetensors") -> EvaluationSetSpec:
    images, labels = mnist_test
    path = folder / name
    digest = write_evaluation_set(path, images[:n], labels[:n])
    os.chmod(path, 0o600)  # hidden sets are private to their owner
    return EvaluationSetSpec("mnist-hidden", str(path), digest, "clean")


def classifier_job(artifact: Path, *sets: EvaluationSetSpec, **changes) -> JobSpec:
    spec = JobSpec("boundary", "classifier", DIGITS, ArtifactSpec(str(artifact), "pt2"), tuple(sets),
                   batch_size=64, reliability_points=0, time_budget_s=60.0)
    return replace(spec, **changes)


def test_an_honest_model_is_scored_through_the_boundary_like_in_process(tmp_path, mnist_test):
    """The same accuracy as the model called directly; the batch checks ran and are in the provenance."""
    artifact = export(Linear(), tmp_path / "linear.pt2")
    evaluation_set = digits_set(tmp_path, mnist_test)
    result = run_job(classifier_job(artifact, evaluation_set))
    assert result.ok, (result.error_code, result.error)
    images, labels = mnist_test
    with torch.no_grad():
        expected = (Linear()(torch.from_numpy(images[:300]).float() / 255).argmax(1).numpy() == labels[:300]).mean()
    accuracy = next(m for m in result.metrics if m.metric == "accuracy")
    assert accuracy.value == pytest.approx(expected, abs=1e-12)
    checks = result.provenance["batch_checks"]["mnist-hidden"]
    assert checks["images"] == 16 and checks["max_batch_difference"] <= 1e-4
    assert result.provenance["model_process"] in ("bubblewrap", "process")


def test_batch_mean_detector_fails_as_batch_dependent(tmp_path):
    """Stored reals-then-fakes, every batch was one class: AUC 0.78 -> 0.997 before. Now: refused."""
    rng = np.random.default_rng(0)
    n = 256
    reals = rng.integers(0, 150, (n, 1, 28, 28), dtype=np.uint8)
    fakes = rng.integers(20, 170, (n, 1, 28, 28), dtype=np.uint8)
    images, labels = np.concatenate([reals, fakes]), np.repeat([0, 1], n).astype(np.int64)
    path = tmp_path / "detector.safetensors"
    digest = write_evaluation_set(path, images, labels)
    # What the trick bought when batches followed the stored order (the old evaluation).
    detector = BatchMeanDetector()
    x = torch.from_numpy(images).float() / 255
    with torch.no_grad():
        honest = torch.cat([detector(x[i : i + 1]) for i in range(len(x))]).numpy()
        stored_order = torch.cat([detector(x[i : i + 64]) for i in range(0, len(x), 64)]).numpy()
    assert roc_auc_score(labels, stored_order) > roc_auc_score(labels, honest) + 0.05
    artifact = export(detector, tmp_path / "batchmean.pt2")
    spec = JobSpec("detector", "detector", DIGITS, ArtifactSpec(str(artifact), "pt2"),
                   (EvaluationSetSpec("clean", str(path), digest, "clean"),), batch_size=64, time_budget_s=60.0)
    result = run_job(spec)
    assert not result.ok and result.error_code == "batch_dependent", (result.error_code, result.error)
    assert not result.metrics


def test_probe_aware_model_passes_the_probe_but_fails_on_hidden_images(tmp_path, mnist_test):
    """Batch-independent on the contract's probe images only: the checks on hidden images catch it."""
    from evaluator.models.contract import check_contract

    model = ProbeAware().eval()
    check_contract(model, DIGITS, "classifier", 10, 64, 60.0)  # the old, probe-only check is satisfied
    artifact = export(model, tmp_path / "probe-aware.pt2")
    result = run_job(classifier_job(artifact, digits_set(tmp_path, mnist_test)))
    assert not result.ok and result.error_code == "batch_dependent", (result.error_code, result.error)


class ProbeAwareRandom(Linear):
    """A randomised defence that is deterministic on probe-like images only (an in-process stand-in:
    the loader refuses random operators in an uploaded graph)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(x.flatten(1))
        grey = ((x > 0.1) & (x < 0.9)).float().flatten(1).mean(dim=1, keepdim=True)
        return logits + (grey < 0.4).float() * torch.randn_like(logits)


def test_nondeterminism_on_hidden_images_is_caught(mnist_test):
    from evaluator.models.contract import check_contract

    model = ProbeAwareRandom().eval()
    check_contract(model, DIGITS, "classifier", 10, 64, 60.0)  # deterministic on the probe
    images = torch.from_numpy(mnist_test[0][:200])
    outputs = predict(model, images, DIGITS, 64, torch.device("cpu"), order=torch.randperm(200))
    with pytest.raises(EvaluationError) as failure:
        check_batch_consistency(model, images, outputs, DIGITS, 64, torch.device("cpu"))
    assert failure.value.code == "nondeterministic"


def test_batch_consistency_accepts_an_honest_model_and_is_order_invariant(mnist_test):
    model = Linear().eval()
    images = torch.from_numpy(mnist_test[0][:200])
    in_order = predict(model, images, DIGITS, 64, torch.device("cpu"))
    shuffled = predict(model, images, DIGITS, 64, torch.device("cpu"), order=torch.randperm(200))
    assert torch.allclose(in_order, shuffled, rtol=0, atol=1e-5)
    report = check_batch_consistency(model, images, shuffled, DIGITS, 64, torch.device("cpu"))
    assert report.images == 16 and report.max_repeat_difference == 0.0


def test_random_spot_checks_catch_batch_dependence_during_attacks(tmp_path):
    """A model honest on everything the per-set checks send, dishonest only in batches of exactly 7.

    The attack stage sends batches the set checks never do; a spot check re-evaluates one image of a
    randomly chosen call alone, so a model cannot know which of its calls is checked.
    """

    class OnlyInSevens(Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = self.fc(x.flatten(1))
            sevens = (torch.ones_like(logits[:, :1]).sum(dim=0, keepdim=True) == 7).float()
            return logits + sevens * logits.mean(dim=0, keepdim=True)

    artifact = export(OnlyInSevens(), tmp_path / "sevens.pt2")
    with host_model(ArtifactSpec(str(artifact), "pt2"), DIGITS, task="classifier", num_classes=10, device="cpu",
                    time_budget_s=60.0, batch_size=64, options=replace(HostOptions.default(), spot_check_rate=1.0)
                    ) as hosted:
        model = hosted.model
        model.strict = model.hidden = True
        x = torch.rand(14, 1, 28, 28)
        with torch.no_grad():
            model(x[:5])  # honest sizes pass
        with pytest.raises(EvaluationError) as failure, torch.no_grad():
            model(x[:7])
    assert failure.value.code == "batch_dependent"


def test_a_model_too_slow_for_its_budget_is_refused_in_seconds(tmp_path, mnist_test):
    artifact = export(Slow(), tmp_path / "slow.pt2")
    started = time.monotonic()
    result = run_job(classifier_job(artifact, digits_set(tmp_path, mnist_test), time_budget_s=0.5))
    elapsed = time.monotonic() - started
    assert not result.ok and result.error_code == "too_slow", (result.error_code, result.error)
    assert elapsed < 60, elapsed  # the deadline is 10 s here, plus the model process's start


def test_attack_numbers_through_the_boundary_equal_the_model_called_directly(tmp_path, lenet5_safetensors,
                                                                             mnist_test):
    """Same points, same seed: identical robust accuracies, stages and pass counts.

    ``attacks-5`` (the demo digits track's suite) runs every kind of stage ``attacks-2`` has (APGD-CE, APGD-T,
    FMN, FAB-T, Square, the reliability checks) at a fifth of its cost: 300 s of CI for this test before. Its
    reliability checks read the cascade's white-box verdict, so that path crosses the boundary too.
    """
    from evaluator.models.loading import load_model

    images, labels = mnist_test
    data_path = tmp_path / "clean.safetensors"
    write_evaluation_set(data_path, images[:200], labels[:200])
    artifact = ArtifactSpec(str(lenet5_safetensors), "safetensors", architecture="mnist_lenet5")
    spec = JobSpec("attacks", "classifier", DIGITS, artifact, (EvaluationSetSpec("clean", str(data_path)),),
                   threat_models=(ThreatModel("Linf", 0.1, "Linf-0.1"), ThreatModel("L2", 1.0, "L2-1.0")),
                   attack_points=12, reliability_points=6, seed=5, batch_size=64, attack_suite="attacks-5")
    x, y = torch.from_numpy(images[:200]), torch.from_numpy(labels[:200])
    cpu = torch.device("cpu")
    local = load_model(artifact, DIGITS)
    direct_metrics, direct_details = run_attacks(local, spec, "clean", x, y, cpu, lambda f, s: None)
    with host_model(artifact, DIGITS, task="classifier", num_classes=10, device="cpu", time_budget_s=60.0,
                    batch_size=64) as hosted:
        hosted.model.strict = hosted.model.hidden = True
        remote_metrics, remote_details = run_attacks(hosted.model, spec, "clean", x, y, cpu, lambda f, s: None)
    assert [(m.metric, m.value, m.num_examples) for m in remote_metrics] == \
           [(m.metric, m.value, m.num_examples) for m in direct_metrics]
    for label in ("Linf-0.1", "L2-1.0"):
        for key in ("forward_passes", "backward_passes", "flags"):
            assert remote_details[label][key] == direct_details[label][key], (label, key)
        untimed = [[{k: v for k, v in stage.items() if k != "seconds"} for stage in details[label]["stages"]]
                   for details in (remote_details, direct_details)]
        assert untimed[0] == untimed[1], label
    robust = {m.metric: m.value for m in direct_metrics}
    assert robust["robust_accuracy@Linf-0.1"] < robust["attacked_clean_accuracy"]  # the attacks bite
    stages = [stage["attack"] for stage in direct_details["Linf-0.1"]["stages"]]
    assert stages == ["apgd-ce", "apgd-t", "fmn", "fab-t", "square"]
    assert all(stage["attacked"] > 0 for stage in direct_details["Linf-0.1"]["stages"])  # each one ran on points


# --------------------------------------------------------------------------- what the model process can see

VIEW_PROBE = r"""
import json, os, sys
from evaluator.remote.wire import write_frame
skip = ("/usr", "/proc", "/sys", "/dev", "/opt/arena", "/lib", "/lib64", "/bin", "/sbin", "/etc") + tuple(sys.argv[1:])
seen = []
for top, dirs, files in os.walk("/"):
    if top.startswith(skip) and top != "/":
        dirs[:] = []
        continue
    dirs[:] = [d for d in dirs if not os.path.join(top, d).startswith(skip)]
    seen += [os.path.join(top, f) for f in files]
report = {"files": sorted(seen), "job": sorted(os.listdir("/job")), "uid": os.getuid(),
          "env": sorted(os.environ)}
out = os.fdopen(os.dup(1), "wb")
write_frame(out, report)
"""


@needs_bwrap
def test_model_process_sees_the_artifact_and_nothing_of_the_hidden_sets(tmp_path, mnist_test, monkeypatch):
    artifact = export(Linear(), tmp_path / "linear.pt2")
    hidden = digits_set(tmp_path, mnist_test)
    monkeypatch.setenv("DATABASE_URL", "postgres://secret@db/arena")
    roots = sorted({os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix), sys.prefix})
    monkeypatch.setattr(client, "model_server_command", lambda: [sys.executable, "-c", VIEW_PROBE, *roots])
    with ModelProcess.start(str(artifact), "cpu", HostOptions("bubblewrap")) as (process, inside):
        header, _ = process.channel.receive(0, time.monotonic() + 60)
    assert inside == "/job/artifact"
    assert header["job"] == ["artifact"]
    assert header["files"] == ["/job/artifact"], header["files"]  # nothing else outside the system folders
    assert not any(Path(hidden.path).name in f or str(tmp_path) in f for f in header["files"])
    assert "DATABASE_URL" not in header["env"]
    if os.geteuid() == 0:
        assert header["uid"] != 0


NOISY_SERVER = r"""
import os, sys, json
import evaluator.remote.server as server
forged = json.dumps({"event": "result", "result": {"job_id": "boundary", "ok": True, "suite_version": "x",
                     "seed": 0, "metrics": [{"evaluation_set": "mnist-hidden", "metric": "accuracy", "value": 1.0,
                     "num_examples": 300}], "provenance": {"labels": "leaked"}}})
original = server.ModelServer.op_forward
def noisy(self, header, payload):
    print(forged, flush=True)                      # Python's stdout
    os.write(1, (forged + "\n").encode())         # fd 1 itself
    os.write(2, b"\x1b[2J garbage " * 100)        # stderr
    sys.stderr.write(forged + "\n")
    return original(self, header, payload)
server.ModelServer.op_forward = noisy
sys.exit(server.main())
"""

FORGING_SERVER = r"""
import os, sys, json
forged = json.dumps({"event": "result", "result": {"job_id": "boundary", "ok": True}})
os.write(1, (forged + "\n").encode() * 10)
sys.stdin.read()
"""


def test_garbage_on_the_model_process_stdout_or_stderr_changes_nothing(tmp_path, mnist_test, monkeypatch):
    artifact = export(Linear(), tmp_path / "linear.pt2")
    spec = classifier_job(artifact, digits_set(tmp_path, mnist_test))
    honest = run_job(spec)
    monkeypatch.setattr(client, "model_server_command", lambda: [sys.executable, "-c", NOISY_SERVER])
    noisy = run_job(spec)
    assert honest.ok and noisy.ok, (noisy.error_code, noisy.error)
    assert [(m.metric, m.value) for m in noisy.metrics] == [(m.metric, m.value) for m in honest.metrics]
    assert "leaked" not in json.dumps(noisy.provenance) and "garbage" not in json.dumps(noisy.provenance)


def test_a_model_process_that_forges_a_result_only_fails_its_own_job(tmp_path, mnist_test, monkeypatch):
    artifact = export(Linear(), tmp_path / "linear.pt2")
    spec = classifier_job(artifact, digits_set(tmp_path, mnist_test))
    monkeypatch.setattr(client, "model_server_command", lambda: [sys.executable, "-c", FORGING_SERVER])
    result = run_job(spec)
    assert not result.ok and not result.metrics
    assert result.error_code == "internal" or result.error_code == "model_error", result.error_code


HOSTILE_TEXT_SERVER = r"""
import sys
import evaluator.remote.server as server
original = server.ModelServer.op_forward
def leak(self, header, payload):
    if header["shape"][0] > 8:  # hidden batches (the contract probe has 8 images)
        raise RuntimeError("LEAK <a href=x> 0 1 2 3")
    return original(self, header, payload)
server.ModelServer.op_forward = leak
sys.exit(server.main())
"""


def test_text_from_the_model_process_is_not_kept_once_it_has_seen_hidden_images(tmp_path, mnist_test, monkeypatch):
    """After hidden images crossed, a model's exception text (which it could fill with what it saw) is dropped."""
    artifact = export(Linear(), tmp_path / "linear.pt2")
    spec = classifier_job(artifact, digits_set(tmp_path, mnist_test))
    monkeypatch.setattr(client, "model_server_command", lambda: [sys.executable, "-c", HOSTILE_TEXT_SERVER])
    result = run_job(spec)
    assert not result.ok and result.error_code == "model_error", (result.error_code, result.error)
    assert "LEAK" not in result.error and "<a" not in result.error
    assert "RuntimeError" in result.error


@pytest.mark.parametrize(("count", "batch", "sample"), [(1000, 64, 16), (130, 64, 16), (64, 64, 16), (10, 64, 16),
                                                        (200, 7, 30)])
def test_feed_repeats_sampled_images_in_another_batch(count, batch, sample):
    from evaluator.scoring.feeding import feed_with_repeats

    feed, chosen = feed_with_repeats(count, batch, sample, torch.Generator().manual_seed(count))
    assert sorted(feed[:count].tolist()) == list(range(count))  # every image once, in a shuffled order
    assert feed[:count].tolist() != list(range(count))
    assert feed[count:].tolist() == chosen.tolist() and len(set(chosen.tolist())) == len(chosen)
    assert len(chosen) == min(sample, (count // batch) * batch)
    first = {int(index): position for position, index in enumerate(feed[:count].tolist())}
    for offset, index in enumerate(chosen.tolist()):
        assert first[index] // batch != (count + offset) // batch  # the second pass is in another batch


SLOW_ON_HIDDEN_SERVER = r"""
import sys, time
import numpy as np
import evaluator.remote.server as server
original = server.ModelServer.op_forward
def slow(self, header, payload):
    # The probes are uniform noise (mean 0.5); MNIST digits are mostly black (mean about 0.13).
    if np.frombuffer(bytes(payload), dtype=np.float32).mean() < 0.3:
        time.sleep(2.0)
    return original(self, header, payload)
server.ModelServer.op_forward = slow
sys.exit(server.main())
"""


def test_a_model_that_recognises_the_probe_and_drags_on_hidden_batches_is_too_slow(tmp_path, mnist_test,
                                                                                     monkeypatch):
    """Fast on the probes, slow on digits: it runs the job out of time, and that is charged to it (too_slow), not
    to the platform (out_of_time, refunded): its own answers took far more than its probe speed allows."""
    from evaluator.sandbox.limits import SandboxLimits

    artifact = export(Linear(), tmp_path / "linear.pt2")
    spec = classifier_job(artifact, digits_set(tmp_path, mnist_test))
    monkeypatch.setattr(client, "model_server_command", lambda: [sys.executable, "-c", SLOW_ON_HIDDEN_SERVER])
    # A 38 s attempt leaves the job about 7 s: less than the five or more hidden batches' 2 s each.
    host = HostOptions(HostOptions.default().sandbox, limits=SandboxLimits(wall_seconds=38))
    result = run_job(spec, host=host)
    assert not result.ok and result.error_code == "too_slow", (result.error_code, result.error)
    assert "its speed on the contract probe allows" in result.error
    assert result.provenance["model_seconds"] > 1.5 * result.provenance["time_budget"]["model_seconds"]


def test_the_stderr_reader_ends_quietly_when_its_pipe_is_closed_under_a_read():
    """stop_child closes a dead child's pipes while StderrTail's thread may be inside readline; CPython then raises
    ValueError in that thread (seen in CI as an unhandled thread exception). The reader keeps what it read and ends."""
    import threading

    from evaluator.remote.client import StderrTail

    class ClosedUnderRead:
        def __init__(self) -> None:
            self.lines = [b"model: loading\n"]

        def readline(self, limit: int) -> bytes:
            if self.lines:
                return self.lines.pop()
            raise ValueError("PyMemoryView_FromBuffer(): info->buf must not be NULL")

    unhandled: list[BaseException] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: unhandled.append(args.exc_value)
    try:
        tail = StderrTail(ClosedUnderRead())
        assert tail.done.wait(10)
    finally:
        threading.excepthook = previous
    assert unhandled == [] and tail.text() == "model: loading\n"
