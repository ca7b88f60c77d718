"""Format detection by content, and refusal of every pickle-based format without unpickling it."""

from __future__ import annotations

import builtins
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from evaluator.errors import EvaluationError
from evaluator.models.formats import detect_format
from evaluator.models.loading import load_model
from evaluator.spec import ArtifactSpec, InputSpec


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class CreatesMarker:
    """Unpickling this creates ``path``: proof that something executed the pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (builtins.open, (str(self.path), "w"))


def refusal(path: Path) -> EvaluationError:
    with pytest.raises(EvaluationError) as caught:
        detect_format(path)
    return caught.value


def test_safetensors_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"  # the name must not matter
    save_file({"a": torch.zeros(3, 2), "b": torch.ones(5, dtype=torch.int64)}, str(path), metadata={"k": "v"})
    assert detect_format(path) == "safetensors"


def test_safetensors_whose_header_length_starts_like_a_pickle_is_detected(tmp_path: Path) -> None:
    """A header 0x80 bytes long modulo 256 makes the file's first byte a pickle's opening byte: still safetensors.

    Found with the shared LeNet-5's weights saved with other metadata (a 640-byte header), refused as a pickle.
    """
    for padding in range(64):
        path = tmp_path / f"w{padding}.safetensors"
        save_file({"w": torch.zeros(2)}, path, metadata={"pad": "x" * padding})
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no padding gave a header length of 0x80 modulo 256")
    assert detect_format(path) == "safetensors"


def test_pt2_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    program = torch.export.export(Tiny(), (torch.zeros(2, 4),))
    torch.export.save(program, str(path))
    assert detect_format(path) == "pt2"


def test_torchscript_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    torch.jit.save(torch.jit.script(Tiny()), str(path))
    error = refusal(path)
    assert error.code == "unsafe_format"
    assert "TorchScript" in error.message and "torch.export" in error.message


def test_torch_save_pickle_is_refused_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "model.pt2"
    torch.save({"weights": torch.zeros(2), "payload": CreatesMarker(marker)}, path)
    error = refusal(path)
    assert error.code == "unsafe_format"
    assert "convert" in error.message
    with pytest.raises(EvaluationError) as caught:
        load_model(ArtifactSpec(str(path), "pt2"), InputSpec(1, 2, 2))
    assert caught.value.code == "unsafe_format"
    assert not marker.exists()


def test_raw_pickle_is_refused_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps(CreatesMarker(marker), protocol=4))
    assert not marker.exists()
    error = refusal(path)
    assert error.code == "unsafe_format"
    assert "pickle" in error.message.lower()
    for declared in ("safetensors", "pt2"):
        with pytest.raises(EvaluationError) as caught:
            load_model(ArtifactSpec(str(path), declared, architecture="mnist_lenet5"), InputSpec(1, 28, 28))
        assert caught.value.code == "unsafe_format"
    assert not marker.exists()


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt2"
    path.write_bytes(b"")
    assert refusal(path).code == "corrupt_artifact"


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.safetensors"
    path.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1)).tolist()))
    assert refusal(path).code in ("unsupported_format", "corrupt_artifact")


def test_other_zip_is_unsupported(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "model.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert refusal(path).code == "unsupported_format"


@pytest.mark.parametrize("keep_fraction", [0.5, 0.9, 0.999])
def test_truncated_safetensors(tmp_path: Path, keep_fraction: float) -> None:
    full = tmp_path / "full.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(full))
    data = full.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    error = refusal(path)
    assert error.code == "corrupt_artifact"
    assert "truncated" in error.message


def test_truncated_safetensors_header(tmp_path: Path) -> None:
    full = tmp_path / "full.safetensors"
    save_file({"w": torch.randn(4)}, str(full))
    path = tmp_path / "cut.safetensors"
    path.write_bytes(full.read_bytes()[:20])
    assert refusal(path).code == "corrupt_artifact"


def test_safetensors_with_inconsistent_offsets(tmp_path: Path) -> None:
    header = b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}}'
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(12))
    assert refusal(path).code == "corrupt_artifact"


def test_safetensors_with_broken_json(tmp_path: Path) -> None:
    header = b'{"w":{"dtype":"F32",'
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    assert refusal(path).code == "corrupt_artifact"
