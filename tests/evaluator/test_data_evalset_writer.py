"""The streaming writer writes the very bytes of write_evaluation_set, so a set's sha256 does not depend on the path."""

from __future__ import annotations

import numpy as np
import pytest

from evaluator.data.evalset_writer import EvaluationSetWriter
from evaluator.data.evalsets import read_evaluation_set, write_evaluation_set
from evaluator.data.integrity import sha256_file


def _data(n: int, shape=(3, 5, 7), seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("n", [0, 1, 37])
def test_streamed_bytes_equal_the_whole_array_writer(tmp_path, n, grouped):
    images, labels = _data(n)
    metadata = {"name": "x", "source": "école \"quoted\"\nline", "definition": '{"a": [1, 2]}'}
    groups = (np.arange(n) % 3).astype(np.int64) if grouped else None
    names = ["g0", "g1", "ünï"] if grouped else None
    whole = write_evaluation_set(tmp_path / "whole.safetensors", images, labels, metadata, groups, names)
    with EvaluationSetWriter(tmp_path / "stream.safetensors", labels, images.shape[1:], metadata, groups,
                             names) as writer:
        for start in range(0, n, 10):
            writer.write(images[start:start + 10])
    assert writer.sha256 == whole == sha256_file(tmp_path / "stream.safetensors")
    assert (tmp_path / "whole.safetensors").read_bytes() == (tmp_path / "stream.safetensors").read_bytes()
    loaded = read_evaluation_set(tmp_path / "stream.safetensors", whole)
    assert np.array_equal(loaded.images.numpy(), images) and np.array_equal(loaded.labels.numpy(), labels)


def test_a_short_or_failed_write_leaves_no_file(tmp_path):
    images, labels = _data(20)
    target = tmp_path / "set.safetensors"
    with pytest.raises(ValueError, match="10 images written, 20 announced"):
        with EvaluationSetWriter(target, labels, images.shape[1:]) as writer:
            writer.write(images[:10])
    with pytest.raises(RuntimeError):
        with EvaluationSetWriter(target, labels, images.shape[1:]) as writer:
            writer.write(images[:10])
            raise RuntimeError("reader failed")
    with pytest.raises(ValueError, match="more than the 20"):
        with EvaluationSetWriter(target, labels, images.shape[1:]) as writer:
            writer.write(images)
            writer.write(images[:1])
    with pytest.raises(ValueError, match="a chunk must be uint8"):
        with EvaluationSetWriter(target, labels, images.shape[1:]) as writer:
            writer.write(images.astype(np.float32))
    assert list(tmp_path.iterdir()) == []
