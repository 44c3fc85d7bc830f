"""Taps (SPEC §2): which tensors of an ONNX graph are weighted-layer and activation outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import (
    MS,
    REFERENCE,
    Graph,
    gelu_erf_half_first,
    gelu_erf_torchscript,
    gelu_tanh_mulmul,
    gelu_tanh_pow,
    hardswish,
    mish,
    mlp,
    silu_sigmoid_first,
    silu_x_first,
    source,
)
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from onnx_near.graph import GraphIndex
from onnx_near.rewrite import inline_functions
from onnx_near.taps import feature_axes, find_activations, find_layers, plan_taps


def roles(plan) -> dict[str, str]:
    """tensor → role of every tap of ``plan``."""
    return {t.tensor: t.role for t in plan.taps}


def gemm_input(g: Graph) -> str:
    """x[2,5] → Gemm → h[2,3]."""
    return g.op("Gemm", g.input("x", [2, 5]), g.weight(5, 3), g.weight(3), out="h")


# --- 1. native activations ---------------------------------------------------------------

NATIVE = [
    ("Relu", 17, {}, 0),
    ("LeakyRelu", 17, {"alpha": 0.1}, 0),
    ("PRelu", 17, {}, 1),
    ("Elu", 17, {}, 0),
    ("Selu", 17, {}, 0),
    ("Celu", 17, {}, 0),
    ("Sigmoid", 17, {}, 0),
    ("HardSigmoid", 17, {}, 0),
    ("Tanh", 17, {}, 0),
    ("Softplus", 17, {}, 0),
    ("Softsign", 17, {}, 0),
    ("HardSwish", 17, {}, 0),
    ("Mish", 18, {}, 0),
    ("Gelu", 20, {"approximate": "none"}, 0),
    ("Gelu", 20, {"approximate": "tanh"}, 0),
    ("ThresholdedRelu", 17, {"alpha": 0.5}, 0),
]


@pytest.mark.parametrize(
    "op,opset,attrs,slope", NATIVE, ids=[f"{o}-{a.get('approximate', '')}".rstrip("-") for o, _, a, _ in NATIVE]
)
def test_native_activation_after_gemm(op: str, opset: int, attrs: dict, slope: int) -> None:
    """A native activation op after a Gemm is one activation: pre = Gemm output, post = its output."""
    g = Graph(opset=opset)
    h = gemm_input(g)
    ins = [h] + ([g.const(np.full(3, 0.25))] if slope else [])
    y = g.op(op, *ins, out="y", **attrs)
    g.output(y)
    sites = find_activations(g.index())
    assert [(s.pre, s.post) for s in sites] == [("h", "y")]
    assert op.lower() in sites[0].kind.lower()
    if attrs.get("approximate") == "tanh":
        assert "tanh" in sites[0].kind.lower()


# --- 2. Clip as ReLU6 ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["initializers", "constant_nodes"])
def test_clip_0_6_is_relu6(how: str) -> None:
    """Clip(x, 0, 6) with min/max as initializers or Constant nodes is a ReLU6 activation."""
    g = Graph()
    h = gemm_input(g)
    if how == "initializers":
        lo, hi = g.const(0.0), g.const(6.0)
    else:
        lo, hi = g.constant_node(0.0), g.constant_node(6.0)
    y = g.output(g.op("Clip", h, lo, hi, out="y"))
    sites = find_activations(g.index())
    assert [(s.pre, s.post) for s in sites] == [("h", y)]
    assert "relu6" in sites[0].kind.lower()


def test_clip_minus1_1_is_not_activation() -> None:
    """Clip(x, -1, 1) is not an activation (only Clip from 0 is ReLU-like)."""
    g = Graph()
    h = gemm_input(g)
    g.output(g.op("Clip", h, g.const(-1.0), g.const(1.0)))
    index = g.index()
    assert find_activations(index) == []
    assert roles(plan_taps(index, mode="activations")) == {}


def test_clip_opset6_attributes_is_relu6() -> None:
    """Opset-6 Clip with min=0, max=6 attributes is a ReLU6 activation."""
    g = Graph(opset=6)
    h = g.op("MatMul", g.input("x", [2, 5]), g.weight(5, 3), out="h")
    y = g.output(g.op("Clip", h, out="y", min=0.0, max=6.0))
    sites = find_activations(g.index())
    assert [(s.pre, s.post) for s in sites] == [("h", y)]
    assert "relu6" in sites[0].kind.lower()


def test_clip_opset6_minus1_1_is_not_activation() -> None:
    """Opset-6 Clip with min=-1, max=1 attributes is not an activation."""
    g = Graph(opset=6)
    h = g.op("MatMul", g.input("x", [2, 5]), g.weight(5, 3), out="h")
    g.output(g.op("Clip", h, min=-1.0, max=1.0))
    assert find_activations(g.index()) == []


# --- 3. exporter patterns -----------------------------------------------------------------

PATTERNS = [
    ("silu_x_first", silu_x_first, "silu", "silu"),
    ("silu_sigmoid_first", silu_sigmoid_first, "silu", "silu"),
    ("gelu_erf_torchscript", gelu_erf_torchscript, "gelu", "gelu_erf"),
    ("gelu_erf_half_first", gelu_erf_half_first, "gelu", "gelu_erf"),
    ("gelu_tanh_pow", gelu_tanh_pow, "gelu", "gelu_tanh"),
    ("gelu_tanh_mulmul", gelu_tanh_mulmul, "gelu", "gelu_tanh"),
    ("mish", mish, "mish", "mish"),
    ("hardswish", hardswish, "hardswish", "hardswish"),
]
PATTERN_IDS = [p[0] for p in PATTERNS]


@pytest.mark.parametrize("name,build,kind,ref", PATTERNS, ids=PATTERN_IDS)
def test_pattern_graph_computes_its_function(name: str, build, kind: str, ref: str) -> None:
    """The pattern graphs used below really compute SiLU / GELU / Mish / HardSwish (reference evaluator)."""
    g = Graph()
    x = source(g, "input")
    g.output(build(g, x))
    v = np.linspace(-4, 4, 8, dtype=np.float32).reshape(2, 4)
    (got,) = ReferenceEvaluator(g.model()).run(None, {"x": v})
    np.testing.assert_allclose(got, REFERENCE[ref](v), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("src", ["input", "gemm", "dense"])
@pytest.mark.parametrize("name,build,kind,ref", PATTERNS, ids=PATTERN_IDS)
def test_pattern_is_one_activation(name: str, build, kind: str, ref: str, src: str) -> None:
    """An exporter pattern is exactly one activation: pre = x (the Add of a dense layer), post = its final output."""
    g = Graph()
    x = source(g, src)
    y = g.output(build(g, x))
    sites = find_activations(g.index())
    assert [(s.pre, s.post) for s in sites] == [(x, y)]
    assert kind in sites[0].kind.lower().replace(" ", "")


@pytest.mark.parametrize("name,build,kind,ref", PATTERNS, ids=PATTERN_IDS)
def test_pattern_inner_tensors_are_not_tapped(name: str, build, kind: str, ref: str) -> None:
    """In both modes a pattern after a dense layer taps the Add output and the final output only."""
    g = Graph()
    x = source(g, "dense")
    y = g.output(build(g, x))
    index = g.index()
    assert roles(plan_taps(index, mode="all")) == {x: "pre", y: "post"}
    assert roles(plan_taps(index, mode="activations")) == {x: "pre", y: "post"}


def test_dense_layer_tap_is_the_bias_add() -> None:
    """For MatMul → Add(bias) → SiLU, the layer is the Add output, not the MatMul output."""
    g = Graph()
    x = source(g, "dense")
    g.output(silu_x_first(g, x))
    index = g.index()
    assert [s.tensor for s in find_layers(index)] == ["x"]
    assert "mm" not in roles(plan_taps(index, mode="all"))


def test_pattern_followed_by_layer() -> None:
    """A SiLU in the middle of a network (its output feeding another Gemm) is still one activation."""
    g = Graph()
    x = source(g, "gemm")
    a = silu_x_first(g, x)
    g.output(g.op("Gemm", a, g.weight(4, 2), out="z"))
    sites = find_activations(g.index())
    assert [(s.pre, s.post, s.kind) for s in sites] == [(x, a, "SiLU")]


@pytest.mark.parametrize(
    "first,second,kinds",
    [
        (silu_x_first, silu_x_first, ["SiLU", "SiLU"]),
        (gelu_erf_torchscript, mish, ["GELU (erf)", "Mish"]),
        (gelu_tanh_pow, hardswish, ["GELU (tanh)", "HardSwish"]),
    ],
    ids=["silu-silu", "gelu_erf-mish", "gelu_tanh-hardswish"],
)
def test_two_patterns_in_a_row(first, second, kinds: list) -> None:
    """Two patterns back to back are two activations; the first one's output is the second one's pre."""
    g = Graph()
    x = source(g, "gemm")
    a = first(g, x)
    y = g.output(second(g, a))
    sites = find_activations(g.index())
    assert [(s.pre, s.post, s.kind) for s in sites] == [(x, a, kinds[0]), (a, y, kinds[1])]


@pytest.mark.parametrize("gate_first", [True, False])
def test_squeeze_excitation_sigmoid_is_plain(gate_first: bool) -> None:
    """y·Sigmoid(z) gating a different tensor (squeeze-and-excitation) is a plain Sigmoid, not SiLU."""
    g = Graph()
    y = g.op("Conv", g.input("x", [1, 2, 5, 5]), g.weight(4, 2, 3, 3), pads=[1, 1, 1, 1], out="y")
    z = g.op("Conv", g.op("GlobalAveragePool", y), g.weight(4, 4, 1, 1), g.weight(4), out="z")
    s = g.op("Sigmoid", z, out="s")
    g.output(g.op("Mul", s, y) if gate_first else g.op("Mul", y, s))
    sites = find_activations(g.index())
    assert [(a.pre, a.post, a.kind) for a in sites] == [("z", "s", "Sigmoid")]


def test_sigmoid_gating_input_of_its_own_argument_is_not_silu() -> None:
    """y·Sigmoid(y + r) with r another tensor is not x·Sigmoid(x): a plain Sigmoid (pre y + r), not SiLU of y."""
    g = Graph()
    y = g.op("Gemm", g.input("x", [2, 5]), g.weight(5, 4), g.weight(4), out="y")
    r = g.op("Gemm", g.input("x2", [2, 5]), g.weight(5, 4), g.weight(4), out="r")
    z = g.op("Add", y, r, out="z")
    s = g.op("Sigmoid", z, out="s")
    g.output(g.op("Mul", y, s))
    sites = find_activations(g.index())
    assert [(a.pre, a.post, a.kind) for a in sites] == [("z", "s", "Sigmoid")]


def test_plain_tanh_feeding_a_layer_is_native() -> None:
    """A Tanh whose output goes into a Gemm (no gate) stays a native Tanh activation."""
    g = Graph()
    h = gemm_input(g)
    t = g.op("Tanh", h, out="t")
    g.output(g.op("Gemm", t, g.weight(3, 2)))
    sites = find_activations(g.index())
    assert [(a.pre, a.post, a.kind) for a in sites] == [("h", "t", "Tanh")]


# --- 4. contrib ops -----------------------------------------------------------------------

CONTRIB = [("Gelu", 0, {}), ("FastGelu", 0, {}), ("BiasGelu", 1, {}), ("QuickGelu", 0, {"alpha": 1.702})]


@pytest.mark.parametrize("op,bias,attrs", CONTRIB, ids=[c[0] for c in CONTRIB])
def test_contrib_activation(op: str, bias: int, attrs: dict) -> None:
    """com.microsoft Gelu, FastGelu, BiasGelu, QuickGelu are activations whose output is tapped as post."""
    g = Graph(domains=[(MS, 1)])
    h = gemm_input(g)
    ins = [h] + ([g.weight(3)] if bias else [])
    y = g.output(g.op(op, *ins, out="y", domain=MS, **attrs), [2, 3])
    index = g.index()
    sites = find_activations(index)
    assert [(s.pre, s.post) for s in sites] == [("h", y)]
    assert op in sites[0].kind
    assert roles(plan_taps(index, mode="all")) == {"h": "pre", y: "post"}


FUSED = [
    ("FusedConv", lambda g: (g.input("x", [1, 2, 5, 5]), g.weight(3, 2, 3, 3), g.weight(3)), [1, 3, 3, 3]),
    ("FusedGemm", lambda g: (g.input("x", [2, 5]), g.weight(5, 3), g.weight(3)), [2, 3]),
]


@pytest.mark.parametrize("op,ins,shape", FUSED, ids=[f[0] for f in FUSED])
def test_fused_op_output_tapped_pre_activation_untappable(op: str, ins, shape: list) -> None:
    """A fused op with activation="Relu": its output is tapped once as post, its hidden pre-activation listed as untappable."""
    g = Graph(domains=[(MS, 1)])
    y = g.output(g.op(op, *ins(g), out="y", domain=MS, activation="Relu"), shape)
    index = g.index()
    assert find_layers(index) == []
    assert [(s.pre, s.post) for s in find_activations(index)] == [("", y)]
    plan = plan_taps(index, mode="all")
    assert roles(plan) == {y: "post"}
    assert len(plan.untappable) == 1
    assert op in plan.untappable[0].op
    assert "pre-activation" in plan.untappable[0].reason


@pytest.mark.parametrize("op,ins,shape", FUSED, ids=[f[0] for f in FUSED])
def test_fused_op_output_is_post_activation_in_strict_mode(op: str, ins, shape: list) -> None:
    """SPEC §2 lists fused ops among activation outputs: mode "activations" taps the fused output as post."""
    g = Graph(domains=[(MS, 1)])
    y = g.output(g.op(op, *ins(g), out="y", domain=MS, activation="Relu"), shape)
    plan = plan_taps(g.index(), mode="activations")
    assert roles(plan) == {y: "post"}
    assert len(plan.untappable) == 1


# --- 5. weighted layers -------------------------------------------------------------------

LAYERS = [
    ("Conv", 17, [1, 2, 5, 5], lambda g: [g.weight(3, 2, 3, 3), g.weight(3)], {}, [1, 3, 3, 3]),
    ("ConvTranspose", 17, [1, 2, 5, 5], lambda g: [g.weight(2, 3, 3, 3), g.weight(3)], {}, [1, 3, 7, 7]),
    ("Gemm", 17, [2, 5], lambda g: [g.weight(5, 3), g.weight(3)], {}, [2, 3]),
    (
        "BatchNormalization",
        17,
        [1, 2, 5, 5],
        lambda g: [g.weight(2), g.weight(2), g.weight(2), g.const(np.ones(2))],
        {},
        [1, 2, 5, 5],
    ),
    ("LayerNormalization", 17, [2, 5], lambda g: [g.weight(5), g.weight(5)], {}, [2, 5]),
    ("GroupNormalization", 21, [1, 4, 3, 3], lambda g: [g.weight(4), g.weight(4)], {"num_groups": 2}, [1, 4, 3, 3]),
    ("InstanceNormalization", 17, [1, 2, 5, 5], lambda g: [g.weight(2), g.weight(2)], {}, [1, 2, 5, 5]),
]


@pytest.mark.parametrize("op,opset,shape,weights,attrs,out_shape", LAYERS, ids=[l[0] for l in LAYERS])
def test_weighted_layer(op: str, opset: int, shape: list, weights, attrs: dict, out_shape: list) -> None:
    """Each weighted op is one layer whose output is the single tap (role pre) in mode "all"."""
    g = Graph(opset=opset)
    y = g.output(g.op(op, g.input("x", shape), *weights(g), out="y", **attrs), out_shape)
    index = g.index()
    assert [(s.tensor, s.op) for s in find_layers(index)] == [(y, op)]
    assert roles(plan_taps(index, mode="all")) == {y: "pre"}
    assert roles(plan_taps(index, mode="activations")) == {}


def test_matmul_constant_right_is_layer() -> None:
    """MatMul(x, W) with W an initializer is a layer."""
    g = Graph()
    y = g.output(g.op("MatMul", g.input("x", [2, 5]), g.weight(5, 3), out="y"))
    assert [s.tensor for s in find_layers(g.index())] == [y]


def test_matmul_constant_left_is_layer() -> None:
    """MatMul(W, x) with W an initializer is a layer."""
    g = Graph()
    y = g.output(g.op("MatMul", g.weight(3, 2), g.input("x", [2, 5]), out="y"))
    assert [s.tensor for s in find_layers(g.index())] == [y]


def test_matmul_of_two_inputs_is_not_layer() -> None:
    """MatMul of two non-constant tensors is no layer and gives no tap."""
    g = Graph()
    g.output(g.op("MatMul", g.input("a", [2, 5]), g.input("b", [5, 3])))
    index = g.index()
    assert find_layers(index) == []
    assert plan_taps(index, mode="all").taps == ()


def test_attention_scores_are_not_a_layer() -> None:
    """In Q·Kᵀ only the projections Q and K are layers, not the scores MatMul."""
    g = Graph()
    x = g.input("x", [2, 4, 8])
    q = g.op("MatMul", x, g.weight(8, 8), out="q")
    k = g.op("MatMul", x, g.weight(8, 8), out="k")
    s = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 2, 1]), out="scores")
    g.output(g.op("Softmax", s, axis=-1))
    index = g.index()
    assert [l.tensor for l in find_layers(index)] == ["q", "k"]
    assert set(roles(plan_taps(index, mode="all"))) == {"q", "k"}


@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_add_bias_taps_the_add(bias_first: bool) -> None:
    """MatMul followed by Add of a constant bias (either operand order): the Add output is the layer tap."""
    g = Graph()
    mm = g.op("MatMul", g.input("x", [2, 5]), g.weight(5, 3), out="mm")
    b = g.weight(3)
    y = g.output(g.op("Add", b, mm, out="y") if bias_first else g.op("Add", mm, b, out="y"))
    index = g.index()
    assert [s.tensor for s in find_layers(index)] == [y]
    assert roles(plan_taps(index, mode="all")) == {y: "pre"}


def test_matmul_add_of_residual_taps_the_matmul() -> None:
    """MatMul followed by Add of a non-constant tensor (a residual): the MatMul output is the tap."""
    g = Graph()
    x = g.input("x", [2, 5])
    mm = g.op("MatMul", x, g.weight(5, 5), out="mm")
    g.output(g.op("Add", mm, x, out="y"))
    assert [s.tensor for s in find_layers(g.index())] == [mm]


@pytest.mark.parametrize("weight", ["transpose", "constant_node", "cast"])
def test_matmul_with_folded_constant_weight(weight: str) -> None:
    """MatMul whose weight is Transpose(initializer), a Constant node or Cast(initializer) is still a layer."""
    g = Graph()
    x = g.input("x", [2, 5])
    if weight == "transpose":
        w = g.op("Transpose", g.weight(3, 5), perm=[1, 0])
    elif weight == "constant_node":
        w = g.constant_node(np.ones((5, 3)))
    else:
        w = g.op("Cast", g.const(np.ones((5, 3)), dtype=np.float64), to=TensorProto.FLOAT)
    y = g.output(g.op("MatMul", x, w, out="y"))
    index = g.index()
    assert [s.tensor for s in find_layers(index)] == [y]
    assert roles(plan_taps(index, mode="all")) == {y: "pre"}


# --- 6. modes -----------------------------------------------------------------------------


def conv_relu() -> Graph:
    """x → Conv → c → Relu → r."""
    g = Graph()
    c = g.op("Conv", g.input("x", [1, 2, 5, 5]), g.weight(3, 2, 3, 3), g.weight(3), out="c")
    g.output(g.op("Relu", c, out="r"))
    return g


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


# --- 7. feature axes ----------------------------------------------------------------------


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


# --- 8. control flow ----------------------------------------------------------------------


def test_if_bodies_are_untappable() -> None:
    """An If whose branches hold Relu / Conv is listed as untappable (reason names If); main-graph taps are still found."""
    g = Graph()
    g.op("Conv", g.input("x", [1, 2, 5, 5]), g.weight(3, 2, 3, 3), pads=[1, 1, 1, 1], out="c")
    cond = g.input("cond", [], elem=TensorProto.BOOL)
    out_vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 5, 5])  # noqa: E731
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


# --- 9. model-local functions -------------------------------------------------------------


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


def test_x_tanh_x_is_not_called_gelu() -> None:
    """Mul(x, Tanh(x)) is a gated activation, but neither GELU nor Mish."""
    g = Graph()
    x = source(g, "input")
    y = g.output(g.op("Mul", x, g.op("Tanh", x)))
    (site,) = find_activations(g.index())
    assert (site.pre, site.post, site.kind) == (x, y, "x·Tanh(x)")


def test_pattern_nodes_include_the_scaling_of_x() -> None:
    """In Mul(Mul(x, 0.5), 1 + Erf(x/√2)) the Mul(x, 0.5) node belongs to the pattern."""
    g = Graph()
    x = source(g, "input")
    gelu_erf_half_first(g, x)
    index = g.index()
    (site,) = find_activations(index)
    half = next(
        i
        for i, n in enumerate(index.nodes)
        if n.op_type == "Mul" and n.input[0] == x and (v := index.const_value(n.input[1])) is not None and v == 0.5
    )
    ops = sorted(index.nodes[i].op_type for i in site.nodes)
    assert half in site.nodes and ops == ["Add", "Erf", "Mul", "Mul", "Mul"]


def test_decomposed_batchnorm_is_a_layer() -> None:
    """Conv → Mul(γ per channel) → Add(β per channel), as tf2onnx writes BatchNorm: the Add output is a layer."""
    g = Graph()
    c = g.op("Conv", g.input("x", [1, 2, 5, 5]), g.weight(3, 2, 3, 3), out="c")
    bn = g.op("Add", g.op("Mul", c, g.weight(1, 3, 1, 1)), g.weight(1, 3, 1, 1), out="bn")
    g.output(g.op("Relu", bn, out="y"))
    plan = plan_taps(g.index(), mode="all")
    assert [(t.tensor, t.op, t.axis) for t in plan.taps] == [
        ("c", "Conv", 1),
        ("bn", "Mul+Add (affine)", 1),
        ("y", "Relu", 1),
    ]


def test_scalar_scale_and_shift_is_not_a_layer() -> None:
    """Mul by a scalar then Add of a scalar is arithmetic, not a learned affine layer."""
    g = Graph()
    x = g.input("x", [2, 4])
    g.output(g.op("Add", g.op("Mul", x, g.const(0.5)), g.const(np.ones(1))))
    assert find_layers(g.index()) == []


def test_dynamo_softplus_threshold_is_part_of_the_activation() -> None:
    """Where(x > 20, x, Softplus(x)) (PyTorch's dynamo exporter): the post-activation is the Where output."""
    g = Graph()
    x = source(g, "gemm")
    sp = g.op("Softplus", x, out="sp")
    y = g.output(g.op("Where", g.op("Greater", x, g.const(20.0)), x, sp, out="y"))
    (site,) = find_activations(g.index())
    assert (site.pre, site.post, site.kind) == (x, y, "Softplus")


def test_structural_rank_bounds_the_real_rank() -> None:
    """The bound from the weights' shapes: informative (below the width) and never below the
    rank of the matrices the model really produces (onnxruntime, 512 random samples)."""
    import onnxruntime as ort

    from onnx_near.matrices import to_rows

    g = Graph()
    x = g.input("x", ["N", 3, 6, 6])
    conv = g.op("Conv", x, g.weight(40, 3, 2, 2), g.weight(40), node_name="conv")  # ≤ 3·2·2 + 1 = 13
    bn = g.op("BatchNormalization", conv, *(g.const(np.abs(g.rng.standard_normal(40)) + 0.5) for _ in range(4)))
    grouped = g.op("Conv", g.op("Relu", bn), g.weight(40, 20, 1, 1), group=2, node_name="grouped")  # ≤ 20·2 = 40
    flat = g.op("Flatten", g.op("GlobalAveragePool", grouped))
    fc = g.op("Gemm", flat, g.weight(50, 40), g.weight(50), transB=1, node_name="fc")  # ≤ 40 + 1
    mm = g.op("Add", g.op("MatMul", g.op("Relu", fc), g.weight(50, 90)), g.weight(90))  # ≤ 51
    ln = g.op("LayerNormalization", mm, g.const(np.ones(90)), g.const(np.zeros(90)))  # ≤ 53
    g.output(ln, ["N", 90])
    model = g.model()
    plan = plan_taps(GraphIndex(model))
    bounds = {t.tensor: t.rank_bound for t in plan.taps}
    assert [bounds[t] for t in (conv, bn, grouped, fc, mm, ln)] == [13, 14, 40, 41, 51, 53]
    assert all(bounds[t] is None for t in bounds if t not in (conv, bn, grouped, fc, mm, ln))  # activations
    for tap in plan.taps:
        model.graph.output.add(name=tap.tensor)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    xs = np.random.default_rng(0).standard_normal((512, 3, 6, 6)).astype(np.float32)
    outs = dict(zip([t.tensor for t in plan.taps], session.run([t.tensor for t in plan.taps], {"x": xs})))
    for tap in plan.taps:
        if tap.rank_bound is not None:
            m = to_rows(outs[tap.tensor].astype(np.float64), tap.axis)
            assert np.linalg.matrix_rank(m, tol=1e-5 * np.abs(m).max() * max(m.shape)) <= tap.rank_bound


def test_structural_rank_needs_the_graphs_feature_axis() -> None:
    """A feature axis set by the user makes a different matrix: no bound is claimed for it."""
    model = mlp(d_in=6, hidden=8)
    plan = plan_taps(GraphIndex(model), axes={"fc1": 0})
    assert [t.rank_bound for t in plan.taps if t.name == "fc1"] == [None]
    assert [t.rank_bound for t in plan_taps(GraphIndex(model)).taps if t.name == "fc1"] == [6]


def test_structural_rank_claims_nothing_after_full_constant_tensors() -> None:
    """A positional-embedding Add or an elementwise Mul by a full constant can raise the rank:
    no bound; nor for a LayerNorm over more than the last axis (its γ is a full tensor)."""
    g = Graph()
    x = g.input("x", ["N", 5, 16])
    mm = g.op("MatMul", x, g.weight(16, 32))  # ≤ 16
    pos = g.op("Add", mm, g.weight(5, 32))  # + a 5×32 constant: could reach 21
    scaled = g.op("Mul", mm, g.weight(5, 32))
    ln = g.op("LayerNormalization", mm, g.weight(5, 32), g.weight(5, 32), axis=-2)
    for t in (pos, scaled, ln):
        g.output(t, ["N", 5, 32])
    index = GraphIndex(g.model())
    from onnx_near.taps import structural_rank

    assert structural_rank(index, mm) == 16
    assert [structural_rank(index, t) for t in (pos, scaled, ln)] == [None, None, None]


@pytest.mark.parametrize("form", ["reciprocal", "div", "mul_square_casts", "one_over"])
def test_rms_norm_pattern_is_a_normalisation_tap(tmp_path: Path, form: str) -> None:
    """RMSNorm as exporters decompose it (Llama: x·Reciprocal(Sqrt(mean(x²) + ε))·γ; T5-style
    Div; x² as Mul(x, x) with Casts around; TorchScript's rsqrt as Div(1, Sqrt(…))): tapped as a normalisation (role pre), its matrix
    the closed form γ·x/√(mean(x²)+ε) of the layer before."""
    from graphs import save

    import onnx_near

    g = Graph(opset=18)  # ReduceMean with its axes as an input
    x_in = g.input("x", ["N", 3, 6], TensorProto.FLOAT)
    w = g.rng.standard_normal((6, 8)).astype(np.float32)
    h = g.op("MatMul", x_in, g.const(w))
    src = g.op("Cast", h, to=TensorProto.FLOAT) if form == "mul_square_casts" else h
    sq = g.op("Mul", src, src) if form == "mul_square_casts" else g.op("Pow", src, g.const(np.float32(2.0)))
    mean = g.op("ReduceMean", sq, g.const(np.array([-1]), dtype=np.int64), keepdims=1)
    root = g.op("Sqrt", g.op("Add", mean, g.const(np.float32(1e-6))))
    if form == "div":
        normed = g.op("Div", src, root)
    elif form == "one_over":
        normed = g.op("Mul", src, g.op("Div", g.const(np.float32(1.0)), root))
    else:
        normed = g.op("Mul", src, g.op("Reciprocal", root))
    gamma = (1.0 + 0.1 * g.rng.standard_normal(8)).astype(np.float32)
    y = g.op("Mul", g.const(gamma), normed)
    g.output(g.op("MatMul", y, g.const(g.rng.standard_normal((8, 4)).astype(np.float32))), ["N", 3, 4])
    model = g.model(infer=False)
    path = save(model, tmp_path / "rms.onnx")
    taps = plan_taps(GraphIndex(onnx.shape_inference.infer_shapes(model)), "all", {}).taps
    assert [t.op for t in taps] == ["MatMul", "RMSNorm", "MatMul"] and taps[1].role == "pre"
    data = np.random.default_rng(2).standard_normal((5, 3, 6)).astype(np.float32)
    r = onnx_near.score(path, data=data, rows="all")
    hh = (data @ w).reshape(-1, 8).astype(np.float64)
    want = gamma * hh / np.sqrt((hh**2).mean(axis=1, keepdims=True) + 1e-6)
    s = np.linalg.svd(want, compute_uv=False)
    p = s / s.sum()
    assert r.layers[1].erank == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-5)


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
