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
        if n.op_type not in MAC_OPS:
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


def _node_macs(index: GraphIndex, n: onnx.NodeProto) -> int | None:
    if len(n.input) < 2 or not n.output:  # malformed (onnxruntime will refuse it): nothing to count
        return None
    out = _static(index.dims(n.output[0]))
    if out is None:
        return None
    if n.op_type == "Conv":
        w = _static(index.dims(n.input[1]))
        return None if w is None else math.prod(out) * math.prod(w[1:])
    if n.op_type == "ConvTranspose":
        x, w = _static(index.dims(n.input[0])), _static(index.dims(n.input[1]))
        return None if x is None or w is None else math.prod(x) * math.prod(w[1:])
    a = _static(index.dims(n.input[0]))
    if a is None or not a:
        return None
    if n.op_type == "Gemm":
        k = a[0] if int(attribute(n, "transA", 0)) else a[-1]
    else:
        k = a[-2] if int(attribute(n, "transA", 0)) and len(a) > 1 else a[-1]
    return math.prod(out) * k
