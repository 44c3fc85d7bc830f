"""Build the PyTorch part of the onnx-near test corpus: small cases from both torch exporters.

Run from the repository root::

    python models/make_corpus_torch.py

It writes, for every case NAME, three files (see ``common.py``) into

* ``models/corpus/torch-torchscript/``  exported with ``torch.onnx.export(..., dynamo=False)``
  (opset 17 unless the case says otherwise), and
* ``models/corpus/torch-dynamo/``       exported with ``torch.onnx.export(..., dynamo=True)``
  at the exporter's default opset.

Cases: an MLP per activation (``mlp_<act>``), one of each convolution kind followed by ReLU,
Conv-BN-ReLU with BatchNorm kept (``conv_bn_relu``) and folded (``conv_bn_relu_folded``), a
residual block, ``nn.TransformerEncoder`` (post-LN, GELU), the ReLU MLP and the Conv2d case at
TorchScript opsets 11/13/15/17, and two TorchScript exports with
``export_modules_as_functions`` (model-local ONNX functions).

Goldens are computed on the torch side only (no ONNX, no onnxruntime, no onnx_near), from one
float32 forward pass over all samples:

* forward hooks on every module applying learned weights (Conv*, ConvTranspose*, Linear,
  BatchNorm*, LayerNorm; role "pre") and on every activation module (role "post"; PReLU,
  which has weights, is an activation: one "post" tap), each distinct tensor once;
* where hooks do not see what the framework computes, the forward is recomputed from the
  module's weights with torch ops: ``nn.TransformerEncoderLayer`` (its attention runs in
  functional code: packed in-projection and out-projection; its GELU is ``F.gelu``), and the
  folded BatchNorm case, whose golden comes from torch's own fused model
  (``torch.nn.utils.fusion.fuse_conv_bn_eval``).

Matrix of a tap: feature axis -> columns (axis 1 for convolution-produced tensors, Conv1d and
Conv3d included; the last axis for Linear/LayerNorm outputs, (N, T, D) -> N*T rows), all rows,
effective rank in float64 (``common.tap``).  onnxruntime is used only to check that each
exported graph reproduces torch's output (atol 1e-4), on the full batch and on 3 samples.

Exporter notes: the dynamo exporter needs ``onnxscript``; its default optimizer folds eval-mode
BatchNorm into the Conv, so the BN-kept dynamo cases are exported with ``optimize=False``.
Dynamo emits no model-local functions here (torch 2.13), hence the TorchScript function cases.
The transformer is exported with the MHA/encoder fast path disabled (under ``no_grad`` the
TorchScript exporter would otherwise meet ``aten::_transformer_encoder_layer_fwd``).
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
from common import ATOL, Tap, cap_ir_version, ort_run, save_inputs, write_golden
from make_models import hook_goldens, randomize_batchnorm_stats, torch_tap
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

CORPUS = Path(__file__).resolve().parent / "corpus"
TS_DIR = CORPUS / "torch-torchscript"
DYNAMO_DIR = CORPUS / "torch-dynamo"
TS_OPSET = 17
OPSET_VARIANTS = (11, 13, 15, 17)
FRAMEWORK = f"torch {torch.__version__.split('+')[0]}"
INPUT, OUTPUT = "input", "output"

PRE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
)
POST_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.SiLU,
    nn.GELU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Tanh,
    nn.Sigmoid,
    nn.ReLU6,
)

# MLP activations: name suffix -> (module factory, kind).
ACTIVATIONS: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "relu": (nn.ReLU, "ReLU"),
    "leakyrelu": (lambda: nn.LeakyReLU(0.1), "LeakyReLU(0.1)"),
    "prelu": (lambda: nn.PReLU(16), "PReLU (16 slopes)"),
    "elu": (nn.ELU, "ELU"),
    "selu": (nn.SELU, "SELU"),
    "celu": (nn.CELU, "CELU"),
    "silu": (nn.SiLU, "SiLU"),
    "gelu": (nn.GELU, "GELU (erf)"),
    "gelu_tanh": (lambda: nn.GELU(approximate="tanh"), "GELU (tanh)"),
    "mish": (nn.Mish, "Mish"),
    "hardswish": (nn.Hardswish, "Hardswish"),
    "hardsigmoid": (nn.Hardsigmoid, "Hardsigmoid"),
    "softplus": (nn.Softplus, "Softplus"),
    "tanh": (nn.Tanh, "Tanh"),
    "sigmoid": (nn.Sigmoid, "Sigmoid"),
    "relu6": (nn.ReLU6, "ReLU6"),
}


# --------------------------------------------------------------------------- seeds and data


def seed_of(name: str) -> int:
    """A stable per-case seed (the same weights and data for both exporters and all opsets)."""
    return zlib.crc32(name.encode()) % (2**31)


def normal(name: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed_of(name)).standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------- goldens


def transformer_goldens(model: nn.TransformerEncoder, x: torch.Tensor) -> tuple[list[Tap], torch.Tensor]:
    """Recompute each post-LN TransformerEncoderLayer from its weights with torch ops.

    nn.MultiheadAttention runs functional code (hooks on ``out_proj`` never fire) and the
    layer's GELU is ``F.gelu``, so the taps are recomputed: packed in-projection (N, T, 3d),
    out-projection, norm1, linear1, GELU, linear2, norm2 per layer.  The result is checked
    against the module's own output.
    """
    taps: list[Tap] = []
    with torch.no_grad():
        h = x
        for i, layer in enumerate(model.layers):
            assert isinstance(layer, nn.TransformerEncoderLayer) and not layer.norm_first
            sa = layer.self_attn
            p = f"layers.{i}"
            n, t, d = h.shape
            heads, hd = sa.num_heads, d // sa.num_heads
            qkv = h @ sa.in_proj_weight.T + sa.in_proj_bias  # (N, T, 3d)
            taps.append(torch_tap(f"{p}.self_attn.in_proj", "MultiheadAttention.in_proj", "pre", qkv, -1))
            q, k, v = (z.reshape(n, t, heads, hd).transpose(1, 2) for z in qkv.chunk(3, dim=-1))
            att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd), dim=-1) @ v  # (N, H, T, hd)
            ctx = att.transpose(1, 2).reshape(n, t, d)
            out = ctx @ sa.out_proj.weight.T + sa.out_proj.bias
            taps.append(torch_tap(f"{p}.self_attn.out_proj", "MultiheadAttention.out_proj", "pre", out, -1))
            h = layer.norm1(h + out)
            taps.append(torch_tap(f"{p}.norm1", "LayerNorm", "pre", h, -1))
            z1 = h @ layer.linear1.weight.T + layer.linear1.bias
            taps.append(torch_tap(f"{p}.linear1", "Linear", "pre", z1, -1))
            a1 = torch.nn.functional.gelu(z1)
            taps.append(torch_tap(f"{p}.activation", "GELU (F.gelu)", "post", a1, -1))
            z2 = a1 @ layer.linear2.weight.T + layer.linear2.bias
            taps.append(torch_tap(f"{p}.linear2", "Linear", "pre", z2, -1))
            h = layer.norm2(h + z2)
            taps.append(torch_tap(f"{p}.norm2", "LayerNorm", "pre", h, -1))
        assert model.norm is None
        y = model(x)
    torch.testing.assert_close(h, y, rtol=0, atol=1e-5)
    return taps, y


# --------------------------------------------------------------------------- models


def make_mlp(act: Callable[[], nn.Module]) -> nn.Module:
    model = nn.Sequential(nn.Linear(8, 16), act(), nn.Linear(16, 16), act(), nn.Linear(16, 4))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.PReLU):  # non-trivial per-feature slopes (default is all 0.25)
                m.weight.uniform_(0.05, 0.5)
    return model


def conv_relu(conv: Callable[[], nn.Module]) -> nn.Module:
    return nn.Sequential(conv(), nn.ReLU())


def randomize_batchnorm(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial running statistics (make_models' helper) and affine parameters."""
    with torch.no_grad():
        randomize_batchnorm_stats(model, gen)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) * 1.5 + 0.25)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.3)


def make_conv_bn_relu(name: str) -> nn.Sequential:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1, stride=2),
        nn.BatchNorm2d(12),
        nn.ReLU(),
    )
    randomize_batchnorm(model, torch.Generator().manual_seed(seed_of(name) + 1))
    return model


def fused_conv_bn_relu(model: nn.Sequential) -> nn.Sequential:
    """torch's own Conv+BN fusion (eval mode): what the folded ONNX graph computes."""
    m = model.eval()
    layers: list[nn.Module] = []
    for conv, bn in ((m[0], m[1]), (m[3], m[4])):
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        layers += [fuse_conv_bn_eval(conv, bn), nn.ReLU()]
    return nn.Sequential(*layers).eval()


class ResBlock(nn.Module):
    """Conv-BN-ReLU-Conv-BN + identity skip, then ReLU (two ReLU modules)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        out: torch.Tensor = self.relu2(self.bn2(self.conv2(y)) + x)
        return out


def make_transformer() -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d_model=16, nhead=2, dim_feedforward=32, batch_first=True, activation="gelu", dropout=0.1
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # enable_nested_tensor note
        return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)


# --------------------------------------------------------------------------- export


def export_torchscript(
    model: nn.Module, x: torch.Tensor, path: Path, opset: int, fold: bool = True, functions: bool = False
) -> None:
    """TorchScript exporter; ``fold=False`` (no constant folding) keeps BatchNormalization."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            do_constant_folding=fold,
            export_modules_as_functions=functions,
        )


def canonical_functions(path: Path) -> None:
    """Make ``export_modules_as_functions`` output reproducible, without changing its meaning.

    The TorchScript exporter emits the local functions in a run-dependent order and builds each
    function's body from whichever module instance it met first, so the function-local value
    and node names vary between runs (set/pointer order; PYTHONHASHSEED does not fix it).  Sort
    the functions by (domain, name) and rename every function-local name by position.
    """
    model = onnx.load(str(path))
    funcs = sorted(model.functions, key=lambda f: (f.domain, f.name))
    for f in funcs:
        names = {n: f"x{i}" for i, n in enumerate(f.input)}
        names.update({n: f"y{i}" for i, n in enumerate(f.output)})
        for k, node in enumerate(f.node):
            assert all(a.type not in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
            node.name = f"{f.name}_n{k}"
            for j, out in enumerate(node.output):
                if out and out not in names:
                    names[out] = f"t{k}_{j}"
        # ("" = an absent optional input, kept as is)
        f.input[:] = [names.get(n, n) for n in f.input]
        f.output[:] = [names.get(n, n) for n in f.output]
        for node in f.node:
            node.input[:] = [names.get(n, n) for n in node.input]
            node.output[:] = [names.get(n, n) for n in node.output]
    del model.functions[:]
    model.functions.extend(funcs)
    onnx.save(model, str(path))


def export_dynamo(model: nn.Module, x: torch.Tensor, path: Path, optimize: bool = True) -> None:
    """torch.export-based exporter at its default opset, dynamic batch; one self-contained file.

    ``optimize=False`` skips the onnxscript optimizer, whose rewrite rules fold eval-mode
    BatchNormalization into the preceding Conv (the only way to keep BN nodes).

    The per-node ``pkg.torch.onnx.stack_trace`` metadata (absolute source paths) is dropped so
    the files do not depend on where the repository lives; everything else is kept as exported.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            verbose=False,
            optimize=optimize,
        )
    assert program is not None
    proto = program.model_proto

    def strip(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    strip(attr.g)

    strip(proto.graph)
    for f in proto.functions:
        for node in f.node:
            keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
    onnx.save(proto, str(path))


def opset_of(proto: onnx.ModelProto) -> int:
    return int(next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")))


def write_case(
    out_dir: Path,
    name: str,
    kind: str,
    exporter: str,
    model: nn.Module,
    data: np.ndarray,
    axis: int,
    *,
    golden_model: nn.Module | None = None,
    goldens: Callable[[nn.Module, torch.Tensor], tuple[list[Tap], torch.Tensor]] | None = None,
    opset: int = TS_OPSET,
    fold: bool = True,
    functions: bool = False,
    must_have: str | None = None,
    must_not_have: str | None = None,
) -> int:
    """Export ``model``, check it with onnxruntime, write inputs and torch-side goldens."""
    model.eval()
    x = torch.from_numpy(data)
    gm = (golden_model if golden_model is not None else model).eval()
    taps, y_golden = goldens(gm, x) if goldens is not None else hook_goldens(gm, x, axis, PRE_TYPES, POST_TYPES)
    with torch.no_grad():
        y = model(x)
    torch.testing.assert_close(y_golden, y, rtol=0, atol=1e-5)  # e.g. fused vs unfused BN

    path = out_dir / f"{name}.onnx"
    if exporter == "torch-torchscript":
        export_torchscript(model, x, path, opset, fold=fold, functions=functions)
        if functions:
            canonical_functions(path)
    else:
        export_dynamo(model, x, path, optimize=fold)
    proto = cap_ir_version(path)  # full check (shape inference) passes for every case
    ops = {n.op_type for n in proto.graph.node} | {n.op_type for f in proto.functions for n in f.node}
    if must_have is not None:
        assert must_have in ops, f"{name}: no {must_have} in {sorted(ops)}"
    if must_not_have is not None:
        assert must_not_have not in ops, f"{name}: {must_not_have} in {sorted(ops)}"
    if functions:
        assert proto.functions, f"{name}: no local functions"
    feeds = save_inputs(out_dir / f"{name}.inputs.npz", proto, data)

    (ort_y,) = ort_run(path, feeds)
    np.testing.assert_allclose(ort_y, y.numpy(), rtol=0, atol=ATOL)
    (ort_small,) = ort_run(path, {INPUT: data[:3]})
    np.testing.assert_allclose(ort_small, y.numpy()[:3], rtol=0, atol=ATOL)

    write_golden(out_dir, name, FRAMEWORK, opset_of(proto), taps, exporter=exporter, kind=kind)
    return len(taps)


# --------------------------------------------------------------------------- cases


def build_cases(out_dir: Path, exporter: str) -> list[tuple[str, str, int, int]]:
    """All cases for one exporter; returns (name, kind, opset, taps) per case written."""
    ts = exporter == "torch-torchscript"
    written: list[tuple[str, str, int, int]] = []

    def case(name: str, kind: str, make: Callable[[], nn.Module], shape: tuple[int, ...], axis: int, **kw: Any) -> None:
        base = kw.pop("seed_name", name)
        torch.manual_seed(seed_of(base))
        model = make()
        data = normal(base, shape)
        golden_of = kw.pop("golden_of", None)
        if golden_of is not None:
            kw["golden_model"] = golden_of(model)
        n = write_case(out_dir, name, kind, exporter, model, data, axis, **kw)
        proto = onnx.load(str(out_dir / f"{name}.onnx"))
        written.append((name, kind, opset_of(proto), n))
        print(f"  {exporter:17s} {name:28s} opset {opset_of(proto):2d}  taps {n:2d}  {kind}")

    # 1. MLP per activation.
    for act, (factory, label) in ACTIVATIONS.items():
        case(f"mlp_{act}", f"MLP {label}", functools.partial(make_mlp, factory), (32, 8), -1)

    # 2. Convolutions, each followed by ReLU; features on axis 1.
    convs: list[tuple[str, str, Callable[[], nn.Module], tuple[int, ...]]] = [
        ("conv1d_relu", "Conv1d+ReLU", lambda: nn.Conv1d(4, 8, 3, padding=1), (24, 4, 16)),
        ("conv2d_relu", "Conv2d+ReLU", lambda: nn.Conv2d(3, 8, 3, padding=1), (24, 3, 8, 8)),
        ("conv3d_relu", "Conv3d+ReLU", lambda: nn.Conv3d(2, 6, 3, padding=1), (16, 2, 4, 5, 5)),
        (
            "conv2d_depthwise_relu",
            "depthwise Conv2d (groups=8)+ReLU",
            lambda: nn.Conv2d(8, 8, 3, padding=1, groups=8),
            (24, 8, 6, 6),
        ),
        (
            "conv2d_grouped_relu",
            "grouped Conv2d (groups=2)+ReLU",
            lambda: nn.Conv2d(8, 12, 3, padding=1, groups=2),
            (24, 8, 6, 6),
        ),
        (
            "convtranspose2d_relu",
            "ConvTranspose2d (stride 2)+ReLU",
            lambda: nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1),
            (24, 8, 4, 4),
        ),
    ]
    for name, kind, conv, shape in convs:
        case(name, kind, functools.partial(conv_relu, conv), shape, 1)

    # 3. BatchNorm in eval mode, kept and folded into the Conv.  Kept: TorchScript without
    # constant folding, dynamo without its optimizer.  Folded by default: TorchScript's
    # constant folding / the dynamo optimizer's BN-fusion rule; golden from torch's fusion.
    bn_shape = (24, 3, 8, 8)
    folder = "constant folding" if ts else "optimizer"
    case(
        "conv_bn_relu",
        "2x Conv2d+BN+ReLU (BN unfolded)",
        lambda: make_conv_bn_relu("conv_bn_relu"),
        bn_shape,
        1,
        fold=False,
        must_have="BatchNormalization",
    )
    case(
        "conv_bn_relu_folded",
        f"2x Conv2d+BN+ReLU (BN folded by the exporter's {folder})",
        lambda: make_conv_bn_relu("conv_bn_relu"),
        bn_shape,
        1,
        seed_name="conv_bn_relu",
        golden_of=fused_conv_bn_relu,
        must_not_have="BatchNormalization",
    )

    # 4. Residual block (BN kept).
    def make_resblock() -> nn.Module:
        m = ResBlock(8)
        randomize_batchnorm(m, torch.Generator().manual_seed(seed_of("resblock") + 1))
        return m

    case(
        "resblock",
        "residual block Conv-BN-ReLU-Conv-BN + skip, ReLU (BN unfolded)",
        make_resblock,
        (24, 8, 6, 6),
        1,
        fold=False,
        must_have="BatchNormalization",
    )

    # 5. nn.TransformerEncoder (2 post-LN layers, GELU), eval mode, no fast path.
    case(
        "transformer_encoder",
        "nn.TransformerEncoder 2x (d=16, 2 heads, ff=32, GELU, post-LN)",
        make_transformer,
        (24, 6, 16),
        -1,
        goldens=transformer_goldens,
    )

    # 6. Opsets (TorchScript only; dynamo has one default opset, the cases above).
    if ts:
        for opset in OPSET_VARIANTS:
            case(
                f"mlp_relu_opset{opset}",
                "MLP ReLU",
                lambda: make_mlp(nn.ReLU),
                (32, 8),
                -1,
                seed_name="mlp_relu",
                opset=opset,
            )
            case(
                f"conv2d_relu_opset{opset}",
                "Conv2d+ReLU",
                lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()),
                (24, 3, 8, 8),
                1,
                seed_name="conv2d_relu",
                opset=opset,
            )

        # 7. Model-local ONNX functions (export_modules_as_functions).
        case(
            "mlp_silu_functions",
            "MLP SiLU, modules as ONNX local functions",
            lambda: make_mlp(nn.SiLU),
            (32, 8),
            -1,
            seed_name="mlp_silu",
            functions=True,
        )
        case(
            "resblock_functions",
            "residual block, modules as ONNX local functions (BN unfolded)",
            make_resblock,
            (24, 8, 6, 6),
            1,
            seed_name="resblock",
            fold=False,
            functions=True,
            must_have="BatchNormalization",
        )
    return written


def main() -> None:
    torch.set_num_threads(1)  # bit-stable float32 reductions across machines
    torch.backends.mha.set_fastpath_enabled(False)  # no fused MHA/encoder kernels in export
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    for out_dir, exporter in ((TS_DIR, "torch-torchscript"), (DYNAMO_DIR, "torch-dynamo")):
        out_dir.mkdir(parents=True, exist_ok=True)
        written = build_cases(out_dir, exporter)
        print(f"{exporter}: {len(written)} cases in {out_dir}")


if __name__ == "__main__":
    main()
