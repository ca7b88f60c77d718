"""check_contract turns each way a model can break its promise into its own error code."""

from __future__ import annotations

import time

import pytest
import torch
from torch import Tensor, nn

from evaluator.errors import EvaluationError
from evaluator.models.contract import check_contract, probe_images
from evaluator.spec import InputSpec

MNIST = InputSpec(1, 28, 28)


class Lambda(nn.Module):
    def __init__(self, fn: object) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> object:
        return self.fn(x)  # type: ignore[operator]


def logits(x: Tensor) -> Tensor:
    return x.flatten(1)[:, :10] * 3


def code_of(model: nn.Module, task: str = "classifier", *, spec: InputSpec = MNIST, budget: float = 60.0) -> str:
    with pytest.raises(EvaluationError) as caught:
        check_contract(model, spec, task, num_classes=10, batch_size=8, time_budget_s=budget)
    return caught.value.code


def test_good_classifier_and_detectors_pass() -> None:
    report = check_contract(Lambda(logits), MNIST, "classifier", 10, batch_size=256, time_budget_s=60)
    assert report.output_shape == (8, 10) and report.output_dtype == "float32"
    assert report.seconds_per_batch < 60
    for detector in (lambda x: x.mean(dim=(1, 2, 3)), lambda x: x.mean(dim=(1, 2, 3)).unsqueeze(1)):
        check_contract(Lambda(detector), MNIST, "detector", 10, batch_size=256, time_budget_s=60)


def test_wrong_output_shape() -> None:
    assert code_of(Lambda(lambda x: x.flatten(1)[:, :9])) == "wrong_output_shape"
    assert code_of(Lambda(logits), task="detector") == "wrong_output_shape"
    # .squeeze() breaks on the single-image last batch
    assert code_of(Lambda(lambda x: x.flatten(1)[:, :1].squeeze()), task="detector") == "wrong_output_shape"


def test_non_finite_output() -> None:
    assert code_of(Lambda(lambda x: logits(x) / 0 * 0)) == "non_finite_output"
    assert code_of(Lambda(lambda x: logits(x) + torch.inf)) == "non_finite_output"


def test_integer_and_non_tensor_outputs() -> None:
    assert code_of(Lambda(lambda x: logits(x).long())) == "wrong_dtype"
    assert code_of(Lambda(lambda x: (logits(x),))) == "wrong_dtype"


def test_random_output_is_nondeterministic() -> None:
    assert code_of(Lambda(lambda x: logits(x) + torch.randn(x.shape[0], 10))) == "nondeterministic"
    dropout = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(784, 10)).train()
    # eval mode is set by the contract check, so dropout is off and the model passes
    check_contract(dropout, MNIST, "classifier", 10, batch_size=8, time_budget_s=60)


def test_slow_model_is_refused() -> None:
    def sleepy(x: Tensor) -> Tensor:
        time.sleep(0.05)
        return logits(x)

    assert code_of(Lambda(sleepy), budget=0.01) == "too_slow"


def test_model_that_rejects_the_input_size() -> None:
    expects_32 = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 10))
    with pytest.raises(EvaluationError) as caught:
        check_contract(expects_32, MNIST, "classifier", 10, batch_size=8, time_budget_s=60)
    assert caught.value.code == "wrong_input_shape"
    assert "(8, 1, 28, 28)" in caught.value.message
    assert len(caught.value.message) < 600


def test_exported_module_passes(tmp_path: object) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    model(torch.rand(2, 1, 28, 28))
    model.eval()
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (torch.rand(2, 1, 28, 28),), dynamic_shapes=({0: batch},))
    exported = program.module()  # refuses .eval(); check_contract must cope
    report = check_contract(exported, MNIST, "classifier", 10, batch_size=64, time_budget_s=60)
    assert report.output_shape == (8, 10)


def test_probe_is_seeded_and_in_range() -> None:
    spec = InputSpec(3, 8, 8, value_range=(-1.0, 1.0))
    first, second = probe_images(spec, 4, seed=3), probe_images(spec, 4, seed=3)
    assert torch.equal(first, second)
    assert float(first.min()) >= -1.0 and float(first.max()) <= 1.0 and float(first.min()) < 0
