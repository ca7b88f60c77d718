"""Researcher-side helpers: .pt2 export with a dynamic batch, checkpoint to safetensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from evaluator.errors import EvaluationError
from evaluator.models.convert import convert_checkpoint, export_module
from evaluator.models.formats import detect_format
from evaluator.models.loading import load_model
from evaluator.models.zoo import build_model, list_architectures
from evaluator.spec import ArtifactSpec, InputSpec

MNIST = InputSpec(1, 28, 28)


def test_pt2_round_trip_with_batches_of_1_and_7(tmp_path: Path) -> None:
    model = build_model("mnist_lenet5")
    path = tmp_path / "lenet.pt2"
    report = export_module(model, MNIST, path)
    assert report.output_shape == (8, 10)
    assert detect_format(path) == "pt2"
    loaded = load_model(ArtifactSpec(str(path), "pt2"), MNIST)
    for size in (1, 7):
        images = torch.rand(size, 1, 28, 28)
        with torch.inference_mode():
            assert torch.allclose(loaded(images), model(images), rtol=1e-4, atol=1e-5)


def test_export_of_a_detector(tmp_path: Path) -> None:
    report = export_module(build_model("mnist_gan_discriminator"), MNIST, tmp_path / "d.pt2", task="detector")
    assert report.output_shape == (8,)


def test_export_failure_is_reported(tmp_path: Path) -> None:
    class DataDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow cannot be exported
                return x.flatten(1)[:, :10]
            return -x.flatten(1)[:, :10]

    with pytest.raises(EvaluationError) as caught:
        export_module(DataDependent(), MNIST, tmp_path / "x.pt2")
    assert caught.value.code == "export_failed"


@pytest.mark.slow
def test_every_zoo_model_exports_and_passes_the_pt2_screen(tmp_path: Path) -> None:
    for entry in list_architectures():
        if entry.task == "generator":
            continue
        export_module(
            build_model(entry.name),
            InputSpec(*entry.input_shape),
            tmp_path / f"{entry.name}.pt2",
            task=entry.task,
            num_classes=entry.num_classes or 10,
        )


def test_convert_wrapped_checkpoint(tmp_path: Path) -> None:
    model = build_model("cifar_resnet20")
    source = tmp_path / "resnet20.th"
    checkpoint = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "best_prec1": 90.0}
    torch.save(checkpoint, source)
    dest = convert_checkpoint("cifar_resnet20", source, tmp_path / "r.safetensors")
    with safe_open(str(dest), framework="pt") as handle:
        assert handle.metadata() == {"architecture": "cifar_resnet20"}
        assert torch.equal(handle.get_tensor("linear.weight"), model.linear.weight)


def test_convert_refuses_pickled_objects(tmp_path: Path) -> None:
    source = tmp_path / "whole_model.pt"
    torch.save(build_model("mnist_lenet5"), source)  # a whole module, not a state dict
    with pytest.raises(EvaluationError) as caught:
        convert_checkpoint("mnist_lenet5", source, tmp_path / "out.safetensors")
    assert caught.value.code == "unsafe_format"
    assert not (tmp_path / "out.safetensors").exists()


def test_convert_reports_mismatched_weights(tmp_path: Path) -> None:
    source = tmp_path / "lenet.pt"
    torch.save(build_model("mnist_lenet5").state_dict(), source)
    with pytest.raises(EvaluationError) as caught:
        convert_checkpoint("cifar_resnet20", source, tmp_path / "out.safetensors")
    assert caught.value.code == "weights_mismatch"
