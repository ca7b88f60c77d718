"""Hostile .pt2 archives: each must be refused by the screen alone, before torch reads a byte of it.

Every test here builds its archive from a real ``torch.export.save`` output and changes what an
attacker would change. Where a test names "the old loader", that archive went through the
previous loader (screen of ``models/*.json`` only, every ``aten.*`` operator allowed): the
forged legacy archive ran its payload, and the ``aten.from_file`` graph returned the file's bytes.
Each refusal is checked twice: by :func:`screen_artifact` (what the web process and ``check``
run) and by :func:`load_model` (what the sandbox runs), with the same error code.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from evaluator.errors import EvaluationError
from evaluator.models import screening
from evaluator.models.loading import load_model, screen_artifact
from evaluator.models.screening import screen_pt2, write_sanitized_pt2
from evaluator.models.zoo import build_model
from evaluator.spec import ArtifactSpec, InputSpec
from tests.evaluator.pt2_archives import (
    edit_program,
    export_to,
    forge_legacy_archive,
    program_of,
    rewrite_zip,
    root_of,
    sympify_payload,
)

MNIST = InputSpec(1, 28, 28)


def refusal(path: Path) -> EvaluationError:
    """Both the screen and the loader refuse ``path``, with the same code; returns the loader's error."""
    with pytest.raises(EvaluationError) as screened:
        screen_artifact(path, "pt2")
    with pytest.raises(EvaluationError) as loaded:
        load_model(ArtifactSpec(str(path), "pt2"), MNIST)
    assert screened.value.code == loaded.value.code, (screened.value.message, loaded.value.message)
    return loaded.value


class Counter(nn.Module):
    """Keeps state across calls in a buffer: a stateful defence (or a query counter)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(1))
        self.linear = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        return self.linear(x.flatten(1)) + self.calls


class WritesIntoInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(0)  # the evaluator's (or the attack's) image batch is overwritten
        return self.linear(x.flatten(1))


class Noisy(nn.Module):
    """A randomised defence: different outputs for the same image on every call."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x + 0.1 * torch.randn_like(x)).flatten(1))


class Ones(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10] * 0 + torch.ones(10)


class Loop(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch._higher_order_ops.while_loop import while_loop

        step = torch.zeros((), dtype=torch.int64)
        return while_loop(lambda i, y: i < 3, lambda i, y: (i + 1, y * 2), (step, x.flatten(1)[:, :10].contiguous()))[1]


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return export_to(tmp_path_factory.mktemp("pt2") / "lenet.pt2", build_model("mnist_lenet5").eval())


# --------------------------------------------------------------------------- (a) the forged legacy archive


def test_forged_legacy_archive_is_refused_and_runs_nothing(tmp_path: Path, lenet: Path) -> None:
    marker = tmp_path / "pwned"
    path = forge_legacy_archive(lenet, tmp_path / "forged.pt2", marker)
    error = refusal(path)  # the old loader ran the payload here
    assert error.code == "unsafe_format"
    assert "legacy" in error.message and "older torch.export format" in error.message
    assert not marker.exists()


def test_missing_archive_version_alone_is_refused(tmp_path: Path, lenet: Path) -> None:
    path = rewrite_zip(lenet, tmp_path / "old.pt2", drop=lambda name: name.endswith("/archive_version"))
    error = refusal(path)
    assert error.code == "unsafe_format" and "archive_version" in error.message


def test_unknown_archive_version_is_refused(tmp_path: Path, lenet: Path) -> None:
    path = rewrite_zip(lenet, tmp_path / "v1.pt2", lambda n, d: b"1" if n.endswith("/archive_version") else None)
    assert refusal(path).code == "unsafe_format"


# --------------------------------------------------------------------------- (b)-(d) operators


def test_graph_reading_a_file_is_refused(tmp_path: Path) -> None:
    """``aten.from_file`` is standard ATen; the old loader let this graph return the file's bytes."""
    secret = tmp_path / "hidden_evaluation_set.bin"
    np.arange(10, dtype=np.float32).tofile(secret)

    def read_secret(program: dict[str, Any]) -> None:
        for node in program["graph_module"]["graph"]["nodes"]:
            if node["target"] == "torch.ops.aten.ones.default":
                node["target"] = "torch.ops.aten.from_file.default"
                node["inputs"] = [
                    {"name": "filename", "arg": {"as_string": str(secret)}, "kind": 1},
                    {"name": "shared", "arg": {"as_bool": False}, "kind": 1},
                    {"name": "size", "arg": {"as_int": 10}, "kind": 1},
                    {"name": "dtype", "arg": {"as_scalar_type": 7}, "kind": 2},
                ]
                return
        raise AssertionError("no aten.ones node to replace")

    path = edit_program(export_to(tmp_path / "ones.pt2", Ones()), tmp_path / "reader.pt2", read_secret)
    error = refusal(path)
    assert error.code == "unsafe_format" and "from_file" in error.message and "reads" in error.message


@pytest.mark.parametrize("decompose", [False, True], ids=["training_ir", "core_aten"])
def test_randomised_defence_is_refused(tmp_path: Path, decompose: bool) -> None:
    path = export_to(tmp_path / "noisy.pt2", Noisy().eval(), decompose=decompose)
    error = refusal(path)
    assert error.code == "unsafe_format" and "random" in error.message


def test_bernoulli_is_refused(tmp_path: Path, lenet: Path) -> None:
    def bernoulli(program: dict[str, Any]) -> None:
        node = next(n for n in program["graph_module"]["graph"]["nodes"] if n["target"].endswith("relu.default"))
        node["target"] = "torch.ops.aten.bernoulli.default"

    error = refusal(edit_program(lenet, tmp_path / "bernoulli.pt2", bernoulli))
    assert error.code == "unsafe_format" and "random" in error.message


def test_dropout_in_training_mode_is_refused(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(784, 10)).train()
    error = refusal(export_to(tmp_path / "dropout.pt2", model))
    assert error.code == "unsafe_format" and "train=False" in error.message
    assert load_model(ArtifactSpec(str(export_to(tmp_path / "eval.pt2", model.eval())), "pt2"), MNIST)


def test_batch_norm_in_training_mode_is_refused(tmp_path: Path) -> None:
    """Training-mode BN makes one image's score depend on the rest of the batch and updates state."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)).train()
    for decompose in (False, True):
        error = refusal(export_to(tmp_path / f"bn{decompose}.pt2", model, decompose=decompose))
        assert error.code == "unsafe_format"


def test_unbounded_loop_is_refused(tmp_path: Path) -> None:
    error = refusal(export_to(tmp_path / "loop.pt2", Loop()))
    assert error.code == "unsafe_format" and "while_loop" in error.message and "loop" in error.message


@pytest.mark.parametrize(
    "target",
    [
        "torch.ops.aten._print.default",
        "torch.ops.aten.add.out",
        "torch.ops.aten.set_.source_Storage",
        "torch.ops.aten.nonzero.default",
        "torch.ops.aten.rеlu.default",  # Cyrillic "е": looks allowed, is not
        "torch.ops.higher_order.invoke_subgraph",
        "torch.ops.my_library.custom.default",
        "#custom:op",
        "builtins.eval",
        "torch.os.system",
    ],
)
def test_other_operators_are_refused(tmp_path: Path, lenet: Path, target: str) -> None:
    def retarget(program: dict[str, Any]) -> None:
        node = next(n for n in program["graph_module"]["graph"]["nodes"] if n["target"].endswith("relu.default"))
        node["target"] = target

    assert refusal(edit_program(lenet, tmp_path / "evil.pt2", retarget)).code == "unsafe_format"


# --------------------------------------------------------------------------- writes into tensors it does not own


def test_model_writing_into_its_input_is_refused(tmp_path: Path) -> None:
    error = refusal(export_to(tmp_path / "writer.pt2", WritesIntoInput()))
    assert error.code == "unsafe_format" and "in-place" in error.message and "input batch" in error.message


def test_model_writing_into_a_view_of_its_input_is_refused(tmp_path: Path) -> None:
    class ViewWriter(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x.float()[:, :, :1].fill_(0.0)  # .float() of a float tensor is the tensor itself
            return x.flatten(1)[:, :10]

    assert refusal(export_to(tmp_path / "view.pt2", ViewWriter())).code == "unsafe_format"


@pytest.mark.parametrize("decompose", [False, True], ids=["training_ir", "core_aten"])
def test_stateful_model_is_refused(tmp_path: Path, decompose: bool) -> None:
    error = refusal(export_to(tmp_path / "counter.pt2", Counter(), decompose=decompose))
    assert error.code == "unsafe_format"
    assert "buffer" in error.message or "in-place" in error.message


def test_redefining_an_input_name_to_look_owned_is_refused(tmp_path: Path, lenet: Path) -> None:
    """A fresh node that reuses the input's name, then an in-place write to "it": names are defined once."""

    def shadow(program: dict[str, Any]) -> None:
        nodes = program["graph_module"]["graph"]["nodes"]
        clone = {"target": "torch.ops.aten.clone.default", "name": "x",
                 "inputs": [{"name": "self", "arg": {"as_tensor": {"name": "x"}}, "kind": 1}],
                 "outputs": [{"as_tensor": {"name": "x"}}], "metadata": {}}  # fmt: skip
        write = {"target": "torch.ops.aten.mul_.Scalar", "name": "mul_",
                 "inputs": [{"name": "self", "arg": {"as_tensor": {"name": "x"}}, "kind": 1},
                            {"name": "other", "arg": {"as_float": 0.0}, "kind": 1}],
                 "outputs": [{"as_tensor": {"name": "mul_"}}], "metadata": {}}  # fmt: skip
        nodes[:0] = [clone, write]

    error = refusal(edit_program(lenet, tmp_path / "shadow.pt2", shadow))
    assert error.code == "unsafe_format" and "twice" in error.message


def test_argument_given_twice_is_refused(tmp_path: Path) -> None:
    """Dropout with train=False for the screen and train=True for whichever reader keeps the last one."""
    path = export_to(tmp_path / "dropout.pt2", nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(784, 10)).eval())

    def twice(program: dict[str, Any]) -> None:
        node = next(n for n in program["graph_module"]["graph"]["nodes"] if "dropout" in n["target"])
        node["inputs"].append({"name": "train", "arg": {"as_bool": True}, "kind": 1})

    error = refusal(edit_program(path, tmp_path / "twice.pt2", twice))
    assert error.code == "unsafe_format" and "twice" in error.message


def test_in_place_operators_on_its_own_tensors_are_fine(tmp_path: Path) -> None:
    """The ResNet idiom (``out += identity``, ``ReLU(inplace=True)``, ``out[:, 0] = 0``) still loads."""

    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)
            self.relu = nn.ReLU(inplace=True)
            self.linear = nn.Linear(784, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.conv(x)
            out += x
            out = self.relu(out)
            out[:, :, 0] = 0.0
            offset = torch.tensor([0.5])  # lift_fresh_copy + detach_ in the graph
            return self.linear(out.flatten(1)) + offset

    module = InPlace().eval()
    path = export_to(tmp_path / "inplace.pt2", module)
    assert {"aten.add_.Tensor", "aten.relu_.default"} <= set(screen_artifact(path, "pt2").operators)
    images = torch.rand(3, 1, 28, 28)
    expected = module(images.clone())
    loaded = load_model(ArtifactSpec(str(path), "pt2"), MNIST)
    assert torch.allclose(loaded(images), expected, atol=1e-6)


# --------------------------------------------------------------------------- (e)-(f) expressions and guards


@pytest.mark.parametrize(
    "payload",
    [
        "MARKER",  # replaced by a sympify payload that creates the marker file
        "Symbol('s77', positive=True, integer=True) + 9**9**9**9",  # the old screen let this CPU bomb through
        "Pow(Integer(10), Integer(1000000000))",  # ditto
        "Symbol('s77', positive=True, integer=True, commutative=eval)",
        "Integer(１)",  # a full-width digit
        "Mul(Integer(2), Symbol('s77', positive=True, integer=True)).__class__",
    ],
)
def test_shape_expression_payload_is_refused(tmp_path: Path, lenet: Path, payload: str) -> None:
    marker = tmp_path / "pwned"
    text = sympify_payload(marker) if payload == "MARKER" else payload

    def poison(program: dict[str, Any]) -> None:
        for size in program["graph_module"]["graph"]["tensor_values"]["x"]["sizes"]:
            if "as_expr" in size:
                size["as_expr"]["expr_str"] = text
                return
        raise AssertionError("no symbolic size to poison")

    error = refusal(edit_program(lenet, tmp_path / "evil.pt2", poison))
    assert error.code == "unsafe_format" and "shape expression" in error.message
    assert not marker.exists()


def test_expression_payload_in_a_symbolic_value_is_refused(tmp_path: Path, lenet: Path) -> None:
    marker = tmp_path / "pwned"

    def poison(program: dict[str, Any]) -> None:
        graph = program["graph_module"]["graph"]
        graph["sym_int_values"]["extra"] = {"as_expr": {"expr_str": sympify_payload(marker), "hint": None}}

    assert refusal(edit_program(lenet, tmp_path / "evil.pt2", poison)).code == "unsafe_format"
    assert not marker.exists()


@pytest.mark.parametrize(
    "guard",
    [
        "__import__('pathlib').Path('MARKER').write_text('pwned')",
        "L['x'].size()[0] == 9**9**9**9",  # the old screen let this through to exec
        "L['x'].size()[0] == 1 or print('hi') is None",
        "L['x'].size()[0] == 1\nimport os",
        "L['__class__'].size()[0] == 1",
    ],
)
def test_guard_code_payload_is_refused(tmp_path: Path, lenet: Path, guard: str) -> None:
    marker = tmp_path / "pwned"

    def add_guard(program: dict[str, Any]) -> None:
        program["guards_code"] = [guard.replace("MARKER", str(marker))]

    error = refusal(edit_program(lenet, tmp_path / "evil.pt2", add_guard))
    assert error.code == "unsafe_format" and "guard" in error.message
    assert not marker.exists()


def test_range_constraint_on_a_non_size_symbol_is_refused(tmp_path: Path, lenet: Path) -> None:
    def constrain(program: dict[str, Any]) -> None:
        program["range_constraints"]["__import__('os')"] = {"min_val": 1, "max_val": None}

    assert refusal(edit_program(lenet, tmp_path / "evil.pt2", constrain)).code == "unsafe_format"


def test_export_with_guards_loads_and_torch_sees_only_reprints(tmp_path: Path) -> None:
    """Real guards (Dim.AUTO and size-dependent code) pass the grammar; torch gets canonical text."""

    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = x.shape[0]
            y = x * 2 if n > 2 else x
            return y.flatten(1)[:, :10]

    program = torch.export.export(Branchy(), (torch.rand(4, 1, 28, 28),), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    path = tmp_path / "guards.pt2"
    torch.export.save(program, str(path))
    assert program_of(path)["guards_code"] == ["L['x'].size()[0] > 2"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(path) as archive:
        write_sanitized_pt2(archive, screen_pt2(archive), buffer)
    with zipfile.ZipFile(buffer) as sanitized:
        names = set(sanitized.namelist())
        written = json.loads(sanitized.read("model/models/model.json"))
        assert sanitized.read("model/data/sample_inputs/model.pt") == b""
    assert names == {
        f"model/{name}"
        for name in (
            "archive_format",
            "archive_version",
            "byteorder",
            ".data/version",
            "models/model.json",
            "data/weights/model_weights_config.json",
            "data/constants/model_constants_config.json",
            "data/sample_inputs/model.pt",
        )
    }
    assert written["guards_code"] == ["(L['x'].size()[0] > 2)"]
    assert all(node["metadata"] == {} for node in written["graph_module"]["graph"]["nodes"])
    loaded = load_model(ArtifactSpec(str(path), "pt2"), MNIST)
    images = torch.rand(5, 1, 28, 28)
    assert torch.equal(loaded(images), Branchy()(images))


# ---------------------------------------------------------------- (g) entries torch.export.save does not write


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("extra/evil.json", "extra file"),
        ("data/weights/evil.pkl", "pickle"),
        ("data/weights/model.pt", "pickle"),
        ("models/second.json", "second program"),
        ("data/aotinductor/model/model.so", "native code"),
        ("data/constants/custom_obj_0", "non-tensor constant"),
        ("data/weights/weight_99", "do not mention"),
        ("data/weights/../../../etc/passwd", "does not write"),
        ("serialized_exported_program.json", "does not write"),
    ],
)
def test_unexpected_entry_is_refused(tmp_path: Path, lenet: Path, entry: str, words: str) -> None:
    path = rewrite_zip(lenet, tmp_path / "extra.pt2", add=((f"{root_of(lenet)}/{entry}", b"{}"),))
    error = refusal(path)
    assert error.code == "unsafe_format" and words in error.message


@pytest.mark.parametrize(
    "name",
    ["serialized_exported_program.json", "../evil.json", "other/models/model.json", "lenet\uff0fmodels/model.json"],
)
def test_entries_outside_the_archive_folder_are_refused(tmp_path: Path, lenet: Path, name: str) -> None:
    path = rewrite_zip(lenet, tmp_path / "outside.pt2", add=((name, b"{}"),))
    assert refusal(path).code == "unsafe_format"


def test_duplicate_entry_names_are_refused(tmp_path: Path, lenet: Path) -> None:
    """Two ``models/model.json``: Python's zipfile reads the last, torch's miniz may read the first."""
    marker = tmp_path / "pwned"
    program = program_of(lenet)
    program["guards_code"] = [f"__import__('os').system('touch {marker}')"]
    name = f"{root_of(lenet)}/models/model.json"
    path = rewrite_zip(lenet, tmp_path / "dup.pt2", add=((name, json.dumps(program).encode()),))
    error = refusal(path)
    assert error.code == "unsafe_format" and "two entries" in error.message
    assert not marker.exists()


def test_duplicate_json_keys_are_refused(tmp_path: Path, lenet: Path) -> None:
    """JSON parsers disagree on duplicate keys too (first or last wins), so none are accepted."""

    def change(name: str, data: bytes) -> bytes | None:
        if not name.endswith("/models/model.json"):
            return None
        return data.replace(
            b'"target": "torch.ops.aten.relu.default"',
            b'"target": "torch.ops.aten.relu.default", "target": "torch.ops.aten.from_file.default"',
            1,
        )

    error = refusal(rewrite_zip(lenet, tmp_path / "keys.pt2", change))
    assert error.code == "corrupt_artifact" and "duplicate key" in error.message


def test_weights_table_pointing_outside_its_folder_is_refused(tmp_path: Path, lenet: Path) -> None:
    def change(name: str, data: bytes) -> bytes | None:
        if not name.endswith("model_weights_config.json"):
            return None
        config = json.loads(data)
        next(iter(config["config"].values()))["path_name"] = "../../archive_format"
        return json.dumps(config).encode()

    assert refusal(rewrite_zip(lenet, tmp_path / "outside.pt2", change)).code in ("corrupt_artifact", "unsafe_format")


def test_weights_larger_than_their_bytes_are_refused(tmp_path: Path, lenet: Path) -> None:
    def change(name: str, data: bytes) -> bytes | None:
        if not name.endswith("model_weights_config.json"):
            return None
        config = json.loads(data)
        next(iter(config["config"].values()))["tensor_meta"]["sizes"][0] = {"as_int": 10**6}
        return json.dumps(config).encode()

    error = refusal(rewrite_zip(lenet, tmp_path / "big.pt2", change))
    assert error.code == "corrupt_artifact" and "fewer bytes" in error.message


def test_names_that_are_not_identifiers_are_refused(tmp_path: Path, lenet: Path) -> None:
    def rename(program: dict[str, Any]) -> None:
        graph = program["graph_module"]["graph"]
        graph["tensor_values"]["relu = print(1); relu"] = graph["tensor_values"].pop("relu")

    assert refusal(edit_program(lenet, tmp_path / "name.pt2", rename)).code == "unsafe_format"


def test_operator_passed_as_an_argument_is_refused(tmp_path: Path, lenet: Path) -> None:
    def smuggle(program: dict[str, Any]) -> None:
        node = program["graph_module"]["graph"]["nodes"][0]
        node["inputs"].append({"name": "hook", "arg": {"as_operator": "builtins.exec"}, "kind": 2})

    assert refusal(edit_program(lenet, tmp_path / "op.pt2", smuggle)).code == "unsafe_format"


def test_unknown_program_field_is_refused(tmp_path: Path, lenet: Path) -> None:
    def add_field(program: dict[str, Any]) -> None:
        program["graph_module"]["graph"]["nodes"][0]["code"] = "import os"

    assert refusal(edit_program(lenet, tmp_path / "field.pt2", add_field)).code == "unsafe_format"


# --------------------------------------------------------------------------- (h) size limits


@pytest.mark.parametrize("separator", [": ", " : "], ids=["torch_spacing", "evades_the_pre_count"])
def test_too_many_nodes_is_refused_quickly(tmp_path: Path, lenet: Path, separator: str) -> None:
    """torch's own spacing is refused before parsing (tens of ms); other spacing after parsing (about a second)."""
    program = program_of(lenet)
    nodes = program["graph_module"]["graph"]["nodes"]
    relu = next(n for n in nodes if n["target"].endswith("relu.default"))
    source = relu["outputs"][0]["as_tensor"]["name"]
    for index in range(screening.MAX_GRAPH_NODES + 1):  # a chain of distinct relu nodes
        name = f"extra_relu_{index}"
        nodes.append(
            {
                "target": relu["target"],
                "inputs": [{"name": "self", "arg": {"as_tensor": {"name": source}}, "kind": 1}],
                "outputs": [{"as_tensor": {"name": name}}],
                "metadata": {},
                "name": name,
            }
        )
        source = name
    model_json = f"{root_of(lenet)}/models/model.json"
    path = rewrite_zip(
        lenet,
        tmp_path / "huge.pt2",
        lambda n, d: json.dumps(program, separators=(", ", separator)).encode() if n == model_json else None,
    )
    started = time.perf_counter()
    error = refusal(path)
    assert error.code == "model_too_large" and "graph nodes" in error.message
    assert time.perf_counter() - started < 20  # both calls; each is well under a second alone


def test_too_much_program_json_is_refused_before_parsing(
    tmp_path: Path, lenet: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(screening, "MAX_PROGRAM_JSON_BYTES", 4096)
    error = refusal(lenet)
    assert error.code == "model_too_large" and "MiB of program description" in error.message


def test_deeply_nested_json_is_refused(tmp_path: Path, lenet: Path) -> None:
    def nest(program: dict[str, Any]) -> None:
        deep: Any = 0
        for _ in range(screening.MAX_JSON_DEPTH + 10):
            deep = [deep]
        program["graph_module"]["graph"]["nodes"][0]["inputs"][0]["arg"] = {"as_ints": deep}

    assert refusal(edit_program(lenet, tmp_path / "deep.pt2", nest)).code in ("unsafe_format", "corrupt_artifact")


# --------------------------------------------------------------------------- the public screen


def test_screen_reports_what_it_saw(lenet: Path) -> None:
    report = screen_artifact(lenet, "pt2")
    assert report.format == "pt2" and report.graph_nodes == 10
    assert "aten.conv2d.default" in report.operators and report.program_bytes > 0


def test_screen_checks_the_declared_format(tmp_path: Path, lenet: Path) -> None:
    from safetensors.torch import save_file

    weights = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2)}, str(weights))
    assert screen_artifact(weights, "safetensors").format == "safetensors"
    for path, declared in ((weights, "pt2"), (lenet, "safetensors")):
        with pytest.raises(EvaluationError) as caught:
            screen_artifact(path, declared)
        assert caught.value.code == "format_mismatch"


def test_screen_never_calls_torch_export_load(tmp_path: Path, lenet: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the screen must not load the program")

    monkeypatch.setattr(torch.export, "load", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    screen_artifact(lenet, "pt2")
    with pytest.raises(EvaluationError):
        screen_artifact(forge_legacy_archive(lenet, tmp_path / "forged.pt2", tmp_path / "marker"), "pt2")
