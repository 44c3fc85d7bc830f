"""Taps (onnx_near/taps.py, SPEC §2): which tensors of an ONNX graph are tapped in each mode,
each once, and what cannot be tapped (If bodies, tables computed from shapes alone).  The
sites the taps are made of: test_activations.py, test_layers.py; their axes: test_axes.py."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import pytest
from graphs import Graph, conv_relu, gemm_input, roles
from onnx import TensorProto, helper

from onnx_near.activations import find_activations
from onnx_near.graph import GraphIndex
from onnx_near.layers import find_layers
from onnx_near.rewrite import inline_functions
from onnx_near.taps import plan_taps

# --- 1. modes -----------------------------------------------------------------------------


def test_mode_all_conv_relu() -> None:
    """Mode "all" on Conv → Relu: the conv output (pre) and the relu output (post)."""
    plan = plan_taps(conv_relu().index(), mode="all")
    assert [(t.tensor, t.role) for t in plan.taps] == [("c", "pre"), ("r", "post")]


def test_mode_activations_conv_relu() -> None:
    """Mode "activations" on Conv → Relu: the relu input (pre) and output (post), the same two tensors."""
    plan = plan_taps(conv_relu().index(), mode="activations")
    assert [(t.tensor, t.role) for t in plan.taps] == [("c", "pre"), ("r", "post")]


def test_chained_activations_middle_tensor_once() -> None:
    """Relu → Tanh in mode "activations": the middle tensor is one tap with role pre+post."""
    g = Graph()
    h = gemm_input(g)
    m = g.op("Relu", h, out="m")
    g.output(g.op("Tanh", m, out="t"))
    plan = plan_taps(g.index(), mode="activations")
    assert [(t.tensor, t.role) for t in plan.taps] == [("h", "pre"), ("m", "pre+post"), ("t", "post")]


def test_chained_activations_on_graph_input() -> None:
    """Relu → Tanh straight on a graph input: the input itself is never a tap, the middle tensor counted once."""
    g = Graph()
    m = g.op("Relu", g.input("x", [2, 3]), out="m")
    g.output(g.op("Tanh", m, out="t"))
    plan = plan_taps(g.index(), mode="activations")
    assert [(t.tensor, t.role) for t in plan.taps] == [("m", "pre+post"), ("t", "post")]


def test_conv_bn_relu_all_three() -> None:
    """Conv → BatchNormalization → Relu in mode "all": three distinct taps, each once."""
    g = Graph()
    c = g.op("Conv", g.input("x", [1, 2, 5, 5]), g.weight(3, 2, 3, 3), out="c")
    b = g.op("BatchNormalization", c, g.weight(3), g.weight(3), g.weight(3), g.const(np.ones(3)), out="b")
    g.output(g.op("Relu", b, out="r"))
    index = g.index()
    assert roles(plan_taps(index, mode="all")) == {"c": "pre", "b": "pre", "r": "post"}
    assert roles(plan_taps(index, mode="activations")) == {"b": "pre", "r": "post"}


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_is_never_a_tap(op: str) -> None:
    """Softmax/LogSoftmax are not activations: only the Gemm before them is tapped."""
    g = Graph()
    h = gemm_input(g)
    s = g.output(g.op(op, h, out="s"))
    index = g.index()
    assert find_activations(index) == []
    assert roles(plan_taps(index, mode="all")) == {"h": "pre"}
    assert s not in roles(plan_taps(index, mode="activations"))
    assert plan_taps(index, mode="activations").taps == ()


def test_add_reshape_graph_has_no_taps() -> None:
    """A graph made of Add and Reshape only has no taps in either mode."""
    g = Graph()
    a = g.op("Add", g.input("x", [2, 6]), g.const(np.ones(6)))
    g.output(g.op("Reshape", a, g.const([3, 4], dtype=np.int64)))
    index = g.index()
    for mode in ("all", "activations"):
        plan = plan_taps(index, mode=mode)
        assert plan.taps == () and plan.untappable == ()


# --- 2. control flow ----------------------------------------------------------------------


def test_if_bodies_are_untappable() -> None:
    """An If whose branches hold Relu / Conv is listed as untappable (reason names If); main-graph taps are still found."""
    g = Graph()
    g.op("Conv", g.input("x", [1, 2, 5, 5]), g.weight(3, 2, 3, 3), pads=[1, 1, 1, 1], out="c")
    cond = g.input("cond", [], elem=TensorProto.BOOL)
    out_vi: Callable[[str], onnx.ValueInfoProto] = lambda n: helper.make_tensor_value_info(  # noqa: E731
        n, TensorProto.FLOAT, [1, 3, 5, 5]
    )
    then_g = helper.make_graph([helper.make_node("Relu", ["c"], ["t_out"])], "then", [], [out_vi("t_out")])
    w_else = onnx.numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w_else")
    else_g = helper.make_graph(
        [helper.make_node("Conv", ["c", "w_else"], ["e_out"])], "else", [], [out_vi("e_out")], [w_else]
    )
    g.nodes.append(helper.make_node("If", [cond], ["i"], name="branch", then_branch=then_g, else_branch=else_g))
    g.output(g.op("Relu", "i", out="r"))
    index = g.index()
    plan = plan_taps(index, mode="all")
    assert roles(plan) == {"c": "pre", "r": "post"}
    assert len(plan.untappable) == 1
    u = plan.untappable[0]
    assert u.op == "If" and "If" in u.reason and u.where == "branch"
    assert roles(plan_taps(index, mode="activations")) == {"i": "pre", "r": "post"}


# --- 3. model-local functions -------------------------------------------------------------


def test_local_function_taps_after_inlining() -> None:
    """A local function Gemm → Relu called from the main graph: after inline_functions both taps are found."""
    fn = helper.make_function(
        "local",
        "Block",
        ["a", "w", "b"],
        ["o"],
        [helper.make_node("Gemm", ["a", "w", "b"], ["h"]), helper.make_node("Relu", ["h"], ["o"])],
        [helper.make_opsetid("", 17)],
    )
    g = Graph(domains=[("local", 1)])
    g.functions.append(fn)
    y = g.output(g.op("Block", g.input("x", [2, 5]), g.weight(5, 3), g.weight(3), out="y", domain="local"))
    model = g.model(infer=False)
    assert plan_taps(GraphIndex(model)).taps == ()  # the function body is not indexed before inlining
    index = GraphIndex(onnx.shape_inference.infer_shapes(inline_functions(model)))
    assert [l.op for l in find_layers(index)] == ["Gemm"]
    sites = find_activations(index)
    assert [(s.post, s.kind) for s in sites] == [(y, "Relu")]
    plan = plan_taps(index, mode="all")
    assert [t.role for t in plan.taps] == ["pre", "post"]
    assert plan.taps[1].tensor == y and plan.taps[0].tensor == sites[0].pre


# --- 4. what depends on no input value ----------------------------------------------------


def test_a_table_computed_from_input_shapes_is_not_a_layer() -> None:
    """A rotary embedding's MatMul of inverse frequencies and Range(Shape(x)) positions has a
    constant operand but depends on no input value: not a tap; the data path's layer is."""
    g = Graph()
    x = g.input("x", ["N", 5, 4], TensorProto.FLOAT)
    h = g.op("MatMul", x, g.weight(4, 4), out="h")
    length = g.op("Gather", g.op("Shape", x), g.const(np.array(1), dtype=np.int64))
    positions = g.op(
        "Cast",
        g.op("Range", g.const(np.array(0), dtype=np.int64), length, g.const(np.array(1), dtype=np.int64)),
        to=TensorProto.FLOAT,
    )
    column = g.op("Unsqueeze", positions, g.const(np.array([1]), dtype=np.int64))
    angles = g.op("MatMul", column, g.const(np.linspace(0.1, 1.0, 4, dtype=np.float32).reshape(1, 4)), out="angles")
    g.output(g.op("Mul", h, g.op("Cos", angles)), ["N", 5, 4])
    taps = plan_taps(g.index(), "all", {}).taps
    assert [t.tensor for t in taps] == ["h"]
