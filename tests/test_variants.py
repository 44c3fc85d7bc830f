"""Activation variants (onnx_near/variants.py): the swapped graph computes each candidate
(numpy oracles, old and new opsets) and keeps the rest of the graph."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from graphs import Graph, mlp

from onnx_near.variants import CANDIDATES, swap_activations

_erf = np.vectorize(math.erf)
ORACLE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda v: np.maximum(v, 0),
    "leaky_relu": lambda v: np.where(v > 0, v, 0.01 * v),
    "elu": lambda v: np.where(v > 0, v, np.expm1(v)),
    "celu": lambda v: np.where(v > 0, v, np.expm1(v)),
    "selu": lambda v: 1.0507009873554805 * np.where(v > 0, v, 1.6732632423543772 * np.expm1(v)),
    "gelu": lambda v: 0.5 * v * (1 + _erf(v / math.sqrt(2))),
    "gelu_tanh": lambda v: 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))),
    "silu": lambda v: v / (1 + np.exp(-v)),
    "mish": lambda v: v * np.tanh(np.log1p(np.exp(v))),
    "tanh": np.tanh,
    "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
    "softplus": lambda v: np.log1p(np.exp(v)),
    "softsign": lambda v: v / (1 + np.abs(v)),
    "hardswish": lambda v: v * np.clip(v / 6 + 0.5, 0, 1),
    "hardsigmoid": lambda v: np.clip(v / 6 + 0.5, 0, 1),
    "relu6": lambda v: np.clip(v, 0, 6),
}


def _silu_model(opset: int) -> onnx.ModelProto:
    """y = SiLU(x) written as the exporters do (Sigmoid · Mul), so the whole pattern is swapped."""
    g = Graph(opset=opset)
    x = g.input("x", ["N", 5])
    g.output(g.op("Mul", x, g.op("Sigmoid", x), out="y"), ["N", 5])
    return g.model(infer=False)


@pytest.mark.parametrize("opset", [13, 17, 20])
@pytest.mark.parametrize("candidate", CANDIDATES)
def test_swapped_graph_computes_the_candidate(candidate: str, opset: int) -> None:
    """After the swap, onnxruntime computes the candidate function (numpy oracle) at old and new opsets."""
    assert set(ORACLE) == set(CANDIDATES)
    m = swap_activations(_silu_model(opset), candidate)
    assert "Sigmoid" not in {n.op_type for n in m.graph.node} or candidate in ("sigmoid", "silu")
    x = np.linspace(-6, 6, 60, dtype=np.float32).reshape(12, 5)
    (y,) = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(y, ORACLE[candidate](x.astype(np.float64)), rtol=2e-5, atol=2e-5)


def test_swap_keeps_the_rest_of_the_graph() -> None:
    """Only the activation changes: the Gemm layers and their weights stay."""
    m = mlp(act="Tanh")
    s = swap_activations(m, "relu")
    assert [n.op_type for n in s.graph.node] == ["Gemm", "Relu", "Gemm"]
    assert [t.name for t in s.graph.initializer] == [t.name for t in m.graph.initializer]
