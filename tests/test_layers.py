"""Weighted layers (onnx_near/layers.py, SPEC §2): which ops and patterns are layers (Conv, Gemm,
MatMul with a constant operand and its bias Add, the normalisations, a decomposed BatchNorm,
RMSNorm), and the structural rank that bounds each layer's matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import pytest
from graphs import Graph, mlp, roles, silu_x_first, source
from onnx import TensorProto

from onnx_near.graph import GraphIndex
from onnx_near.layers import find_layers
from onnx_near.taps import plan_taps

# --- weighted ops -------------------------------------------------------------------------

LAYERS: list[tuple[str, int, list[int], Callable[[Graph], list[str]], dict[str, Any], list[int]]] = [
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
def test_weighted_layer(
    op: str,
    opset: int,
    shape: list[int],
    weights: Callable[[Graph], list[str]],
    attrs: dict[str, Any],
    out_shape: list[int],
) -> None:
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


def test_dense_layer_tap_is_the_bias_add() -> None:
    """For MatMul → Add(bias) → SiLU, the layer is the Add output, not the MatMul output."""
    g = Graph()
    x = source(g, "dense")
    g.output(silu_x_first(g, x))
    index = g.index()
    assert [s.tensor for s in find_layers(index)] == ["x"]
    assert "mm" not in roles(plan_taps(index, mode="all"))


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


# --- structural ranks ---------------------------------------------------------------------


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
    from onnx_near.layers import structural_rank

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
