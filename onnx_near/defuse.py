"""Rewrite pass: undo onnxruntime's fusions so the tensors NEAR needs exist again.

onnxruntime's graph optimiser (``ORT_ENABLE_EXTENDED``) fuses a layer with its activation
(FusedConv, FusedGemm), a bias with GELU (BiasGelu, FastGelu with a bias), and a bias plus a
residual with LayerNorm (SkipLayerNormalization).  A model saved after such optimisation no
longer holds the pre-activation or the biased layer output.  :func:`defuse_contrib_ops`
splits each fused node back into the standard ops it stands for; the values are the same.

    before:  x ─ FusedConv(W, B, activation="Relu") ─ y
    after:   x ─ Conv(W, B) ─ c ─ Relu ─ y

Every activation onnxruntime's fusions put into a FusedConv or a FusedGemm is split back out
(:data:`FUSED_CONV_ACTIVATIONS`, :data:`FUSED_GEMM_ACTIVATIONS`, read from its optimiser and
kernels), with the parameters the fused node holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import attribute

log = logging.getLogger(__name__)

MS = "com.microsoft"

_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
_GEMM_ATTRS = ("alpha", "beta", "transA", "transB")
_FLT_MAX = float(np.finfo(np.float32).max)

# The activations onnxruntime fuses into a FusedConv, each with the names of the floats its
# ``activation_params`` attribute lists, in order.  ConvActivationFusion (core/optimizer/
# conv_activation_fusion.cc) takes Relu, Sigmoid, Tanh, LeakyRelu, Clip with constant bounds on any
# compatible provider, HardSigmoid on the CPU only, Relu only on CUDA/ROCm; ConvAddActivationFusion
# (ORT_ENABLE_ALL, conv_add_act_fusion.cc) the same list after a residual Add, which becomes the
# fourth input.  The CPU kernel (contrib_ops/cpu/fused_activation.cc) runs exactly these, Silu too
# in its newest versions.
FUSED_CONV_ACTIVATIONS: dict[str, tuple[str, ...]] = {
    "Relu": (),
    "Sigmoid": (),
    "Tanh": (),
    "Silu": (),
    "LeakyRelu": ("alpha",),
    "HardSigmoid": ("alpha", "beta"),
    "Clip": ("min", "max"),
}
# The activations onnxruntime fuses into a FusedGemm (GemmActivationFusion, gemm_activation_fusion.cc,
# CPU only), each with the attributes it copies from the activation as ``activation_<name>``; its
# kernel (ElementWiseRangedTransform::Create, core/providers/cpu/activation/activations.cc) runs
# exactly these.  ScaledTanh and ParametricSoftplus are the experimental ops of opsets 1-9.
FUSED_GEMM_ACTIVATIONS: dict[str, tuple[str, ...]] = {
    "Relu": (),
    "Sigmoid": (),
    "Tanh": (),
    "Softplus": (),
    "Softsign": (),
    "LeakyRelu": ("alpha",),
    "Elu": ("alpha",),
    "ThresholdedRelu": ("alpha",),
    "HardSigmoid": ("alpha", "beta"),
    "Selu": ("alpha", "gamma"),
    "ScaledTanh": ("alpha", "beta"),
    "ParametricSoftplus": ("alpha", "beta"),
}
# A parameter the fused node leaves out means the standard op's default (onnxruntime itself writes
# them all in); ScaledTanh's and ParametricSoftplus's have none, and Clip's bounds are a float's range.
_DEFAULTS: dict[tuple[str, str], float] = {
    ("LeakyRelu", "alpha"): 0.01,
    ("Elu", "alpha"): 1.0,
    ("ThresholdedRelu", "alpha"): 1.0,
    ("HardSigmoid", "alpha"): 0.2,
    ("HardSigmoid", "beta"): 0.5,
    ("Selu", "alpha"): 1.67326319217681884765625,
    ("Selu", "gamma"): 1.05070102214813232421875,
    ("Clip", "min"): -_FLT_MAX,
    ("Clip", "max"): _FLT_MAX,
}


class _Builder:
    """Fresh tensor names and constants for the nodes that replace one fused node."""

    def __init__(self, model: onnx.ModelProto, opset: int):
        self.opset = opset
        g = model.graph
        self.taken = {t.name for t in g.initializer}
        for n in g.node:
            self.taken.update(n.input)
            self.taken.update(n.output)
        self.taken.update(v.name for v in g.input)
        self.elem_types = {t.name: t.data_type for t in g.initializer}
        for v in [*g.input, *g.value_info, *g.output]:
            if v.type.tensor_type.elem_type:
                self.elem_types.setdefault(v.name, v.type.tensor_type.elem_type)
        self.initializers: list[onnx.TensorProto] = []

    def name(self, stem: str) -> str:
        k = 0
        while f"{stem}_{k}" in self.taken:
            k += 1
        self.taken.add(f"{stem}_{k}")
        return f"{stem}_{k}"

    def scalar(self, stem: str, value: float, elem_type: int = onnx.TensorProto.FLOAT) -> str:
        name = self.name(stem)
        dtype = helper.tensor_dtype_to_np_dtype(elem_type)
        self.initializers.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
        return name

    def elem_type(self, *names: str) -> int:
        """The element type of the first of ``names`` whose type is known (float if none is)."""
        return next((self.elem_types[t] for t in names if t in self.elem_types), onnx.TensorProto.FLOAT)


def _copy_attrs(n: onnx.NodeProto, names: tuple[str, ...]) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in n.attribute if a.name in names}


def _activation_nodes(
    b: _Builder, kind: str, params: dict[str, float], x: str, y: str, label: str, elem_type: int
) -> list[onnx.NodeProto]:
    """The standard nodes computing activation ``kind`` with ``params`` (every one it takes) from
    ``x`` into ``y``; the experimental ScaledTanh and ParametricSoftplus become
    ``alpha · Tanh(beta · x)`` and ``alpha · Softplus(beta · x)``, Silu ``x · Sigmoid(x)``."""
    name = f"{label}/{kind}"
    if kind == "Clip":
        if b.opset < 11:  # Clip-6 holds its bounds as attributes
            return [helper.make_node("Clip", [x], [y], name=name, min=params["min"], max=params["max"])]
        lo = b.scalar(f"{label}/clip_min", params["min"], elem_type)
        hi = b.scalar(f"{label}/clip_max", params["max"], elem_type)
        return [helper.make_node("Clip", [x, lo, hi], [y], name=name)]
    if kind == "Silu":
        s = b.name(f"{label}/sigmoid")
        return [
            helper.make_node("Sigmoid", [x], [s], name=f"{label}/Sigmoid"),
            helper.make_node("Mul", [x, s], [y], name=f"{label}/Mul"),
        ]
    if kind in ("ScaledTanh", "ParametricSoftplus"):
        inner = "Tanh" if kind == "ScaledTanh" else "Softplus"
        scaled, core = b.name(f"{label}/scaled_input"), b.name(f"{label}/{inner.lower()}")
        beta, alpha = b.scalar(f"{label}/beta", params["beta"]), b.scalar(f"{label}/alpha", params["alpha"])
        return [
            helper.make_node("Mul", [x, beta], [scaled], name=f"{label}/MulBeta"),
            helper.make_node(inner, [scaled], [core], name=f"{label}/{inner}"),
            helper.make_node("Mul", [core, alpha], [y], name=f"{label}/MulAlpha"),
        ]
    attrs: dict[str, Any] = dict(params)
    return [helper.make_node(kind, [x], [y], name=name, **attrs)]


def _params(kind: str, names: tuple[str, ...], given: dict[str, float]) -> dict[str, float] | None:
    """Every parameter of ``kind``: those given, the standard defaults for the rest; None when one
    without a default is missing."""
    out: dict[str, float] = {}
    for k in names:
        v = given.get(k, _DEFAULTS.get((kind, k)))
        if v is None:
            return None
        out[k] = v
    return out


def _split_fused_conv(b: _Builder, n: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """FusedConv(x, W, B, Z) = act(Conv(x, W, B) + Z), ``activation_params`` in the kernel's order."""
    kind = _text(attribute(n, "activation", b""))
    if kind and kind not in FUSED_CONV_ACTIVATIONS:
        return None
    names = FUSED_CONV_ACTIVATIONS.get(kind, ())
    values = [float(v) for v in attribute(n, "activation_params", []) or []]
    if values and len(values) != len(names):  # onnxruntime refuses such a node too
        return None
    params = _params(kind, names, dict(zip(names, values)))
    if params is None:
        return None
    label = n.name or f"FusedConv_{n.output[0]}"
    conv_out = b.name(f"{label}/conv_output")
    nodes = [
        helper.make_node("Conv", list(n.input[:3]), [conv_out], name=f"{label}/Conv", **_copy_attrs(n, _CONV_ATTRS))
    ]
    pre = conv_out
    if len(n.input) > 3 and n.input[3]:  # the fused residual sum: act(conv(x) + z)
        pre = b.name(f"{label}/sum")
        nodes.append(helper.make_node("Add", [conv_out, n.input[3]], [pre], name=f"{label}/Add"))
    if not kind:
        return [*nodes, helper.make_node("Identity", [pre], [n.output[0]], name=f"{label}/Identity")]
    return nodes + _activation_nodes(b, kind, params, pre, n.output[0], label, b.elem_type(n.input[1], n.input[0]))


def _split_fused_gemm(b: _Builder, n: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """FusedGemm(A, B, C) = act(Gemm(A, B, C)), the activation's attributes named ``activation_*``."""
    kind = _text(attribute(n, "activation", b""))
    if kind not in FUSED_GEMM_ACTIVATIONS:
        return None
    names = FUSED_GEMM_ACTIVATIONS[kind]
    given = {k: float(v) for k in names if (v := attribute(n, f"activation_{k}")) is not None}
    params = _params(kind, names, given)
    if params is None:
        return None
    label = n.name or f"FusedGemm_{n.output[0]}"
    gemm_out = b.name(f"{label}/gemm_output")
    gemm = helper.make_node("Gemm", list(n.input), [gemm_out], name=f"{label}/Gemm", **_copy_attrs(n, _GEMM_ATTRS))
    return [gemm, *_activation_nodes(b, kind, params, gemm_out, n.output[0], label, onnx.TensorProto.FLOAT)]


def _split_bias_gelu(b: _Builder, n: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """BiasGelu(x, bias) and FastGelu(x, bias) become Add(x, bias) → (Gelu | FastGelu)(·)."""
    if len(n.input) < 2 or not n.input[1]:
        return None
    label = n.name or f"{n.op_type}_{n.output[0]}"
    biased = b.name(f"{label}/biased")
    op = "Gelu" if n.op_type == "BiasGelu" else "FastGelu"
    return [
        helper.make_node("Add", [n.input[0], n.input[1]], [biased], name=f"{label}/Add"),
        helper.make_node(op, [biased], [n.output[0]], name=f"{label}/{op}", domain=MS),
    ]


def _split_skip_layer_norm(b: _Builder, n: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """SkipLayerNormalization(x, skip, gamma, beta, bias) = LayerNorm(x + (skip + bias))."""
    outs = list(n.output) + [""] * (4 - len(n.output))
    if b.opset < 17 or outs[1] or outs[2]:  # mean / inv-std outputs in use, or no native LayerNorm
        return None
    ins = list(n.input) + [""] * (5 - len(n.input))
    x, skip, gamma, beta, bias = ins[:5]
    label = n.name or f"SkipLayerNormalization_{outs[0]}"
    nodes: list[onnx.NodeProto] = []
    if bias:
        biased = b.name(f"{label}/biased")
        nodes.append(helper.make_node("Add", [skip, bias], [biased], name=f"{label}/BiasAdd"))
        skip = biased
    total = outs[3] or b.name(f"{label}/sum")
    nodes.append(helper.make_node("Add", [x, skip], [total], name=f"{label}/SkipAdd"))
    norm_inputs = [total, gamma] + ([beta] if beta else [])
    eps = attribute(n, "epsilon", 1e-12)
    nodes.append(
        helper.make_node("LayerNormalization", norm_inputs, [outs[0]], name=f"{label}/LayerNorm", axis=-1, epsilon=eps)
    )
    return nodes


_SPLITTERS: dict[str, Callable[[_Builder, onnx.NodeProto], list[onnx.NodeProto] | None]] = {
    "FusedConv": _split_fused_conv,
    "FusedGemm": _split_fused_gemm,
    "BiasGelu": _split_bias_gelu,
    "FastGelu": _split_bias_gelu,
    "SkipLayerNormalization": _split_skip_layer_norm,
}


def defuse_contrib_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """Afterwards: no FusedConv/FusedGemm with an activation, BiasGelu, FastGelu with a bias,
    or SkipLayerNormalization remains in the main graph; each is replaced by the standard ops
    it fuses, keeping its output names.  Nodes it cannot split (an activation outside
    :data:`FUSED_CONV_ACTIVATIONS` / :data:`FUSED_GEMM_ACTIVATIONS`, a parameter missing that has
    no default) are left as they are, and the tap finder lists their pre-activation as hidden."""
    if not any(n.domain == MS and n.op_type in _SPLITTERS for n in model.graph.node):
        return model
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    b = _Builder(out, opset)
    nodes: list[onnx.NodeProto] = []
    split = 0
    for n in out.graph.node:
        splitter = _SPLITTERS.get(n.op_type) if n.domain == MS else None
        replacement = splitter(b, n) if splitter else None
        if replacement is None:
            nodes.append(n)
        else:
            nodes.extend(replacement)
            split += 1
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(b.initializers)
    log.info("split %d fused onnxruntime op(s) back into standard ops", split)
    return out


def _text(v: object) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v or "")  # a hostile file: any bytes
