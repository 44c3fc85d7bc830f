"""The de-fuse pass: onnxruntime's fused ops become the standard ops they stand for.

Oracle: onnxruntime runs its own fused kernel on the original graph and the standard ops
on the rewritten one; the outputs must agree, and the rewritten graph must expose the
pre-activation as a tap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from graphs import MS, Graph, save

import onnx_near
from onnx_near.defuse import defuse_contrib_ops
from onnx_near.graph import GraphIndex, attribute
from onnx_near.taps import TapPlan, plan_taps


def _run(m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(s.run(None, feeds))


def _check(g: Graph, feeds: dict[str, np.ndarray], fused_op: str) -> tuple[onnx.ModelProto, GraphIndex]:
    """Split ``g``; no ``fused_op`` node with more than one input may remain; outputs must agree."""
    fused = g.model(infer=False, check=False)
    split = defuse_contrib_ops(fused)
    assert all(n.op_type != fused_op or len([i for i in n.input if i]) == 1 for n in split.graph.node)
    for a, b in zip(_run(fused, feeds), _run(split, feeds)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    return split, GraphIndex(onnx.shape_inference.infer_shapes(split))


@pytest.mark.parametrize(
    "activation,params,expect",
    [
        ("Relu", [], "Relu"),
        ("LeakyRelu", [0.2], "LeakyRelu"),
        ("Clip", [0.0, 6.0], "ReLU6 (Clip)"),
        ("Sigmoid", [], "Sigmoid"),
    ],
)
def test_fused_conv_splits_into_conv_and_activation(activation: str, params: list[float], expect: str) -> None:
    """FusedConv(activation=A) → Conv → A; the conv output is a pre tap again."""
    g = Graph(domains=[(MS, 1)])
    x = g.input("x", [2, 3, 6, 6])
    attrs: dict[str, Any] = {"activation": activation, "kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    if params:
        attrs["activation_params"] = params
    g.output(g.op("FusedConv", x, g.weight(4, 3, 3, 3), g.weight(4), out="y", domain=MS, **attrs), [2, 4, 6, 6])
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)}
    _, index = _check(g, feeds, "FusedConv")
    plan = plan_taps(index, "all")
    assert [(t.op, t.role) for t in plan.taps] == [("Conv", "pre"), (expect, "post")]
    assert plan.untappable == ()


def test_fused_conv_with_residual_sum() -> None:
    """FusedConv(x, W, B, Z) computes act(conv(x) + Z): the Add is restored between them."""
    g = Graph(domains=[(MS, 1)])
    x = g.input("x", [1, 2, 5, 5])
    z = g.input("z", [1, 2, 5, 5])
    g.output(
        g.op(
            "FusedConv",
            x,
            g.weight(2, 2, 3, 3),
            g.weight(2),
            z,
            out="y",
            domain=MS,
            activation="Relu",
            pads=[1, 1, 1, 1],
        ),
        [1, 2, 5, 5],
    )
    rng = np.random.default_rng(1)
    feeds = {k: rng.standard_normal((1, 2, 5, 5)).astype(np.float32) for k in ("x", "z")}
    split, _ = _check(g, feeds, "FusedConv")
    assert [n.op_type for n in split.graph.node] == ["Conv", "Add", "Relu"]


def test_fused_gemm_splits_into_gemm_and_activation() -> None:
    """FusedGemm(activation=LeakyRelu) keeps its transB and slope."""
    g = Graph(domains=[(MS, 1)])
    x = g.input("x", [4, 5])
    y = g.op(
        "FusedGemm",
        x,
        g.weight(3, 5),
        g.weight(3),
        out="y",
        domain=MS,
        activation="LeakyRelu",
        activation_alpha=0.3,
        transB=1,
    )
    g.output(y, [4, 3])
    feeds = {"x": np.random.default_rng(2).standard_normal((4, 5)).astype(np.float32)}
    _, index = _check(g, feeds, "FusedGemm")
    assert [(t.op, t.role) for t in plan_taps(index, "all").taps] == [("Gemm", "pre"), ("LeakyRelu", "post")]


@pytest.mark.parametrize("op", ["BiasGelu", "FastGelu"])
def test_bias_gelu_restores_the_biased_layer_output(op: str) -> None:
    """MatMul → BiasGelu(·, b) becomes MatMul → Add(b) → Gelu: the dense layer's output is a tap."""
    g = Graph(domains=[(MS, 1)])
    x = g.input("x", [2, 3, 4])
    mm = g.op("MatMul", x, g.weight(4, 6))
    g.output(g.op(op, mm, g.weight(6), out="y", domain=MS), [2, 3, 6])
    feeds = {"x": np.random.default_rng(3).standard_normal((2, 3, 4)).astype(np.float32)}
    _, index = _check(g, feeds, op)
    taps = plan_taps(index, "all").taps
    assert [(t.op, t.role) for t in taps] == [
        ("MatMul+Add", "pre"),
        (f"{'Gelu' if op == 'BiasGelu' else 'FastGelu'} ({MS})", "post"),
    ]


def test_skip_layer_norm_restores_the_dense_output_and_the_residual() -> None:
    """SkipLayerNormalization(x, skip, γ, β, bias) = LayerNorm(x + skip + bias), its sum output kept."""
    g = Graph(domains=[(MS, 1)])
    x = g.input("x", [2, 3, 4])
    h = g.input("h", [2, 3, 4])
    mm = g.op("MatMul", h, g.weight(4, 4))
    g.nodes.append(
        onnx.helper.make_node(
            "SkipLayerNormalization",
            [x, mm, g.weight(4), g.weight(4), g.weight(4)],
            ["y", "", "", "s"],
            domain=MS,
            epsilon=1e-5,
        )
    )
    g.output("y", [2, 3, 4])
    g.output("s", [2, 3, 4])
    rng = np.random.default_rng(4)
    feeds = {k: rng.standard_normal((2, 3, 4)).astype(np.float32) for k in ("x", "h")}
    _, index = _check(g, feeds, "SkipLayerNormalization")
    assert [(t.op, t.role) for t in plan_taps(index, "all").taps] == [
        ("MatMul+Add", "pre"),
        ("LayerNormalization", "pre"),
    ]


UNSPLIT: list[tuple[str, dict[str, Any]]] = [
    ("FusedConv", {"activation": "Softsign"}),  # not an activation onnxruntime's FusedConv runs
    ("FusedConv", {"activation": "Clip", "activation_params": [0.0]}),  # Clip needs its two bounds
    ("FusedGemm", {"activation": "Celu", "activation_alpha": 1.0}),  # not one its FusedGemm runs
    ("FusedGemm", {"activation": "ScaledTanh"}),  # its alpha and beta have no default
]


@pytest.mark.parametrize("op,attrs", UNSPLIT, ids=[f"{o}-{a['activation']}" for o, a in UNSPLIT])
def test_unknown_fused_activation_is_left_alone(op: str, attrs: dict[str, Any]) -> None:
    """A fused activation the pass cannot split stays fused, and is reported untappable."""
    g = Graph(domains=[(MS, 1)])
    if op == "FusedConv":
        x, w, shape = g.input("x", [1, 1, 3, 3]), g.weight(1, 1, 1, 1), [1, 1, 3, 3]
    else:
        x, w, shape = g.input("x", [2, 3]), g.weight(3, 4), [2, 4]
    g.output(g.op(op, x, w, out="y", domain=MS, **attrs), shape)
    m = g.model(infer=False, check=False)
    assert [n.op_type for n in defuse_contrib_ops(m).graph.node] == [op]
    untappable = plan_taps(GraphIndex(m), "all").untappable
    assert len(untappable) == 1 and "pre-activation" in untappable[0].reason


# --- every activation onnxruntime fuses into FusedConv / FusedGemm ------------------------------
# The oracle: the unfused graph is built here and onnxruntime fuses it itself (ORT_ENABLE_EXTENDED,
# the optimised graph saved); the pass splits that saved graph.  Its outputs and pre-activation must
# equal the unfused graph's run with every optimisation off, its taps those of the unfused graph,
# and the score of the fused file that of the unfused file.

FLT_MAX = float(np.finfo(np.float32).max)
NO_CLIP: tuple[float | None, ...] = ()

# (layer, activation, its attributes, opset, Clip's (min, max) inputs)
ORT_FUSED = [
    ("Conv", "Relu", {}, 17, NO_CLIP),
    ("Conv", "Sigmoid", {}, 17, NO_CLIP),
    ("Conv", "Tanh", {}, 17, NO_CLIP),
    ("Conv", "LeakyRelu", {}, 17, NO_CLIP),
    ("Conv", "LeakyRelu", {"alpha": 0.3}, 17, NO_CLIP),
    ("Conv", "HardSigmoid", {}, 17, NO_CLIP),
    ("Conv", "HardSigmoid", {"alpha": 0.3, "beta": 0.4}, 17, NO_CLIP),
    ("Conv", "Clip", {}, 17, (0.0, 6.0)),
    ("Conv", "Clip", {}, 17, (-1.0,)),
    ("Conv", "Clip", {}, 17, (None, 0.5)),
    ("Conv", "Clip", {}, 17, NO_CLIP),
    ("Conv", "Clip", {"min": -1.0, "max": 2.0}, 9, NO_CLIP),  # Clip-6: bounds as attributes
    ("Gemm", "Relu", {}, 17, NO_CLIP),
    ("Gemm", "Sigmoid", {}, 17, NO_CLIP),
    ("Gemm", "Tanh", {}, 17, NO_CLIP),
    ("Gemm", "LeakyRelu", {}, 17, NO_CLIP),
    ("Gemm", "LeakyRelu", {"alpha": 0.3}, 17, NO_CLIP),
    ("Gemm", "HardSigmoid", {}, 17, NO_CLIP),
    ("Gemm", "HardSigmoid", {"alpha": 0.3, "beta": 0.4}, 17, NO_CLIP),
    ("Gemm", "Elu", {}, 17, NO_CLIP),
    ("Gemm", "Elu", {"alpha": 0.7}, 17, NO_CLIP),
    ("Gemm", "Selu", {}, 17, NO_CLIP),
    ("Gemm", "Selu", {"alpha": 1.5, "gamma": 1.1}, 17, NO_CLIP),
    ("Gemm", "Softplus", {}, 17, NO_CLIP),
    ("Gemm", "Softsign", {}, 17, NO_CLIP),
    ("Gemm", "ThresholdedRelu", {}, 17, NO_CLIP),
    ("Gemm", "ThresholdedRelu", {"alpha": 0.4}, 17, NO_CLIP),
    # the experimental ops of opsets 1-9, which onnxruntime still runs and fuses there
    ("Gemm", "ScaledTanh", {"alpha": 2.0, "beta": 0.5}, 9, NO_CLIP),
    ("Gemm", "ParametricSoftplus", {"alpha": 2.0, "beta": 0.5}, 9, NO_CLIP),
]


def _case_id(case: tuple[str, str, dict[str, float], int, tuple[float | None, ...]]) -> str:
    layer, act, attrs, opset, clip = case
    parts = [layer, act] + [f"{k}={v}" for k, v in attrs.items()] + [f"opset{opset}"]
    return "-".join(parts + ([f"clip{clip}"] if clip else []))


def _layer_then(
    layer: str, act: str, attrs: dict[str, Any], opset: int, clip: tuple[float | None, ...], seed: int = 7
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x → Conv|Gemm → c → act → y (opset ``opset``, IR 10, seeded weights) and seeded feeds."""
    g = Graph(opset=opset, seed=seed)
    if layer == "Conv":
        x, shape = g.input("x", [2, 3, 6, 6]), [2, 4, 6, 6]
        g.op("Conv", x, g.weight(4, 3, 3, 3), g.weight(4), out="c", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    else:
        x, shape = g.input("x", [16, 5]), [16, 3]
        g.op("Gemm", x, g.weight(3, 5), g.weight(3), out="c", transB=1)
    bounds = [g.const(v) if v is not None else "" for v in clip]
    g.output(g.op(act, "c", *bounds, out="y", **attrs), shape)
    dims = (2, 3, 6, 6) if layer == "Conv" else (16, 5)
    feeds = {"x": np.random.default_rng(seed).standard_normal(dims).astype(np.float32)}
    return g.model(infer=False, check=False), feeds


# The experimental ops onnx no longer defines (onnx-near refuses a graph that holds one), written
# with standard ops the way the pass does: alpha · f(beta · x).
EXPERIMENTAL = {"ScaledTanh": "Tanh", "ParametricSoftplus": "Softplus"}


def _spelled_out(layer: str, act: str, attrs: dict[str, float], opset: int, seed: int = 7) -> onnx.ModelProto:
    """:func:`_layer_then` with the experimental ``act`` as Mul(beta) → Tanh|Softplus → Mul(alpha)."""
    g = Graph(opset=opset, seed=seed)
    x = g.input("x", [16, 5])
    c = g.op("Gemm", x, g.weight(3, 5), g.weight(3), out="c", transB=1)
    inner = g.op(EXPERIMENTAL[act], g.op("Mul", c, g.const(attrs["beta"])))
    g.output(g.op("Mul", inner, g.const(attrs["alpha"]), out="y"), [16, 3])
    return g.model(infer=False)


def _ort_optimised(m: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """The graph onnxruntime saves after its extended (fusing) optimisations."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(path)
    ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(path))


def _run_plain(m: onnx.ModelProto, feeds: dict[str, np.ndarray], extra: str) -> list[np.ndarray]:
    """The outputs of ``m`` plus the tensor ``extra``, every onnxruntime optimisation off."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(m)
    exposed.graph.output.append(onnx.helper.make_empty_tensor_value_info(extra))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(exposed.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return list(s.run(None, feeds))


def _taps(m: onnx.ModelProto) -> TapPlan:
    return plan_taps(GraphIndex(onnx.shape_inference.infer_shapes(m)), "all")


@pytest.mark.parametrize("layer,act,attrs,opset,clip", ORT_FUSED, ids=[_case_id(c) for c in ORT_FUSED])
def test_activation_fused_by_onnxruntime_splits_back(
    tmp_path: Path, layer: str, act: str, attrs: dict[str, float], opset: int, clip: tuple[float | None, ...]
) -> None:
    """Conv|Gemm → act, fused by onnxruntime into FusedConv|FusedGemm(activation=act), splits back
    into the layer and the activation: the layer's output is a pre tap again, and the values, the
    taps and the score are those of the unfused graph (for ScaledTanh and ParametricSoftplus, which
    onnx-near does not read, the values are those of onnxruntime's own kernel for them, the taps and
    score those of the same graph written with standard ops)."""
    unfused, feeds = _layer_then(layer, act, attrs, opset, clip)
    fused = _ort_optimised(unfused, tmp_path / "fused.onnx")
    fused_op = f"Fused{layer}"
    assert [(n.op_type, n.domain, _text(attribute(n, "activation", b""))) for n in fused.graph.node] == [
        (fused_op, MS, act)
    ], "onnxruntime no longer fuses this pair: the test's premise is gone"

    split = defuse_contrib_ops(fused)
    assert all(n.domain in ("", "ai.onnx") for n in split.graph.node)  # (a) no fused op is left
    reference = _spelled_out(layer, act, attrs, opset) if act in EXPERIMENTAL else unfused
    plan, want = _taps(split), _taps(reference)
    assert plan.untappable == ()
    pre = [t for t in plan.taps if t.op == layer and "pre" in t.role]
    assert len(pre) == 1 and pre[0].tensor != "y"  # (b) the layer's own output is tapped
    assert [(t.op, t.role) for t in plan.taps] == [(t.op, t.role) for t in want.taps]

    y, c = _run_plain(split, feeds, pre[0].tensor)  # (c) the values of the unfused graph
    want_y, want_c = _run_plain(unfused, feeds, "c")
    np.testing.assert_allclose(c, want_c, rtol=0, atol=1e-6)
    np.testing.assert_allclose(y, want_y, rtol=0, atol=1e-6)

    got = onnx_near.score(tmp_path / "fused.onnx", rows="all", seed=0)  # (d) the unfused file's score
    expected = onnx_near.score(save(reference, tmp_path / "unfused.onnx"), rows="all", seed=0)
    assert [(s.op, s.role) for s in got.layers] == [(s.op, s.role) for s in expected.layers]
    np.testing.assert_allclose([s.erank for s in got.layers], [s.erank for s in expected.layers], rtol=1e-6)
    assert got.score == pytest.approx(expected.score, rel=1e-6)


# Pairs onnxruntime (1.31) leaves unfused, so no FusedConv/FusedGemm in a real file holds them:
# its Conv fusion takes Relu, Sigmoid, Tanh, LeakyRelu, Clip and HardSigmoid only, its Gemm fusion
# no Clip.  Should a later onnxruntime fuse one, this says the tables in defuse.py need it.
ORT_UNFUSED = [
    ("Conv", "Elu"),
    ("Conv", "Selu"),
    ("Conv", "Softplus"),
    ("Conv", "Softsign"),
    ("Conv", "ThresholdedRelu"),
    ("Gemm", "Clip"),
]


@pytest.mark.parametrize("layer,act", ORT_UNFUSED, ids=[f"{a}-{b}" for a, b in ORT_UNFUSED])
def test_pairs_onnxruntime_does_not_fuse(tmp_path: Path, layer: str, act: str) -> None:
    unfused, _ = _layer_then(layer, act, {}, 17, (0.0, 6.0) if act == "Clip" else NO_CLIP)
    fused = _ort_optimised(unfused, tmp_path / "o.onnx")
    assert [n.op_type for n in fused.graph.node] == [layer, act]


def test_fused_conv_silu_splits_into_sigmoid_and_mul() -> None:
    """FusedConv(activation="Silu"), which onnxruntime's newest CPU kernel runs (no fusion in 1.31
    writes it, so it is built by hand): Conv → c, Sigmoid(c) · c, the values of the unfused graph."""
    g = Graph(domains=[(MS, 1)], seed=3)
    x = g.input("x", [2, 3, 6, 6])
    w, b = g.weight(4, 3, 3, 3), g.weight(4)
    g.output(g.op("FusedConv", x, w, b, out="y", domain=MS, activation="Silu", pads=[1, 1, 1, 1]), [2, 4, 6, 6])
    split = defuse_contrib_ops(g.model(infer=False, check=False))
    assert [n.op_type for n in split.graph.node] == ["Conv", "Sigmoid", "Mul"]
    ref = Graph(seed=3)
    ref.input("x", [2, 3, 6, 6])
    c = ref.op("Conv", x, ref.weight(4, 3, 3, 3), ref.weight(4), out="c", pads=[1, 1, 1, 1])
    ref.output(ref.op("Mul", c, ref.op("Sigmoid", c), out="y"), [2, 4, 6, 6])
    feeds = {"x": np.random.default_rng(3).standard_normal((2, 3, 6, 6)).astype(np.float32)}
    pre = split.graph.node[0].output[0]
    for a, e in zip(_run_plain(split, feeds, pre), _run_plain(ref.model(infer=False), feeds, "c")):
        np.testing.assert_allclose(a, e, rtol=0, atol=1e-6)
    assert [(t.op, t.role) for t in _taps(split).taps] == [("Conv", "pre"), ("SiLU", "post")]


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v or "")


# Conv → Add(z) → act, which ConvAddActivationFusion (ORT_ENABLE_ALL, on a CPU without the NCHWc
# layout: NchwcTransformer, which takes precedence on x86-64, is disabled here) fuses into
# FusedConv(x, W, B, z): act(conv + z); None: the Conv and Add alone.
CONV_ADD = [("Relu", {}), ("Tanh", {}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("LeakyRelu", {}), (None, {})]


@pytest.mark.parametrize("act,attrs", CONV_ADD, ids=[str(a) for a, _ in CONV_ADD])
def test_conv_add_activation_fused_by_onnxruntime_splits_back(
    tmp_path: Path, act: str | None, attrs: dict[str, Any]
) -> None:
    g = Graph(seed=5)
    x, z = g.input("x", [2, 3, 6, 6]), g.input("z", [2, 4, 6, 6])
    g.op("Conv", x, g.weight(4, 3, 3, 3), g.weight(4), out="c", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    s = g.op("Add", "c", z, out="s" if act else "y")
    if act:
        g.op(act, s, out="y", **attrs)
    g.output("y", [2, 4, 6, 6])
    unfused = g.model(infer=False)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "fused.onnx")
    ort.InferenceSession(
        unfused.SerializeToString(), so, providers=["CPUExecutionProvider"], disabled_optimizers=["NchwcTransformer"]
    )
    fused = onnx.load(str(tmp_path / "fused.onnx"))
    assert [(n.op_type, list(n.input), _text(attribute(n, "activation", b""))) for n in fused.graph.node] == [
        ("FusedConv", ["x", g.inits[0].name, g.inits[1].name, "z"], act or "")
    ]

    split = defuse_contrib_ops(fused)
    assert [n.op_type for n in split.graph.node] == ["Conv", "Add", act or "Identity"]
    plan = _taps(split)
    assert [(t.op, t.role) for t in plan.taps] == [(t.op, t.role) for t in _taps(unfused).taps]
    assert plan.taps[0].op == "Conv" and plan.untappable == ()
    rng = np.random.default_rng(5)
    feeds = {k: rng.standard_normal(d).astype(np.float32) for k, d in (("x", (2, 3, 6, 6)), ("z", (2, 4, 6, 6)))}
    for a, e in zip(_run_plain(split, feeds, plan.taps[0].tensor), _run_plain(unfused, feeds, "c")):
        np.testing.assert_allclose(a, e, rtol=0, atol=1e-6)
    got = onnx_near.score(tmp_path / "fused.onnx", rows="all", seed=0)
    expected = onnx_near.score(save(unfused, tmp_path / "unfused.onnx"), rows="all", seed=0)
    assert [(s.op, s.role) for s in got.layers] == [(s.op, s.role) for s in expected.layers]
    assert got.score == pytest.approx(expected.score, rel=1e-6)
