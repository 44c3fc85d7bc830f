"""A small builder for the tiny ONNX graphs of the tests, and the graphs and helpers they share.

    g = Graph()
    x = g.input("x", [2, 4])
    h = g.op("Gemm", x, g.const(w), g.const(b))
    y = g.op("Relu", h)
    g.output(y)
    index = g.index()          # GraphIndex over the shape-inferred model

Tensor names are made up from the op type (``gemm_0``, ``relu_1``…) unless ``out=`` is
given.  Weights are drawn from a seeded generator, so every graph is deterministic.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_near.graph import GraphIndex
from onnx_near.report import ScoreResult
from onnx_near.taps import TapPlan

IR_VERSION = 10
MS = "com.microsoft"


class Graph:
    """Accumulates nodes, inputs, outputs and initializers, then builds a model."""

    def __init__(self, opset: int = 17, domains: Sequence[tuple[str, int]] = (), seed: int = 0) -> None:
        self.opset = opset
        self.domains = list(domains)
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.functions: list[onnx.FunctionProto] = []
        self.rng = np.random.default_rng(seed)
        self._k = 0

    def _name(self, stem: str) -> str:
        name = f"{stem.lower()}_{self._k}"
        self._k += 1
        return name

    def input(self, name: str, shape: Sequence[int | str | None] | None, elem: int = TensorProto.FLOAT) -> str:
        """A graph input."""
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def const(self, value: object, name: str | None = None, dtype: type = np.float32) -> str:
        """An initializer holding ``value``."""
        name = name or self._name("w")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def weight(self, *shape: int) -> str:
        """An initializer of seeded random floats."""
        return self.const(self.rng.standard_normal(shape).astype(np.float32))

    def constant_node(self, value: object, dtype: type = np.float32) -> str:
        """A Constant node holding ``value`` (how the TorchScript exporter writes scalars)."""
        out = self._name("const")
        t = numpy_helper.from_array(np.asarray(value, dtype=dtype), out + "_value")
        self.nodes.append(helper.make_node("Constant", [], [out], value=t))
        return out

    def op(
        self,
        op_type: str,
        *inputs: str,
        out: str | None = None,
        domain: str = "",
        node_name: str | None = None,
        **attrs: Any,
    ) -> str:
        """Append one node with one output and return the output's name."""
        out = out or self._name(op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=node_name, domain=domain, **attrs))
        return out

    def output(self, name: str, shape: Sequence[int | str | None] | None = None) -> str:
        """Declare ``name`` a graph output (element type float, shape unknown unless given)."""
        self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        return name

    def model(self, infer: bool = True, check: bool = True) -> onnx.ModelProto:
        """The model; checked (full check) and shape-inferred unless told otherwise."""
        g = helper.make_graph(self.nodes, "g", self.inputs, self.outputs, self.inits)
        opsets = [helper.make_opsetid("", self.opset)] + [helper.make_opsetid(d, v) for d, v in self.domains]
        m = helper.make_model(g, opset_imports=opsets, ir_version=IR_VERSION, functions=self.functions)
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False)
        if check:  # graph outputs need a shape for the checker: contrib-op tests declare theirs
            onnx.checker.check_model(inferred, full_check=not any(d == MS for d, _ in self.domains))
        return inferred if infer else m

    def index(self, **kw: object) -> GraphIndex:
        """A GraphIndex over :meth:`model`."""
        return GraphIndex(self.model(**kw))  # type: ignore[arg-type]


# --- whole small models, for the pipeline and CLI tests ----------------------------------


def mlp(d_in: int = 6, hidden: int = 8, d_out: int = 3, act: str = "Relu", batch: int | str = "N") -> onnx.ModelProto:
    """x → Gemm "fc1" → act "act" → Gemm "fc2" → y, with seeded weights (w1, w2)."""
    g = Graph()
    h = g.op("Gemm", g.input("x", [batch, d_in]), g.const(g.rng.standard_normal((d_in, hidden)), "w1"), node_name="fc1")
    a = g.op(act, h, node_name="act")
    g.output(
        g.op("Gemm", a, g.const(g.rng.standard_normal((hidden, d_out)), "w2"), node_name="fc2", out="y"), [batch, d_out]
    )
    return g.model(infer=False)


def add_only() -> onnx.ModelProto:
    """y = x + x: no weighted layer, no activation — nothing to score."""
    g = Graph()
    x = g.input("x", ["N", 3])
    g.output(g.op("Add", x, x, out="y"), ["N", 3])
    return g.model(infer=False)


def memory_bomb(kind: str, shape: tuple[int, ...] = (768, 1024, 1024)) -> onnx.ModelProto:
    """x → Gemm → Relu (the taps) times the maximum of a 3 GiB tensor that ``kind`` makes
    from x at run time (Expand, Tile) or from a constant shape (ConstantOfShape): never a tap."""
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0),
        helper.make_node("Reshape", ["m", "ones"], ["m3"]),
    ]
    if kind == "ConstantOfShape":
        one = numpy_helper.from_array(np.ones(1, np.float32))
        nodes.append(helper.make_node("ConstantOfShape", ["shape"], ["big"], value=one))
    else:  # Expand to the shape, or Tile by it
        nodes.append(helper.make_node(kind, ["m3", "shape"], ["big"]))
    nodes += [helper.make_node("ReduceMax", ["big"], ["s"], keepdims=0), helper.make_node("Mul", ["r", "s"], ["y"])]
    inits = [
        numpy_helper.from_array(np.eye(4, dtype=np.float32), "w"),
        numpy_helper.from_array(np.array(shape, dtype=np.int64), "shape"),
        numpy_helper.from_array(np.ones(3, dtype=np.int64), "ones"),
    ]
    g = helper.make_graph(
        nodes,
        "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def loop_body() -> onnx.GraphProto:
    """A Loop body carrying v through MatMul (by the outer-scope weight "wb") and Tanh."""
    return helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["v_in", "wb"], ["m"]),
            helper.make_node("Tanh", ["m"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
        ],
    )


def save(m: onnx.ModelProto, path: Path) -> Path:
    """Write ``m`` to ``path`` and return the path."""
    onnx.save(m, str(path))
    return path


def assert_scored(r: ScoreResult, taps: int) -> None:
    """``r`` scored exactly ``taps`` taps, each a matrix with something in it: an effective
    rank is exp of an entropy, so it lies in [1, min(rows, cols)] for any non-zero finite
    matrix (0 for a zero matrix, NaN for a non-finite one); and the score is the taps' sum.
    (What ``r.score > 0`` only hinted at: a zero tap, a wrong count or sum fails here.)"""
    assert len(r.layers) == taps, [(l.name, l.op) for l in r.layers]
    for l in r.layers:
        assert l.status == "ok" and 1 - 1e-9 <= l.erank <= min(l.shape) + 1e-9, l
    assert r.score == pytest.approx(math.fsum(l.erank for l in r.layers), rel=1e-12)


# --- small graphs and a view of the plan, for the tap-stage tests ------------------------
# (test_taps.py, test_activations.py, test_layers.py, test_axes.py)


def roles(plan: TapPlan) -> dict[str, str]:
    """tensor → role of every tap of ``plan``."""
    return {t.tensor: t.role for t in plan.taps}


def gemm_input(g: Graph) -> str:
    """x[2,5] → Gemm → h[2,3]."""
    return g.op("Gemm", g.input("x", [2, 5]), g.weight(5, 3), g.weight(3), out="h")


def conv_relu() -> Graph:
    """x → Conv → c → Relu → r."""
    g = Graph()
    c = g.op("Conv", g.input("x", [1, 2, 5, 5]), g.weight(3, 2, 3, 3), g.weight(3), out="c")
    g.output(g.op("Relu", c, out="r"))
    return g


# --- sources of the tensor x that a pattern is applied to --------------------------------


def source(g: Graph, kind: str) -> str:
    """x for a pattern: a graph input, a Gemm output, or a dense layer MatMul → Add(bias)."""
    if kind == "input":
        return g.input("x", [2, 4])
    xin = g.input("x_in", [2, 5])
    if kind == "gemm":
        return g.op("Gemm", xin, g.weight(5, 4), g.weight(4), out="x")
    if kind == "dense":
        mm = g.op("MatMul", xin, g.weight(5, 4), out="mm")
        return g.op("Add", mm, g.weight(4), out="x")
    raise ValueError(kind)


# --- exporter patterns: each appends nodes computing f(x) and returns the output name ----

SQRT2 = 1.4142135
INV_SQRT2 = 0.70710677
SQRT_2_OVER_PI = 0.7978845608
KAPPA = 0.044715


def silu_x_first(g: Graph, x: str) -> str:
    """Mul(x, Sigmoid(x))."""
    return g.op("Mul", x, g.op("Sigmoid", x))


def silu_sigmoid_first(g: Graph, x: str) -> str:
    """Mul(Sigmoid(x), x)."""
    return g.op("Mul", g.op("Sigmoid", x), x)


def gelu_erf_torchscript(g: Graph, x: str) -> str:
    """PyTorch TorchScript: Div(x, √2) → Erf → Add(·, 1) → Mul(x, ·) → Mul(·, 0.5), scalars as Constant nodes."""
    e = g.op("Erf", g.op("Div", x, g.constant_node(SQRT2)))
    a = g.op("Add", e, g.constant_node(1.0))
    return g.op("Mul", g.op("Mul", x, a), g.constant_node(0.5))


def gelu_erf_half_first(g: Graph, x: str) -> str:
    """Mul(x, 1/√2) → Erf → Add(1) → Mul(Mul(x, 0.5), ·)."""
    e = g.op("Erf", g.op("Mul", x, g.const(INV_SQRT2)))
    a = g.op("Add", e, g.const(1.0))
    return g.op("Mul", g.op("Mul", x, g.const(0.5)), a)


def gelu_tanh_pow(g: Graph, x: str) -> str:
    """HF NewGELU: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·Pow(x, 3))))."""
    cube = g.op("Pow", x, g.const(3.0))
    inner = g.op("Mul", g.op("Add", x, g.op("Mul", cube, g.const(KAPPA))), g.const(SQRT_2_OVER_PI))
    one_plus = g.op("Add", g.op("Tanh", inner), g.const(1.0))
    return g.op("Mul", g.op("Mul", x, g.const(0.5)), one_plus)


def gelu_tanh_mulmul(g: Graph, x: str) -> str:
    """torch.onnx symbolic (approximate='tanh'): x³ as Mul(x, Mul(x, x)), constants first, as Constant nodes."""
    cube = g.op("Mul", x, g.op("Mul", x, x))
    inner = g.op("Mul", g.constant_node(SQRT_2_OVER_PI), g.op("Add", x, g.op("Mul", g.constant_node(KAPPA), cube)))
    one_plus = g.op("Add", g.constant_node(1.0), g.op("Tanh", inner))
    return g.op("Mul", g.constant_node(0.5), g.op("Mul", x, one_plus))


def mish(g: Graph, x: str) -> str:
    """Mul(x, Tanh(Softplus(x)))."""
    return g.op("Mul", x, g.op("Tanh", g.op("Softplus", x)))


def hardswish(g: Graph, x: str) -> str:
    """Mul(x, HardSigmoid(x, alpha=1/6, beta=0.5)) (PyTorch before opset 14)."""
    return g.op("Mul", x, g.op("HardSigmoid", x, alpha=1.0 / 6.0, beta=0.5))


def _erf(v: np.ndarray) -> np.ndarray:
    from math import erf

    return np.asarray(np.vectorize(erf)(v.astype(np.float64)))


# Reference functions, to check that the pattern graphs compute what they are named after.
REFERENCE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "silu": lambda v: v / (1.0 + np.exp(-v)),
    "gelu_erf": lambda v: 0.5 * v * (1.0 + _erf(v / np.sqrt(2.0))),
    "gelu_tanh": lambda v: 0.5 * v * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (v + KAPPA * v**3))),
    "mish": lambda v: v * np.tanh(np.log1p(np.exp(v))),
    "hardswish": lambda v: v * np.clip(v / 6.0 + 0.5, 0.0, 1.0),
}
