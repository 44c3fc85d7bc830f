"""Activation sites (onnx_near/activations.py, SPEC §2): native activations, Clip as ReLU6, the
exporters' patterns (SiLU, GELU, Mish, HardSwish, checked against reference functions), the
contrib and fused ops; each found as one site with its pre- and post-activation tensors."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
from graphs import (
    MS,
    REFERENCE,
    Graph,
    gelu_erf_half_first,
    gelu_erf_torchscript,
    gelu_tanh_mulmul,
    gelu_tanh_pow,
    gemm_input,
    hardswish,
    mish,
    roles,
    silu_sigmoid_first,
    silu_x_first,
    source,
)
from onnx.reference import ReferenceEvaluator

from onnx_near.activations import find_activations
from onnx_near.layers import find_layers
from onnx_near.taps import plan_taps

# --- 1. native activations ---------------------------------------------------------------

NATIVE: list[tuple[str, int, dict[str, Any], int]] = [
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
def test_native_activation_after_gemm(op: str, opset: int, attrs: dict[str, Any], slope: int) -> None:
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
def test_pattern_graph_computes_its_function(name: str, build: Callable[[Graph, str], str], kind: str, ref: str) -> None:
    """The pattern graphs used below really compute SiLU / GELU / Mish / HardSwish (reference evaluator)."""
    g = Graph()
    x = source(g, "input")
    g.output(build(g, x))
    v = np.linspace(-4, 4, 8, dtype=np.float32).reshape(2, 4)
    outputs = ReferenceEvaluator(g.model()).run(None, {"x": v})
    assert isinstance(outputs, list)  # output_names None: the outputs in order (not by name)
    (got,) = outputs
    np.testing.assert_allclose(got, REFERENCE[ref](v), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("src", ["input", "gemm", "dense"])
@pytest.mark.parametrize("name,build,kind,ref", PATTERNS, ids=PATTERN_IDS)
def test_pattern_is_one_activation(name: str, build: Callable[[Graph, str], str], kind: str, ref: str, src: str) -> None:
    """An exporter pattern is exactly one activation: pre = x (the Add of a dense layer), post = its final output."""
    g = Graph()
    x = source(g, src)
    y = g.output(build(g, x))
    sites = find_activations(g.index())
    assert [(s.pre, s.post) for s in sites] == [(x, y)]
    assert kind in sites[0].kind.lower().replace(" ", "")


@pytest.mark.parametrize("name,build,kind,ref", PATTERNS, ids=PATTERN_IDS)
def test_pattern_inner_tensors_are_not_tapped(name: str, build: Callable[[Graph, str], str], kind: str, ref: str) -> None:
    """In both modes a pattern after a dense layer taps the Add output and the final output only."""
    g = Graph()
    x = source(g, "dense")
    y = g.output(build(g, x))
    index = g.index()
    assert roles(plan_taps(index, mode="all")) == {x: "pre", y: "post"}
    assert roles(plan_taps(index, mode="activations")) == {x: "pre", y: "post"}



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
def test_two_patterns_in_a_row(first: Callable[[Graph, str], str], second: Callable[[Graph, str], str], kinds: list[str]) -> None:
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

CONTRIB: list[tuple[str, int, dict[str, Any]]] = [("Gelu", 0, {}), ("FastGelu", 0, {}), ("BiasGelu", 1, {}), ("QuickGelu", 0, {"alpha": 1.702})]


@pytest.mark.parametrize("op,bias,attrs", CONTRIB, ids=[c[0] for c in CONTRIB])
def test_contrib_activation(op: str, bias: int, attrs: dict[str, Any]) -> None:
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


FUSED: list[tuple[str, Callable[[Graph], tuple[str, ...]], list[int]]] = [
    ("FusedConv", lambda g: (g.input("x", [1, 2, 5, 5]), g.weight(3, 2, 3, 3), g.weight(3)), [1, 3, 3, 3]),
    ("FusedGemm", lambda g: (g.input("x", [2, 5]), g.weight(5, 3), g.weight(3)), [2, 3]),
]


@pytest.mark.parametrize("op,ins,shape", FUSED, ids=[f[0] for f in FUSED])
def test_fused_op_output_tapped_pre_activation_untappable(
    op: str, ins: Callable[[Graph], tuple[str, ...]], shape: list[int]
) -> None:
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
def test_fused_op_output_is_post_activation_in_strict_mode(
    op: str, ins: Callable[[Graph], tuple[str, ...]], shape: list[int]
) -> None:
    """SPEC §2 lists fused ops among activation outputs: mode "activations" taps the fused output as post."""
    g = Graph(domains=[(MS, 1)])
    y = g.output(g.op(op, *ins(g), out="y", domain=MS, activation="Relu"), shape)
    plan = plan_taps(g.index(), mode="activations")
    assert roles(plan) == {y: "post"}
    assert len(plan.untappable) == 1

# --- 5. more gated and thresholded forms -------------------------------------------------


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


def test_dynamo_softplus_threshold_is_part_of_the_activation() -> None:
    """Where(x > 20, x, Softplus(x)) (PyTorch's dynamo exporter): the post-activation is the Where output."""
    g = Graph()
    x = source(g, "gemm")
    sp = g.op("Softplus", x, out="sp")
    y = g.output(g.op("Where", g.op("Greater", x, g.const(20.0)), x, sp, out="y"))
    (site,) = find_activations(g.index())
    assert (site.pre, site.post, site.kind) == (x, y, "Softplus")
