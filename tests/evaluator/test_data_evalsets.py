"""Evaluation-set files: round trip, integrity checks, deterministic splits."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from evaluator.data.evalsets import read_evaluation_set, split_indices, write_evaluation_set
from evaluator.errors import EvaluationError


def _example(n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, size=(n, 3, 8, 8), dtype=np.uint8), rng.integers(0, 10, size=n).astype(np.int64)


def test_round_trip(tmp_path: Path) -> None:
    images, labels = _example()
    path = tmp_path / "sets" / "clean.safetensors"
    digest = write_evaluation_set(path, images, labels, {"source": "unit-test", "seed": "0"})
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [p.name for p in path.parent.iterdir()] == ["clean.safetensors"]  # no temporaries
    data = read_evaluation_set(path, expected_sha256=digest)
    assert data.images.dtype == torch.uint8 and data.labels.dtype == torch.int64
    np.testing.assert_array_equal(data.images.numpy(), images)
    np.testing.assert_array_equal(data.labels.numpy(), labels)
    assert data.metadata == {"source": "unit-test", "seed": "0"} and len(data) == 12
    assert read_evaluation_set(path).metadata["seed"] == "0"  # without a hash check too


def test_same_content_same_hash(tmp_path: Path) -> None:
    images, labels = _example()
    first = write_evaluation_set(tmp_path / "a.safetensors", images, labels, {"k": "v"})
    second = write_evaluation_set(tmp_path / "b.safetensors", images, labels, {"k": "v"})
    assert first == second


def test_tampering_is_detected(tmp_path: Path) -> None:
    images, labels = _example()
    path = tmp_path / "set.safetensors"
    digest = write_evaluation_set(path, images, labels, {})
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01  # one label bit
    path.write_bytes(bytes(raw))
    with pytest.raises(EvaluationError) as err:
        read_evaluation_set(path, expected_sha256=digest)
    assert err.value.code == "data_integrity" and digest in err.value.message
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(EvaluationError, match="not a readable safetensors"):
        read_evaluation_set(path)
    with pytest.raises(EvaluationError, match="cannot read"):
        read_evaluation_set(tmp_path / "missing.safetensors")


@pytest.mark.parametrize(
    "tensors",
    [
        {"images": torch.zeros(2, 1, 4, 4, dtype=torch.float32), "labels": torch.zeros(2, dtype=torch.int64)},
        {"images": torch.zeros(2, 4, 4, dtype=torch.uint8), "labels": torch.zeros(2, dtype=torch.int64)},
        {"images": torch.zeros(2, 1, 4, 4, dtype=torch.uint8), "labels": torch.zeros(3, dtype=torch.int64)},
        {"images": torch.zeros(2, 1, 4, 4, dtype=torch.uint8), "labels": torch.zeros(2, dtype=torch.int32)},
        {"images": torch.zeros(2, 1, 4, 4, dtype=torch.uint8)},
        {
            "images": torch.zeros(2, 1, 4, 4, dtype=torch.uint8),
            "labels": torch.zeros(2, dtype=torch.int64),
            "extra": torch.zeros(1),
        },
    ],
)
def test_wrong_shapes_and_dtypes_are_refused(tmp_path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(EvaluationError) as err:
        read_evaluation_set(path)
    assert err.value.code == "data_integrity"


def test_write_refuses_bad_input(tmp_path: Path) -> None:
    images, labels = _example()
    with pytest.raises(EvaluationError):
        write_evaluation_set(tmp_path / "x.safetensors", images.astype(np.float32), labels, {})
    with pytest.raises(ValueError, match="strings"):
        write_evaluation_set(tmp_path / "x.safetensors", images, labels, {"seed": 0})  # type: ignore[dict-item]
    assert not any(tmp_path.iterdir())


def test_split_indices() -> None:
    public, hidden = split_indices(1000, 0.3, seed=7)
    assert len(hidden) == 300 and len(public) == 700
    assert np.array_equal(np.sort(np.concatenate([public, hidden])), np.arange(1000))
    assert public.dtype == np.int64 and np.all(np.diff(hidden) > 0)
    again_public, again_hidden = split_indices(1000, 0.3, seed=7)
    assert np.array_equal(hidden, again_hidden) and np.array_equal(public, again_public)
    assert not np.array_equal(hidden, split_indices(1000, 0.3, seed=8)[1])
    expected = np.sort(np.random.Generator(np.random.PCG64(7)).permutation(1000)[:300])
    assert np.array_equal(hidden, expected)
    assert len(split_indices(10, 0.0, 0)[1]) == 0 and len(split_indices(10, 1.0, 0)[0]) == 0
    with pytest.raises(ValueError):
        split_indices(10, 1.5, 0)


def test_set_without_groups_keeps_its_sha256(tmp_path: Path) -> None:
    # Digest written by the code before groups existed: published sets keep their version.
    images, labels = np.arange(48, dtype=np.uint8).reshape(3, 1, 4, 4), np.arange(3)
    digest = write_evaluation_set(tmp_path / "a.safetensors", images, labels, {"name": "x", "seed": "7"})
    assert digest == "b32a21bcd9d0f5d32cc374f6d9b4abf346434a013d7118f9d5eea68d5fa84285"
    data = read_evaluation_set(tmp_path / "a.safetensors")
    assert data.groups is None and data.group_names == []


def test_grouped_round_trip(tmp_path: Path) -> None:
    images, labels = _example()
    groups = np.array([0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2], dtype=np.int64)
    names = ["clean", "fog:1", "fog:5"]
    path = tmp_path / "grouped.safetensors"
    digest = write_evaluation_set(path, images, labels, {"seed": "1"}, groups=groups, group_names=names)
    assert digest == write_evaluation_set(tmp_path / "again.safetensors", images, labels, {"seed": "1"}, groups, names)
    data = read_evaluation_set(path, expected_sha256=digest)
    assert data.groups is not None and data.groups.dtype == torch.int64
    np.testing.assert_array_equal(data.groups.numpy(), groups)
    assert data.group_names == names and data.metadata == {"seed": "1"}
    np.testing.assert_array_equal(data.images.numpy(), images)


@pytest.mark.parametrize(
    ("groups", "names"),
    [
        (np.array([0, 1, 2], dtype=np.int64), ["a", "b"]),  # id past the end
        (np.array([0, -1, 1], dtype=np.int64), ["a", "b"]),  # negative id
        (np.array([0, 1, 1], dtype=np.int32), ["a", "b"]),  # wrong dtype
        (np.array([0, 1], dtype=np.int64), ["a", "b"]),  # wrong length
        (np.array([[0, 1, 1]], dtype=np.int64), ["a", "b"]),  # wrong rank
        (np.array([0, 1, 1], dtype=np.int64), ["a", "a"]),  # duplicate names
        (np.array([0, 1, 1], dtype=np.int64), ["a", 2]),  # non-string name
    ],
)
def test_bad_groups_are_refused(tmp_path: Path, groups: np.ndarray, names: list) -> None:
    images, labels = np.zeros((3, 1, 4, 4), dtype=np.uint8), np.zeros(3, dtype=np.int64)
    with pytest.raises(EvaluationError) as err:
        write_evaluation_set(tmp_path / "w.safetensors", images, labels, {}, groups=groups, group_names=names)
    assert err.value.code == "data_integrity"
    # The same defect in a file written by something else is caught when reading.
    path = tmp_path / "r.safetensors"
    header = {"arena": json.dumps({"group_names": names})}
    tensors = {
        "images": torch.from_numpy(images),
        "labels": torch.from_numpy(labels),
        "groups": torch.from_numpy(groups),
    }
    save_file(tensors, str(path), metadata=header)
    with pytest.raises(EvaluationError) as err:
        read_evaluation_set(path)
    assert err.value.code == "data_integrity"
    assert not (tmp_path / "w.safetensors").exists()


def test_groups_and_names_must_come_together(tmp_path: Path) -> None:
    images, labels = np.zeros((2, 1, 4, 4), dtype=np.uint8), np.zeros(2, dtype=np.int64)
    groups = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="together"):
        write_evaluation_set(tmp_path / "x.safetensors", images, labels, {}, groups=groups.numpy())
    with pytest.raises(ValueError, match="reserved"):
        write_evaluation_set(tmp_path / "x.safetensors", images, labels, {"group_names": "[]"})
    for tensors, header in [
        ({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels), "groups": groups}, {}),
        ({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}, {"group_names": ["a"]}),
        (
            {"images": torch.from_numpy(images), "labels": torch.from_numpy(labels), "groups": groups},
            {"group_names": "a"},
        ),
    ]:
        path = tmp_path / "bad.safetensors"
        save_file(tensors, str(path), metadata={"arena": json.dumps(header)})
        with pytest.raises(EvaluationError) as err:
            read_evaluation_set(path)
        assert err.value.code == "data_integrity"
