"""Quantised graphs: what their integers stand for, and the record of the float network behind them.

A quantised model computes in integers; each integer tensor ``q`` stands for the float value
``(q − zero_point) · scale``.  onnxruntime's quantiser writes three kinds of graph:

* **QDQ** (``QuantFormat.QDQ``): float ops between QuantizeLinear/DequantizeLinear pairs.  A
  layer's float output exists; the DequantizeLinear after its QuantizeLinear holds the same
  values rounded, so the layer output itself is the tap (once, not twice).
* **QOperator** (``QuantFormat.QOperator``): integer ops (QLinearConv, QLinearMatMul, QGemm,
  QLinearAdd, QLinearMul, QLinearSigmoid…) read and write integers; the float value of a
  layer's output exists in no tensor until a DequantizeLinear of it, with the op's own output
  scale and zero point, is added.
* **dynamic** (``quantize_dynamic``): DynamicQuantizeLinear, an integer product
  (ConvInteger, MatMulInteger), Cast and a Mul by the scales: that Mul's output is the
  layer's float value (then the bias Add).

Where the quantiser dropped a ReLU after a layer, it quantised the layer's output with the
ReLU's range, whose zero point is the integer type's minimum: the dequantised output *is*
the post-activation, and it is tapped as one (a Clip(0, max) folds the same way).

:func:`is_quantised` tells such a graph.  :class:`FloatView` is the float network it stands
for (built by :func:`~onnx_near.float_view.float_view`, read by the tap finder), and a
:class:`Standin` the float value of an integer tensor that no tensor of the graph holds yet
(:func:`~onnx_near.dequantise.dequantise_taps` adds it where it is tapped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import onnx

from .graph import GraphIndex
from .ops import FLOAT_PRODUCTS, INTEGER_PRODUCTS, MS, QOPERATOR, is_default


@dataclass(frozen=True)
class Standin:
    """The float value of an integer tensor: DequantizeLinear(integer, scale, zero_point)."""

    integer: str
    scale: str
    zero_point: str  # "" when the graph leaves it out (zero)


@dataclass(frozen=True)
class FloatView:
    """A quantised graph read as the float network it stands for (see :func:`~onnx_near.float_view.float_view`).

    Its tensors are the graph's float tensors, plus the names in ``standins`` (dequantised
    integer tensors the graph does not hold yet) and in ``hidden`` (values that exist in no
    tensor of the graph: the pre-activation of a ReLU folded into a QLinearConv's range).
    """

    model: onnx.ModelProto
    standins: Mapping[str, Standin]
    origins: Mapping[str, str]  # view tensor → the quantised op whose output it is
    folded: Mapping[str, str]  # view tensor → the op into whose output range a ReLU was folded
    rounded: frozenset[str]  # view tensors holding a quantised (rounded) value
    hidden: frozenset[str]


def is_quantised(index: GraphIndex) -> bool:
    """True when the graph quantises data (not only weights): a QuantizeLinear or
    DequantizeLinear of a data tensor, or an op of quantised arithmetic."""
    for n in index.nodes:
        key = op_key(n)
        if key in QOPERATOR or key == (MS, "QLinearConcat") or n.op_type == "DynamicQuantizeLinear":
            return True
        if (key[0] == "" and n.op_type in INTEGER_PRODUCTS) or (key[0] == MS and n.op_type in FLOAT_PRODUCTS):
            return True
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input and not index.is_const(n.input[0]):
            return True
    return False


def op_key(n: onnx.NodeProto) -> tuple[str, str]:
    """(domain, op type) of ``n``, the default domain written ""."""
    return ("" if is_default(n.domain) else n.domain, n.op_type)
