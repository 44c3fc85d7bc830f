"""The trivial baselines of architecture ranking: parameter count and multiply-accumulates.

The zero-cost-proxy literature shows both are strong predictors of accuracy, so every
NEAR ranking is reported next to them (SPEC §6).  MACs are counted per input sample for
the ops that dominate the cost — Conv, ConvTranspose, Gemm, MatMul (including attention
products) — from the shapes onnx infers with the batch set to 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import onnx
import onnx.shape_inference

from .graph import GraphIndex, attribute, parameter_count, without_weights
from .ops import MAC_OPS

__all__ = ["count_macs", "parameter_count"]


def count_macs(model: onnx.ModelProto, sample_shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """Multiply-accumulates for one sample, or None when a shape stays unknown.

    ``sample_shapes`` gives each input's shape without its batch axis.
    """
    m = without_weights(model)
    for v in m.graph.input:
        if v.name in sample_shapes:
            shape = v.type.tensor_type.shape
            del shape.dim[:]
            for d in (1, *sample_shapes[v.name]):
                shape.dim.add().dim_value = int(d)
    del m.graph.value_info[:]
    try:
        m = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception:
        return None
    index = GraphIndex(m)
    total = 0
    for n in index.nodes:
        if n.op_type not in MAC_OPS and n.op_type not in _QUANTISED_FORMS:
            continue
        macs = _node_macs(index, n)
        if macs is None:
            return None
        total += macs
    return total


def _static(dims: list[int | str | None] | None) -> list[int] | None:
    if dims is None or not all(isinstance(d, int) and d >= 0 for d in dims):
        return None
    return [int(d) for d in dims if isinstance(d, int)]


# Quantised layers counted as the float layer they stand for: (that op, weight's input position).
_QUANTISED_FORMS = {
    "QLinearConv": ("Conv", 3),
    "ConvInteger": ("Conv", 1),
    "QLinearMatMul": ("MatMul", 3),
    "MatMulInteger": ("MatMul", 1),
    "MatMulIntegerToFloat": ("MatMul", 1),
    "DynamicQuantizeMatMul": ("MatMul", 1),
    "QGemm": ("Gemm", 3),
}


def _node_macs(index: GraphIndex, n: onnx.NodeProto) -> int | None:
    op, wi = _QUANTISED_FORMS.get(n.op_type, (n.op_type, 1))
    if len(n.input) <= wi or not n.output:  # malformed (onnxruntime will refuse it): nothing to count
        return None
    out = _static(index.dims(n.output[0]))
    if out is None and op == "Gemm":  # onnx infers no shape for com.microsoft's QGemm: from its operands
        out = _gemm_out(index, n, wi)
    if out is None:
        return None
    if op == "Conv":
        w = _static(index.dims(n.input[wi]))
        return None if w is None else math.prod(out) * math.prod(w[1:])
    if op == "ConvTranspose":
        x, w = _static(index.dims(n.input[0])), _static(index.dims(n.input[wi]))
        return None if x is None or w is None else math.prod(x) * math.prod(w[1:])
    a = _static(index.dims(n.input[0]))
    if a is None or not a:
        return None
    if op == "Gemm":
        k = a[0] if _flag(n, "transA") else a[-1]
    else:
        k = a[-2] if _flag(n, "transA") and len(a) > 1 else a[-1]
    return math.prod(out) * k


def _gemm_out(index: GraphIndex, n: onnx.NodeProto, wi: int) -> list[int] | None:
    a, w = _static(index.dims(n.input[0])), _static(index.dims(n.input[wi]))
    if a is None or w is None or len(a) != 2 or len(w) != 2:
        return None
    rows = a[1] if _flag(n, "transA") else a[0]
    cols = w[0] if _flag(n, "transB") else w[1]
    return [rows, cols]


def _flag(n: onnx.NodeProto, name: str) -> int:
    """An int attribute such as ``transA``; 0 when absent or not an int (a malformed node)."""
    v = attribute(n, name, 0)
    return v if isinstance(v, int) else 0
