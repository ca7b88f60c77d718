"""The same evaluation set written by two processes has the same sha256 (it names the set's version)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WRITE = (
    "import sys, numpy as np; from evaluator.data.evalsets import write_evaluation_set; "
    "print(write_evaluation_set(sys.argv[1], np.arange(48, dtype=np.uint8).reshape(3, 1, 4, 4), np.arange(3), "
    "{'name': 'x', 'version': '1', 'track': 't', 'seed': '7', 'source': 'test'}))"
)


def test_sha256_is_stable_across_processes(tmp_path):
    digests = {
        subprocess.run([sys.executable, "-c", WRITE, str(tmp_path / f"{i}.safetensors")], cwd=ROOT, check=True,
                       capture_output=True, text=True).stdout.strip()
        for i in range(4)
    }
    assert len(digests) == 1 and len(digests.pop()) == 64
