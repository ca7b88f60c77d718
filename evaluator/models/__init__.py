"""Model loading for the evaluator: zoo architectures, artifact formats, the input/output contract.

Submissions arrive as safetensors weights for a zoo architecture or as a torch.export ``.pt2``;
pickle-based formats are refused by content (see :mod:`evaluator.models.formats`).
"""

from evaluator.models.contract import ContractReport, check_contract
from evaluator.models.formats import detect_format
from evaluator.models.loading import load_model
from evaluator.models.zoo import ZooEntry, build_model, get_architecture, list_architectures, register_architecture

__all__ = [
    "ContractReport",
    "ZooEntry",
    "build_model",
    "check_contract",
    "detect_format",
    "get_architecture",
    "list_architectures",
    "load_model",
    "register_architecture",
]
