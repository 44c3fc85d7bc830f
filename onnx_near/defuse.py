"""Rewrite pass: undo onnxruntime's fusions so the tensors NEAR needs exist again.

onnxruntime's graph optimiser (``ORT_ENABLE_EXTENDED``) fuses a layer with its activation
(FusedConv, FusedGemm), a bias with GELU (BiasGelu, FastGelu with a bias), and a bias plus a
residual with LayerNorm (SkipLayerNormalization).  A model saved after such optimisation no
longer holds the pre-activation or the biased layer output.  :func:`defuse_contrib_ops`
splits each fused node back into the standard ops it stands for; the values are the same.

    before:  x ─ FusedConv(W, B, activation="Relu") ─ y
    after:   x ─ Conv(W, B) ─ c ─ Relu ─ y
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


class _Builder:
    """Fresh tensor names and constants for the nodes that replace one fused node."""

    def __init__(self, model: onnx.ModelProto):
        self.taken = {t.name for t in model.graph.initializer}
        for n in model.graph.node:
            self.taken.update(n.input)
            self.taken.update(n.output)
        self.taken.update(v.name for v in model.graph.input)
        self.initializers: list[onnx.TensorProto] = []

    def name(self, stem: str) -> str:
        k = 0
        while f"{stem}_{k}" in self.taken:
            k += 1
        self.taken.add(f"{stem}_{k}")
        return f"{stem}_{k}"

    def scalar(self, stem: str, value: float) -> str:
        name = self.name(stem)
        self.initializers.append(numpy_helper.from_array(np.array(value, dtype=np.float32), name))
        return name


def _copy_attrs(n: onnx.NodeProto, names: tuple[str, ...]) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in n.attribute if a.name in names}


def _activation_nodes(
    b: _Builder, kind: str, params: list[float], x: str, y: str, label: str
) -> list[onnx.NodeProto] | None:
    """The standard node for a fused activation named ``kind``; None when unknown."""
    name = f"{label}/{kind}"
    if kind in ("Relu", "Tanh", "Sigmoid"):
        return [helper.make_node(kind, [x], [y], name=name)]
    if kind == "LeakyRelu":
        return [helper.make_node(kind, [x], [y], name=name, alpha=params[0] if params else 0.01)]
    if kind == "HardSigmoid":
        alpha, beta = (params + [0.2, 0.5][len(params) :])[:2]
        return [helper.make_node(kind, [x], [y], name=name, alpha=alpha, beta=beta)]
    if kind == "Clip" and len(params) >= 2:
        lo, hi = b.scalar(f"{label}/clip_min", params[0]), b.scalar(f"{label}/clip_max", params[1])
        return [helper.make_node("Clip", [x, lo, hi], [y], name=name)]
    return None


def _split_fused_conv(b: _Builder, n: onnx.NodeProto, opset: int) -> list[onnx.NodeProto] | None:
    kind = _text(attribute(n, "activation", b""))
    params = list(attribute(n, "activation_params", []) or [])
    label = n.name or f"FusedConv_{n.output[0]}"
    conv_out = b.name(f"{label}/conv_output")
    nodes = [
        helper.make_node("Conv", list(n.input[:3]), [conv_out], name=f"{label}/Conv", **_copy_attrs(n, _CONV_ATTRS))
    ]
    pre = conv_out
    if len(n.input) > 3 and n.input[3]:  # the fused residual sum: act(conv(x) + z)
        pre = b.name(f"{label}/sum")
        nodes.append(helper.make_node("Add", [conv_out, n.input[3]], [pre], name=f"{label}/Add"))
    act = (
        _activation_nodes(b, kind, params, pre, n.output[0], label)
        if kind
        else [helper.make_node("Identity", [pre], [n.output[0]], name=f"{label}/Identity")]
    )
    return None if act is None else nodes + act


def _split_fused_gemm(b: _Builder, n: onnx.NodeProto, opset: int) -> list[onnx.NodeProto] | None:
    kind = _text(attribute(n, "activation", b""))
    if not kind:
        return None
    params = [attribute(n, k) for k in ("activation_alpha", "activation_beta", "activation_gamma")]
    label = n.name or f"FusedGemm_{n.output[0]}"
    gemm_out = b.name(f"{label}/gemm_output")
    gemm = helper.make_node("Gemm", list(n.input), [gemm_out], name=f"{label}/Gemm", **_copy_attrs(n, _GEMM_ATTRS))
    act = _activation_nodes(b, kind, [float(p) for p in params if p is not None], gemm_out, n.output[0], label)
    return None if act is None else [gemm, *act]


def _split_bias_gelu(b: _Builder, n: onnx.NodeProto, opset: int) -> list[onnx.NodeProto] | None:
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


def _split_skip_layer_norm(b: _Builder, n: onnx.NodeProto, opset: int) -> list[onnx.NodeProto] | None:
    """SkipLayerNormalization(x, skip, gamma, beta, bias) = LayerNorm(x + (skip + bias))."""
    outs = list(n.output) + [""] * (4 - len(n.output))
    if opset < 17 or outs[1] or outs[2]:  # mean / inv-std outputs in use, or no native LayerNorm
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


_SPLITTERS: dict[str, Callable[[_Builder, onnx.NodeProto, int], list[onnx.NodeProto] | None]] = {
    "FusedConv": _split_fused_conv,
    "FusedGemm": _split_fused_gemm,
    "BiasGelu": _split_bias_gelu,
    "FastGelu": _split_bias_gelu,
    "SkipLayerNormalization": _split_skip_layer_norm,
}


def defuse_contrib_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """Afterwards: no FusedConv/FusedGemm with an activation, BiasGelu, FastGelu with a bias,
    or SkipLayerNormalization remains in the main graph; each is replaced by the standard ops
    it fuses, keeping its output names.  Nodes it cannot split are left as they are."""
    if not any(n.domain == MS and n.op_type in _SPLITTERS for n in model.graph.node):
        return model
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    b = _Builder(out)
    nodes: list[onnx.NodeProto] = []
    split = 0
    for n in out.graph.node:
        splitter = _SPLITTERS.get(n.op_type) if n.domain == MS else None
        replacement = splitter(b, n, opset) if splitter else None
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
    return v.decode() if isinstance(v, bytes) else str(v or "")
