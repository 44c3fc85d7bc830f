"""Activation swapping (numpy oracles for every candidate) and the activation/init rankings."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from graphs import Graph, mlp, save

from onnx_near.choose import rank_activations, rank_inits
from onnx_near.config import ScoreConfig
from onnx_near.errors import ConfigError
from onnx_near.variants import CANDIDATES, swap_activations

_erf = np.vectorize(math.erf)
ORACLE = {
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


def test_activation_ranking_is_paired_and_ordered(tmp_path: Path) -> None:
    """Candidates are ranked by mean score; the saturating sigmoid scores below relu and tanh."""
    path = save(mlp(d_in=16, hidden=64, d_out=10), tmp_path / "m.onnx")
    r = rank_activations(path, ["sigmoid", "relu", "tanh"], config=ScoreConfig(repetitions=3))
    assert [c.score for c in r.candidates] == sorted((c.score for c in r.candidates), reverse=True)
    assert r.candidates[-1].name == "sigmoid" and all(len(c.scores) == 3 for c in r.candidates)
    assert r.to_dict()["candidates"][0]["rank"] == 1


def test_init_ranking(tmp_path: Path) -> None:
    """Each scheme is scored with its own re-drawn weights and reported with its spread."""
    path = save(mlp(d_in=16, hidden=64, d_out=10), tmp_path / "m.onnx")
    r = rank_inits(path, ["pytorch-default", "kaiming-normal", "orthogonal"], config=ScoreConfig(repetitions=2))
    assert {c.name for c in r.candidates} == {"pytorch-default", "kaiming-normal", "orthogonal"}
    assert all(c.score > 0 and c.score_std >= 0 for c in r.candidates)


def test_unknown_candidate_is_a_config_error(tmp_path: Path) -> None:
    """A candidate name that does not exist is refused with the list of valid ones."""
    with pytest.raises(ConfigError, match="relu"):
        rank_activations(save(mlp(), tmp_path / "m.onnx"), ["swish2"])
