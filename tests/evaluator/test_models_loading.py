"""load_model: declared vs detected format, strict weights, input shapes and hostile .pt2 archives."""

from __future__ import annotations

import builtins
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from evaluator.errors import EvaluationError
from evaluator.models.contract import check_contract
from evaluator.models.convert import convert_checkpoint
from evaluator.models.loading import guard_zip_archive, load_model
from evaluator.models.zoo import build_model
from evaluator.spec import ArtifactSpec, InputSpec

MNIST = InputSpec(1, 28, 28)


class SmallNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.linear = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class CreatesMarker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (builtins.open, (str(self.path), "w"))


def code_of(call: Callable[[], object]) -> str:
    with pytest.raises(EvaluationError) as caught:
        call()
    return caught.value.code


@pytest.fixture
def lenet_file(tmp_path: Path) -> Path:
    path = tmp_path / "lenet.safetensors"
    model = build_model("mnist_lenet5")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def pt2_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "small.pt2"
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(SmallNet().eval(), (torch.rand(2, 1, 28, 28),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def rewrite_zip(source: Path, dest: Path, change: Callable[[str, bytes], bytes | None]) -> Path:
    """Copies a zip entry by entry; ``change`` returns new bytes, or None to keep an entry as it is."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as new:
        for info in old.infolist():
            data = old.read(info)
            replaced = change(info.filename, data)
            new.writestr(info.filename, data if replaced is None else replaced)
    return dest


def edit_model_json(edit: Callable[[dict], None]) -> Callable[[str, bytes], bytes | None]:
    def change(name: str, data: bytes) -> bytes | None:
        if not name.endswith("/models/model.json"):
            return None
        program = json.loads(data)
        edit(program)
        return json.dumps(program).encode()

    return change


def test_safetensors_loads_in_eval_mode_without_grads(lenet_file: Path) -> None:
    model = load_model(ArtifactSpec(str(lenet_file), "safetensors", architecture="mnist_lenet5"), MNIST)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_declared_format_must_match_content(lenet_file: Path, pt2_file: Path) -> None:
    assert code_of(lambda: load_model(ArtifactSpec(str(lenet_file), "pt2"), MNIST)) == "format_mismatch"
    wrong = ArtifactSpec(str(pt2_file), "safetensors", architecture="mnist_lenet5")
    assert code_of(lambda: load_model(wrong, MNIST)) == "format_mismatch"


def test_unknown_architecture(lenet_file: Path) -> None:
    for name in ("", "alexnet"):
        spec = ArtifactSpec(str(lenet_file), "safetensors", architecture=name)
        assert code_of(lambda spec=spec: load_model(spec, MNIST)) == "unknown_architecture"


def test_architecture_input_must_match_track(lenet_file: Path) -> None:
    spec = ArtifactSpec(str(lenet_file), "safetensors", architecture="mnist_lenet5")
    assert code_of(lambda: load_model(spec, InputSpec(3, 32, 32))) == "wrong_input_shape"


def test_weights_mismatch_names_the_keys(tmp_path: Path) -> None:
    state = {k: v.contiguous() for k, v in build_model("mnist_lenet5").state_dict().items()}
    state["linear2.weight"] = torch.zeros(11, 200)
    del state["conv1.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(EvaluationError) as caught:
        load_model(ArtifactSpec(str(path), "safetensors", architecture="mnist_lenet5"), MNIST)
    assert caught.value.code == "weights_mismatch"
    for key in ("conv1.bias", "extra.weight", "linear2.weight"):
        assert key in caught.value.message


def test_weights_for_another_architecture(lenet_file: Path) -> None:
    spec = ArtifactSpec(str(lenet_file), "safetensors", architecture="lenet5_classic")
    assert code_of(lambda: load_model(spec, MNIST)) == "weights_mismatch"


def test_metadata_architecture_must_agree(tmp_path: Path) -> None:
    source = tmp_path / "lenet.pt"
    torch.save(build_model("mnist_small_cnn_detector").state_dict(), source)
    path = convert_checkpoint("mnist_small_cnn_detector", source, tmp_path / "det.safetensors")
    assert load_model(ArtifactSpec(str(path), "safetensors", architecture="mnist_small_cnn_detector"), MNIST)
    mislabeled = ArtifactSpec(str(path), "safetensors", architecture="mnist_lenet5")
    assert code_of(lambda: load_model(mislabeled, MNIST)) == "weights_mismatch"


def test_missing_file_is_a_platform_fault(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError) as caught:
        load_model(ArtifactSpec(str(tmp_path / "gone.pt2"), "pt2"), MNIST)
    assert caught.value.platform_fault


def test_pt2_loads_and_passes_the_contract(pt2_file: Path) -> None:
    model = load_model(ArtifactSpec(str(pt2_file), "pt2"), MNIST)
    model.eval()  # the wrapper makes this safe on an exported module
    model.train(False)
    report = check_contract(model, MNIST, "classifier", 10, batch_size=64, time_budget_s=60)
    assert report.output_shape == (8, 10)
    images = torch.rand(5, 1, 28, 28, requires_grad=True)
    model(images).sum().backward()  # attacks need input gradients through the program
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_pt2_for_another_input_shape(pt2_file: Path) -> None:
    assert code_of(lambda: load_model(ArtifactSpec(str(pt2_file), "pt2"), InputSpec(1, 32, 32))) == "wrong_input_shape"


def test_pt2_with_fixed_batch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(SmallNet().eval(), (torch.rand(4, 1, 28, 28),)), str(path))
    with pytest.raises(EvaluationError) as caught:
        load_model(ArtifactSpec(str(path), "pt2"), MNIST)
    assert caught.value.code == "wrong_input_shape"
    assert "Dim" in caught.value.message


def test_pt2_size_limit(pt2_file: Path) -> None:
    spec = ArtifactSpec(str(pt2_file), "pt2")
    assert code_of(lambda: load_model(spec, MNIST, max_unpacked_bytes=1000)) == "corrupt_artifact"


def test_zip_bomb_is_refused_before_loading(tmp_path: Path, pt2_file: Path) -> None:
    path = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(pt2_file) as old, zipfile.ZipFile(path, "w") as new:
        for info in old.infolist():
            new.writestr(info.filename, old.read(info))
        new.writestr("small/extra/zeros", bytes(8 * 2**20), compress_type=zipfile.ZIP_DEFLATED)
    assert code_of(lambda: guard_zip_archive(path)) == "corrupt_artifact"
    assert code_of(lambda: load_model(ArtifactSpec(str(path), "pt2"), MNIST)) == "corrupt_artifact"


def test_rewritten_pt2_still_loads(tmp_path: Path, pt2_file: Path) -> None:
    """Control for the tests below: rewriting the zip alone does not break loading."""
    path = rewrite_zip(pt2_file, tmp_path / "copy.pt2", lambda name, data: None)
    assert load_model(ArtifactSpec(str(path), "pt2"), MNIST)(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_pickled_sample_inputs_in_pt2_never_run(tmp_path: Path, pt2_file: Path) -> None:
    """The sample inputs are a pickle: the loader never reads them (torch gets an empty entry instead).

    Before the sanitized copy, torch unpickled them under weights_only and the load failed with
    corrupt_artifact; now the model loads and the payload is simply never looked at.
    """
    marker = tmp_path / "marker"
    payload = io.BytesIO()
    torch.save(((CreatesMarker(marker),), {}), payload)

    def change(name: str, data: bytes) -> bytes | None:
        return payload.getvalue() if name.endswith("sample_inputs/model.pt") else None

    path = rewrite_zip(pt2_file, tmp_path / "evil.pt2", change)
    model = load_model(ArtifactSpec(str(path), "pt2"), MNIST)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert not marker.exists()


def test_pickled_weights_in_pt2_are_refused(tmp_path: Path, pt2_file: Path) -> None:
    def change(name: str, data: bytes) -> bytes | None:
        if not name.endswith("model_weights_config.json"):
            return None
        config = json.loads(data)
        for meta in config["config"].values():
            meta["use_pickle"] = True
        return json.dumps(config).encode()

    path = rewrite_zip(pt2_file, tmp_path / "evil.pt2", change)
    assert code_of(lambda: load_model(ArtifactSpec(str(path), "pt2"), MNIST)) == "unsafe_format"


def test_pt2_calling_arbitrary_python_is_refused(tmp_path: Path, pt2_file: Path) -> None:
    def retarget(program: dict) -> None:
        program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"

    path = rewrite_zip(pt2_file, tmp_path / "evil.pt2", edit_model_json(retarget))
    assert code_of(lambda: load_model(ArtifactSpec(str(path), "pt2"), MNIST)) == "unsafe_format"


def test_pt2_guard_code_injection_is_refused(tmp_path: Path, pt2_file: Path) -> None:
    def add_guard(program: dict) -> None:
        program["guards_code"] = ["__import__('os').system('true') == 0"]

    path = rewrite_zip(pt2_file, tmp_path / "evil.pt2", edit_model_json(add_guard))
    assert code_of(lambda: load_model(ArtifactSpec(str(path), "pt2"), MNIST)) == "unsafe_format"


def test_pt2_shape_expression_injection_is_refused(tmp_path: Path, pt2_file: Path) -> None:
    def poison(program: dict) -> None:
        values = program["graph_module"]["graph"]["tensor_values"]
        for value in values.values():
            for size in value["sizes"]:
                if "as_expr" in size:
                    size["as_expr"]["expr_str"] = "exec(chr(49))"
                    return
        raise AssertionError("no symbolic size to poison")

    path = rewrite_zip(pt2_file, tmp_path / "evil.pt2", edit_model_json(poison))
    assert code_of(lambda: load_model(ArtifactSpec(str(path), "pt2"), MNIST)) == "unsafe_format"


def test_damaged_pt2_is_corrupt(tmp_path: Path, pt2_file: Path) -> None:
    def garble(name: str, data: bytes) -> bytes | None:
        return b"{not json" if name.endswith("/models/model.json") else None

    path = rewrite_zip(pt2_file, tmp_path / "damaged.pt2", garble)
    assert code_of(lambda: load_model(ArtifactSpec(str(path), "pt2"), MNIST)) == "corrupt_artifact"
