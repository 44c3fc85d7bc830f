"""Weighted layers: the outputs of ops that apply learned weights — Conv, ConvTranspose,
Gemm, MatMul with a constant operand (or the ``Add`` of a constant bias right after it), the
normalisations (native, onnxruntime's, LayerNorm and BatchNorm decomposed into ``Mul``+``Add``,
RMSNorm in every exporter's spelling) — each with the tensor it reads (its *feed*), and the
structural rank bound its weights' shapes imply.  Role ``pre`` (SPEC §2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .activations import fused_activation, other_input
from .graph import GraphIndex, attribute, int_attribute
from .ops import CONTRIB_WEIGHTED, FUSED_WITH_ACTIVATION, MATMULS, MS, WEIGHTED


@dataclass(frozen=True)
class LayerSite:
    """One weighted layer and the tensor holding its output."""

    tensor: str
    op: str
    node: int
    feed: str = ""  # the tensor the layer reads its data from


def find_layers(index: GraphIndex) -> list[LayerSite]:
    """Every weighted-layer output of the main graph."""
    sites: list[LayerSite] = []
    for i, n in enumerate(index.nodes):
        if not n.output or not n.output[0]:
            continue
        key = (n.domain if n.domain != "ai.onnx" else "", n.op_type)
        if key[0] == "" and n.op_type in WEIGHTED:
            sites.append(LayerSite(n.output[0], n.op_type, i, data_input(index, n)))
        elif key[0] == MS and n.op_type in CONTRIB_WEIGHTED:
            sites.append(LayerSite(n.output[0], f"{n.op_type} ({MS})", i, data_input(index, n)))
        elif key[0] == MS and n.op_type in FUSED_WITH_ACTIVATION and not fused_activation(n):
            sites.append(LayerSite(n.output[0], f"{n.op_type} ({MS})", i, data_input(index, n)))
        elif key in MATMULS and any(index.is_const(x) for x in n.input[:2]):
            if all(index.is_const(x) for x in n.input[:2]):
                continue
            sites.append(_with_bias(index, n.output[0], n.op_type, i, data_input(index, n)))
        elif key == ("", "Mul"):
            site = _affine(index, n) or _rms_norm(index, n, i)
            if site is not None:
                sites.append(site)
    return sites


def _rms_norm(index: GraphIndex, n: onnx.NodeProto, i: int) -> LayerSite | None:
    """``Mul`` of a constant vector γ and x / √(mean(x²) + ε): RMSNorm as exporters decompose
    it (Llama, Mistral, T5: Pow or Mul for x², ReduceMean, Add ε, Sqrt, then Div, or
    Reciprocal and Mul; Casts around it), tapped as a normalisation like LayerNorm."""
    if len(n.input) != 2:
        return None
    gamma = next((x for x in n.input if index.is_const(x)), None)
    if gamma is None or not _is_vector(index, gamma):
        return None
    normed = other_input(n, gamma)
    if normed is None or index.is_const(normed):
        return None
    m = _through_casts(index, normed)
    if m is None or m.domain not in ("", "ai.onnx"):
        return None
    if m.op_type == "Div" and len(m.input) == 2:
        x, root = m.input[0], index.node_of(m.input[1])
    elif m.op_type == "Mul" and len(m.input) == 2:  # x · 1/√…: Reciprocal (dynamo) or Div(1, ·) (TorchScript)
        pair = [(a, _through_casts(index, b)) for a, b in ((m.input[0], m.input[1]), (m.input[1], m.input[0]))]
        x, recip = next(((a, r) for a, r in pair if r is not None and _is_reciprocal(index, r)), ("", None))
        root = index.node_of(recip.input[-1]) if recip is not None else None
    else:
        return None
    if root is None or root.op_type != "Sqrt":
        return None
    add = index.node_of(root.input[0])
    if add is None or add.op_type != "Add":
        return None
    mean = next((index.node_of(v) for v in add.input if not index.is_const(v)), None)
    if mean is None or mean.op_type != "ReduceMean":
        return None
    square = index.node_of(mean.input[0])
    if square is None or not _squares(index, square, _source(index, x)):
        return None
    return LayerSite(n.output[0], "RMSNorm", i, _source(index, x))


def _is_reciprocal(index: GraphIndex, n: onnx.NodeProto) -> bool:
    """``Reciprocal(v)`` or ``Div(1, v)``."""
    if n.op_type == "Reciprocal":
        return True
    one = index.const_value(n.input[0]) if n.op_type == "Div" and len(n.input) == 2 else None
    return one is not None and one.size == 1 and float(one.reshape(())) == 1.0


def _through_casts(index: GraphIndex, t: str) -> onnx.NodeProto | None:
    """The node making ``t``, looking through Casts."""
    node = index.node_of(t)
    while node is not None and node.op_type == "Cast":
        node = index.node_of(node.input[0])
    return node


def _source(index: GraphIndex, t: str) -> str:
    """``t`` with the Casts that made it looked through."""
    node = index.node_of(t)
    while node is not None and node.op_type == "Cast":
        t = node.input[0]
        node = index.node_of(t)
    return t


def _squares(index: GraphIndex, node: onnx.NodeProto, x: str) -> bool:
    """True when ``node`` computes x² of the tensor ``x`` (Pow(x, 2) or Mul(x, x), Casts aside)."""
    if node.op_type == "Pow" and len(node.input) == 2:
        exponent = index.const_value(node.input[1])
        return (
            _source(index, node.input[0]) == x
            and exponent is not None
            and exponent.size == 1
            and float(exponent) == 2.0
        )
    if node.op_type == "Mul" and len(node.input) == 2:
        return _source(index, node.input[0]) == x == _source(index, node.input[1])
    return False


def _affine(index: GraphIndex, n: onnx.NodeProto) -> LayerSite | None:
    """``Mul`` by a constant vector, then ``Add`` of a constant vector: a decomposed affine
    normalisation (BatchNorm as tf2onnx writes it, LayerNorm before opset 17).  The scale
    and shift must hold more than one value, so scalar arithmetic (GELU's 0.5, +1) is not
    mistaken for a layer."""
    if len(n.input) != 2:
        return None
    scale = next((x for x in n.input if index.is_const(x)), None)
    if scale is None or all(index.is_const(x) for x in n.input) or not _is_vector(index, scale):
        return None
    out = n.output[0]
    users = index.consumers.get(out, [])
    if len(users) != 1 or out in index.graph_outputs:
        return None
    j = users[0]
    m = index.nodes[j]
    shift = other_input(m, out)
    if m.op_type != "Add" or m.domain not in ("", "ai.onnx") or shift is None or not index.is_const(shift):
        return None
    if not _is_vector(index, shift):
        return None
    return LayerSite(m.output[0], "Mul+Add (affine)", j, data_input(index, n))


def _is_vector(index: GraphIndex, name: str) -> bool:
    """True when the constant ``name`` has more than one element and one non-unit dim."""
    dims = _const_dims(index, name)
    return dims is not None and sum(1 for d in dims if d != 1) == 1


def _const_dims(index: GraphIndex, name: str) -> list[int] | None:
    """The dims of the constant ``name`` (declared, else from its value), if all known."""
    dims = index.dims(name)
    if dims is None:
        v = index.const_value(name)
        dims = list(v.shape) if v is not None else None
    if dims is None or not all(isinstance(d, int) for d in dims):
        return None
    return [int(d) for d in dims if d is not None]


def data_input(index: GraphIndex, n: onnx.NodeProto) -> str:
    """The first input of ``n`` that is not a constant: what a layer reads its data from."""
    return next((x for x in n.input if x and not index.is_const(x)), "")


def _with_bias(index: GraphIndex, out: str, op: str, i: int, feed: str) -> LayerSite:
    """A MatMul followed by ``Add`` of a constant bias: the layer output is the Add's."""
    users = index.consumers.get(out, [])
    if len(users) == 1 and out not in index.graph_outputs:
        j = users[0]
        m = index.nodes[j]
        other = other_input(m, out)
        if m.op_type == "Add" and m.domain in ("", "ai.onnx") and other is not None and index.is_const(other):
            return LayerSite(m.output[0], f"{op}+Add", j, feed)
    return LayerSite(out, op, i, feed)


def structural_rank(index: GraphIndex, tensor: str, depth: int = 4) -> int | None:
    """An upper bound on the rank of ``tensor`` as a matrix (features as columns) that the
    weights' shapes imply, or None when they imply none.

    A layer maps each row through its weight: Gemm or MatMul with a K×N constant gives rank
    ≤ K, a Conv ≤ (input channels per group)·(kernel size)·groups, plus one for a bias.  A
    per-feature affine op after it (BatchNorm, a decomposed Mul+Add) adds at most one, a
    LayerNorm at most two (centring, then the shift).  NEAR's matrices of a layer much wider
    than its input are rank-deficient for that reason alone.
    """
    n = index.node_of(tensor)
    if n is None or depth == 0 or n.domain not in ("", "ai.onnx"):
        return None
    const = [index.is_const(x) for x in n.input[:2]] if len(n.input) >= 2 else [False, False]
    if n.op_type in ("Add", "Mul") and len(n.input) == 2 and const.count(True) == 1:
        c, x = (n.input[0], n.input[1]) if const[0] else (n.input[1], n.input[0])
        if not _along_one_axis(index, c):  # a full constant tensor can raise the rank further
            return None
        inner = structural_rank(index, x, depth - 1)  # scaling rows or columns keeps the rank,
        return inner + (1 if n.op_type == "Add" else 0) if inner is not None else None  # a shift adds one
    if n.op_type == "BatchNormalization" or (n.op_type == "LayerNormalization" and _last_axis(index, n)):
        inner = structural_rank(index, n.input[0], depth - 1)
        return inner + (1 if n.op_type == "BatchNormalization" else 2) if inner is not None else None
    w = index.dims(n.input[1]) if len(n.input) > 1 and const[1] and not const[0] else None
    if w is None or not all(isinstance(d, int) for d in w):
        return None
    dims = [int(d) for d in w if d is not None]
    bias = 1 if len(n.input) > 2 and n.input[2] else 0
    if n.op_type == "MatMul" and len(dims) == 2:
        return dims[0]
    if n.op_type == "Gemm" and len(dims) == 2 and not attribute(n, "transA", 0):
        return (dims[1] if attribute(n, "transB", 0) else dims[0]) + bias
    if n.op_type == "Conv" and len(dims) >= 3:
        return int(np.prod(dims[1:])) * (int_attribute(n, "group", 1) or 1) + bias
    return None


def _along_one_axis(index: GraphIndex, name: str) -> bool:
    """True when the constant ``name`` is a scalar or varies along one axis only."""
    dims = _const_dims(index, name)
    return dims is not None and sum(1 for d in dims if d != 1) <= 1


def _last_axis(index: GraphIndex, n: onnx.NodeProto) -> bool:
    """True when a LayerNormalization normalises over the last axis alone (rows stay rows)."""
    axis = int_attribute(n, "axis", -1)
    rank = index.rank(n.input[0])
    return axis == -1 or (rank is not None and axis == rank - 1)
