"""Where a score was computed, for provenance (it uses the standard ``platform`` module)."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from evaluator import __version__


def hardware_description(device: str) -> dict[str, Any]:
    """The device, machine, Python, torch and evaluator versions of the process that runs the model."""
    info: dict[str, Any] = {
        "device": device,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "evaluator": __version__,
        "stdlib_platform_module": platform.__file__,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
