"""The operator allow-list: its properties checked against torch's own schemas, and wide enough for real models.

The list in :mod:`evaluator.models.operators` is data; these tests re-derive from torch 2.13
what the screen relies on (no randomness without an argument rule, no files, no ``out=``,
aliasing classified conservatively), and export every zoo architecture plus a catalogue of
standard layers to show that ordinary classifiers pass the screen and load with unchanged outputs.
"""

from __future__ import annotations

import math
import operator
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._ops import OpOverload

from evaluator.models import operators, screening
from evaluator.models.loading import load_model, screen_artifact
from evaluator.models.zoo import list_architectures
from evaluator.spec import ArtifactSpec, InputSpec

#: Core ATen overloads deliberately left off the list, and why (torch.Tag.core in torch 2.13).
REFUSED_CORE_OPS = {
    "aten.rand.default": "random",
    "aten.randn.default": "random",
    "aten.randperm.default": "random",
    "aten.nonzero.default": "data-dependent output shape",
    "aten._local_scalar_dense.default": "data-dependent value (item())",
    "aten._native_batch_norm_legit.default": "training-mode batch norm mutates running statistics",
    "aten.atan2.out": "out= overload",
    "aten.resize_.default": "in-place resize: grows storage with uninitialised memory",
    "aten._adaptive_avg_pool2d_backward.default": "backward kernel",
    "aten.avg_pool2d_backward.default": "backward kernel",
    "aten.convolution_backward.default": "backward kernel",
    "aten.embedding_dense_backward.default": "backward kernel",
    "aten.max_pool2d_with_indices_backward.default": "backward kernel",
    "aten.native_group_norm_backward.default": "backward kernel",
    "aten.native_layer_norm_backward.default": "backward kernel",
}


def overload(name: str) -> OpOverload:
    _, packet, overload_name = name.split(".", 2)
    return getattr(getattr(torch.ops.aten, packet), overload_name)


def aten_name(op: OpOverload) -> str:
    return f"aten.{op._schema.name.split('::', 1)[1]}.{op._overloadname}"


def core_aten_ops() -> set[str]:
    found = set()
    for packet_name in torch._C._dispatch_get_all_op_names():
        if not packet_name.startswith("aten::"):
            continue
        packet = getattr(torch.ops.aten, packet_name[len("aten::") :].split(".")[0], None)
        if packet is None:
            continue
        for overload_name in packet.overloads():
            op = getattr(packet, overload_name)
            if torch.Tag.core in op.tags:
                found.add(aten_name(op))
    return found


# --------------------------------------------------------------------------- the list, against torch's schemas


def test_every_allowed_operator_exists_in_this_torch() -> None:
    for name in operators.ALLOWED_ATEN_OPS:
        assert isinstance(overload(name), OpOverload), name
    assert operators.MAY_ALIAS_OPS <= operators.ALLOWED_ATEN_OPS
    assert operators.FRESH_COMPOSITE_OPS <= operators.FUNCTIONAL_OPS - operators.MAY_ALIAS_OPS
    assert not operators.FUNCTIONAL_OPS & operators.IN_PLACE_OPS


def test_core_aten_is_allowed_except_the_listed_refusals() -> None:
    core = core_aten_ops()
    assert len(core) > 150
    assert core - operators.ALLOWED_ATEN_OPS == set(REFUSED_CORE_OPS)


def test_no_allowed_operator_touches_files_storages_or_out_tensors() -> None:
    for name in operators.ALLOWED_ATEN_OPS:
        schema = overload(name)._schema
        assert not name.endswith(".out") and schema.overload_name != "out", name
        assert not any(word in name for word in ("file", "save", "load", "print", "pickle", "Storage")), name
        for argument in schema.arguments:
            assert "Storage" not in str(argument.type), name
            if str(argument.type) in ("str", "str?"):  # gelu's approximate, pad's mode, einsum's equation...
                assert argument.name in {"approximate", "mode", "padding", "equation", "reduce", "rounding_mode", "msg",
                                         "assert_msg"}, (name, argument.name)  # fmt: skip


def test_randomness_only_with_an_argument_rule() -> None:
    seeded = {name for name in operators.ALLOWED_ATEN_OPS if torch.Tag.nondeterministic_seeded in overload(name).tags}
    assert seeded, "torch should tag dropout as nondeterministic_seeded"
    assert seeded <= set(operators.ARGUMENT_RULES), seeded - set(operators.ARGUMENT_RULES)
    for name, alternatives in operators.ARGUMENT_RULES.items():
        arguments = {argument.name for argument in overload(name)._schema.arguments}
        assert all(rule.name in arguments for rules in alternatives for rule in rules), name


def test_functional_operators_write_nothing_and_in_place_ones_write_only_self() -> None:
    for name in operators.FUNCTIONAL_OPS:
        written = [a.name for a in overload(name)._schema.arguments if a.alias_info and a.alias_info.is_write]
        assert not written, (name, written)
    for name in operators.IN_PLACE_OPS:
        schema = overload(name)._schema
        written = [a.name for a in schema.arguments if a.alias_info and a.alias_info.is_write]
        assert written == ["self"], (name, written)
        assert schema.returns[0].alias_info is not None, name


def test_aliasing_is_classified_conservatively() -> None:
    """Views (by schema) and composites (no schema promise) must be listed as may-alias or checked fresh."""
    for name in operators.FUNCTIONAL_OPS:
        op = overload(name)
        if any(ret.alias_info is not None for ret in op._schema.returns):
            assert name in operators.MAY_ALIAS_OPS, name
        if torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeImplicitAutograd"):
            assert name in operators.MAY_ALIAS_OPS | operators.FRESH_COMPOSITE_OPS, name


def test_symbolic_and_higher_order_targets_resolve() -> None:
    modules = {"_operator": operator, "torch": torch, "math": math}
    for target in operators.SYMBOLIC_TARGETS:
        module, _, attribute = target.partition(".")
        assert callable(getattr(modules[module], attribute)), target
    for name in operators.HIGHER_ORDER_OPS:
        assert getattr(torch.ops.higher_order, name) is not None


def test_archive_constants_match_this_torch() -> None:
    from torch._export.serde.schema import SCHEMA_VERSION, ScalarType
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE
    from torch.export.pt2_archive import constants

    assert screening.PT2_ARCHIVE_VERSION == constants.ARCHIVE_VERSION_VALUE
    assert screening.PT2_ARCHIVE_FORMAT == constants.ARCHIVE_FORMAT_VALUE
    assert screening.PT2_SCHEMA_MAJOR == SCHEMA_VERSION[0]
    assert constants.MODELS_FILENAME_FORMAT.format("model") == "models/model.json"
    assert constants.WEIGHTS_CONFIG_FILENAME_FORMAT.format("model") == "data/weights/model_weights_config.json"
    assert constants.CONSTANTS_CONFIG_FILENAME_FORMAT.format("model") == "data/constants/model_constants_config.json"
    assert constants.SAMPLE_INPUTS_FILENAME_FORMAT.format("model") == "data/sample_inputs/model.pt"
    for code, size in screening._DTYPE_BYTES.items():
        assert _SERIALIZE_TO_TORCH_DTYPE[ScalarType(code)].itemsize == size, code


# --------------------------------------------------------------------------- wide enough: the zoo and a catalogue


def export_program(module: nn.Module, shape: tuple[int, ...], decompose: bool) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(module, (torch.rand(3, *shape),), dynamic_shapes=({0: batch},))
    return program.run_decompositions() if decompose else program


@pytest.mark.parametrize("decompose", [False, True], ids=["training_ir", "core_aten"])
@pytest.mark.parametrize("entry", list_architectures(), ids=lambda entry: entry.name)
def test_every_zoo_architecture_passes_the_screen_and_loads(tmp_path: Path, entry, decompose: bool) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    module = entry.build().eval()
    shape = (entry.latent_dim,) if entry.task == "generator" else entry.input_shape
    path = tmp_path / f"{entry.name}.pt2"
    torch.export.save(export_program(module, shape, decompose), str(path))
    report = screen_artifact(path, "pt2")
    assert 0 < report.graph_nodes < screening.MAX_GRAPH_NODES
    if entry.task == "generator":
        return  # generators take latent vectors, not images: screened here, never loaded as submissions
    loaded = load_model(ArtifactSpec(str(path), "pt2"), InputSpec(*entry.input_shape))
    images = torch.rand(5, *entry.input_shape)
    with torch.no_grad():
        assert torch.allclose(loaded(images), module(images), rtol=1e-4, atol=1e-5)


class Block(nn.Module):
    """Applies ``fn`` to the input together with its own submodules (so each catalogue case is a module)."""

    def __init__(self, fn, *modules: nn.Module) -> None:  # noqa: ANN001
        super().__init__()
        self.fn = fn
        self.parts = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, *self.parts)


def catalogue() -> dict[str, nn.Module]:
    """Standard layers and tensor functions image classifiers are built from (inputs: 4 x 8 x 8)."""
    activations = [nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.1), nn.ELU(), nn.SELU(), nn.CELU(), nn.GELU(), nn.GELU("tanh"),
                   nn.SiLU(), nn.Mish(), nn.Hardswish(), nn.Hardsigmoid(), nn.Hardtanh(), nn.Sigmoid(), nn.Tanh(),
                   nn.Softplus(), nn.Softsign(), nn.Softshrink(), nn.Hardshrink(), nn.LogSigmoid(),
                   nn.Threshold(0.1, 0.0)]  # fmt: skip
    return {
        "activations": Block(lambda x: sum(act(x) for act in activations)),
        "prelu_glu": Block(lambda x, p: p(x) + F.glu(torch.cat([x, x], 1), 1), nn.PReLU(4)),
        "norms": Block(
            lambda x, bn, gn, ln, inorm, rms: rms(ln(inorm(gn(bn(x))))) + F.local_response_norm(x, 2),
            nn.BatchNorm2d(4),
            nn.GroupNorm(2, 4),
            nn.LayerNorm([4, 8, 8]),
            nn.InstanceNorm2d(4, affine=True),
            nn.RMSNorm([8]),
        ),  # fmt: skip
        "convs": Block(
            lambda x, a, b, c, d: d(c(b(a(x)))),
            nn.Conv2d(4, 8, 3, padding=1, stride=2),
            nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8, bias=False),
            nn.ConvTranspose2d(8, 4, 2, stride=2),
            nn.Conv2d(4, 4, 1, padding="same"),
        ),  # fmt: skip
        "pools": Block(
            lambda x: (
                F.max_pool2d(x, 2)
                + F.avg_pool2d(x, 2)
                + F.adaptive_avg_pool2d(x, 4)
                + F.adaptive_max_pool2d(x, 4)
                + F.max_pool2d(x, 3, 2, 1, ceil_mode=True)[:, :, :4, :4]
                + F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
            )
        ),  # fmt: skip
        "resize_pad": Block(
            lambda x: (
                F.interpolate(x, scale_factor=2)
                + F.interpolate(x, size=(16, 16), mode="bilinear")
                + F.interpolate(x, scale_factor=2, mode="bicubic")
                + F.pixel_shuffle(F.pixel_unshuffle(F.pad(x, (4, 4, 4, 4), mode="reflect"), 2), 2)
                + F.pad(F.pad(x, (4, 4, 4, 4), mode="replicate"), (0, 0, 0, 0))
            )
        ),  # fmt: skip
        "dropout_eval": Block(lambda x, a, b: F.softmax(a(b(x)), 1), nn.Dropout(0.3), nn.Dropout2d(0.3)),
        "attention": Block(
            lambda x, mha, enc: enc(
                mha(
                    x.flatten(2).transpose(1, 2),
                    x.flatten(2).transpose(1, 2),
                    x.flatten(2).transpose(1, 2),
                    need_weights=False,
                )[0]
            ),
            nn.MultiheadAttention(4, 2, batch_first=True),
            nn.TransformerEncoderLayer(4, 2, 16, batch_first=True),
        ),  # fmt: skip
        "reductions_indexing": Block(
            lambda x: (
                x.mean((2, 3))
                + x.std((2, 3))
                + x.amax((2, 3))
                + x.norm(dim=(2, 3))
                + x.logsumexp((2, 3))
                + x.flatten(1).topk(3, 1)[0][:, :1]
                + x.flatten(1).sort(1)[0][:, :1]
                + x.flatten(1).cumsum(1)[:, -1:]
                + x.flatten(1).argmax(1, keepdim=True).float()
                + x.flatten(1)[:, [1, 3]].sum(1, keepdim=True)
            )
        ),  # fmt: skip
        "elementwise": Block(
            lambda x: (
                x.abs().sqrt()
                + x.exp()
                + x.clamp(0, 1)
                + torch.where(x > 0, x, 0.1 * x)
                + x.round()
                + x.sign()
                + torch.erf(x)
                + torch.maximum(x, -x)
                + x.masked_fill(x < -1, 0)
                + torch.remainder(x, 0.5)
                + ((x > 0) & (x < 1)).float()
                + torch.isnan(x).float()
                + (x * 255).to(torch.uint8).float() / 255
            )
        ),  # fmt: skip
        "shapes": Block(
            lambda x: (
                torch.cat(torch.chunk(x, 2, 1), 1)
                + x.permute(0, 1, 3, 2).contiguous()
                + x.flip(3)
                + x.roll(1, 2)
                + x.view(x.size(0), -1).view_as(x)
                + x.unsqueeze(1).squeeze(1)
                + x.expand(-1, -1, -1, -1)
                + torch.tril(x)
                + x.repeat(1, 1, 1, 1)
                + torch.zeros_like(x)
                + torch.arange(8.0).view(1, 1, 1, 8)
                + x.new_ones(x.shape)
            )
        ),  # fmt: skip
        "matmul": Block(
            lambda x: (
                x @ x.transpose(2, 3)
                + torch.einsum("bchw,bcwk->bchk", x, x)
                + F.normalize(x, dim=1)
                + F.cosine_similarity(x, x + 1, dim=1).unsqueeze(1)
            )
        ),  # fmt: skip
    }


def non_aliasing_violations(program: torch.export.ExportedProgram, images: torch.Tensor) -> list[str]:
    """Runs the graph and lists every operator the allow-list calls fresh whose output shares an input's memory."""
    violations: list[str] = []

    def storages(value: object) -> set[int]:
        tensors = [v for v in torch.utils._pytree.tree_leaves(value) if isinstance(v, torch.Tensor)]
        return {t.untyped_storage().data_ptr() for t in tensors if t.untyped_storage().nbytes() > 0}

    class Checker(torch.fx.Interpreter):
        def run_node(self, node: torch.fx.Node) -> object:
            result = super().run_node(node)
            if node.op == "call_function" and isinstance(node.target, OpOverload):
                name = aten_name(node.target)
                if name not in operators.MAY_ALIAS_OPS:
                    args, kwargs = self.fetch_args_kwargs_from_env(node)
                    if storages(result) & storages((args, kwargs)):
                        violations.append(name)
            return result

    module = program.module()
    with torch.no_grad():
        Checker(module).run(images)
    return violations


@pytest.mark.parametrize("decompose", [False, True], ids=["training_ir", "core_aten"])
def test_standard_layers_pass_the_screen(tmp_path: Path, decompose: bool) -> None:
    """The catalogue passes, and operators the list calls fresh never returned an input's memory."""
    torch.manual_seed(0)
    seen: set[str] = set()
    for name, module in catalogue().items():
        program = export_program(module.eval(), (4, 8, 8), decompose)
        path = tmp_path / f"{name}.pt2"
        torch.export.save(program, str(path))
        seen |= set(screen_artifact(path, "pt2").operators)
        assert non_aliasing_violations(program, torch.rand(2, 4, 8, 8)) == [], name
    assert len(seen) > (40 if decompose else 60)


def test_loaded_models_match_their_eager_outputs(tmp_path: Path) -> None:
    """Buffers, tensor constants, BatchNorm and a dynamic batch survive the sanitized copy exactly."""

    class WithState(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor([0.5]))
            self.scale = torch.tensor(2.0)  # a tensor constant, stored under data/constants
            self.conv = nn.Conv2d(1, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.linear = nn.Linear(4 * 26 * 26, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(F.relu(self.bn(self.conv((x - self.mean) * self.scale))).flatten(1))

    torch.manual_seed(0)
    module = WithState()
    module.bn.running_mean.uniform_(-1, 1)
    module.bn.running_var.uniform_(0.5, 2)
    module.eval()
    path = tmp_path / "state.pt2"
    torch.export.save(export_program(module, (1, 28, 28), False), str(path))
    with zipfile.ZipFile(path) as archive:
        assert any("/data/constants/tensor_" in name for name in archive.namelist())
    loaded = load_model(ArtifactSpec(str(path), "pt2"), InputSpec(1, 28, 28))
    for batch in (1, 2, 17):
        images = torch.rand(batch, 1, 28, 28)
        with torch.no_grad():
            assert torch.equal(loaded(images), module(images))
