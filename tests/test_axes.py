"""Feature axes (onnx_near/axes.py, SPEC §3): channels for what comes from convolutions, the
last axis for dense tensors, through a Transpose, and the user's override."""

from __future__ import annotations

from graphs import Graph, conv_relu, gemm_input
from onnx import TensorProto

from onnx_near.axes import feature_axes
from onnx_near.taps import plan_taps


def test_axes_conv_relu_channels() -> None:
    """The conv output and the Relu after it have their features on axis 1."""
    index = conv_relu().index()
    axes = feature_axes(index)
    assert axes["c"][0] == 1 and axes["r"][0] == 1
    plan = plan_taps(index, mode="all")
    assert [t.axis for t in plan.taps] == [1, 1]
    assert plan.taps[0].declared_shape == (1, 3, 3, 3)
    assert plan.taps[0].elem_type == TensorProto.FLOAT


def test_axes_dense_last() -> None:
    """Gemm and MatMul outputs (and a Relu after them) have their features on the last axis."""
    g = Graph()
    h = gemm_input(g)
    m = g.op("MatMul", g.op("Relu", h, out="a"), g.weight(3, 2), out="m")
    g.output(m)
    index = g.index()
    axes = feature_axes(index)
    assert axes["h"][0] == -1 and axes["a"][0] == -1 and axes["m"][0] == -1
    assert {t.tensor: t.axis for t in plan_taps(index, mode="all").taps} == {"h": -1, "a": -1, "m": -1}


def test_axes_through_transpose() -> None:
    """Conv → Transpose(0,2,3,1) → Relu: the Relu's features are on axis 3."""
    g = Graph()
    c = g.op("Conv", g.input("x", [1, 2, 5, 5]), g.weight(3, 2, 3, 3), out="c")
    t = g.op("Transpose", c, perm=[0, 2, 3, 1], out="t")
    g.output(g.op("Relu", t, out="r"))
    index = g.index()
    assert feature_axes(index)["r"][0] == 3
    taps = {t.tensor: t for t in plan_taps(index, mode="all").taps}
    assert taps["r"].axis == 3 and taps["c"].axis == 1


def test_axes_user_override() -> None:
    """plan_taps(axes={tensor: 2}) overrides the inferred axis and says it was set by the user."""
    index = conv_relu().index()
    plan = plan_taps(index, mode="all", axes={"r": 2})
    taps = {t.tensor: t for t in plan.taps}
    assert taps["r"].axis == 2 and taps["r"].axis_reason == "set by the user"
    assert taps["c"].axis == 1 and taps["c"].axis_reason != "set by the user"

