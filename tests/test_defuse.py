"""The de-fuse pass: onnxruntime's fused ops become the standard ops they stand for.

Oracle: onnxruntime runs its own fused kernel on the original graph and the standard ops
on the rewritten one; the outputs must agree, and the rewritten graph must expose the
pre-activation as a tap.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from graphs import MS, Graph

from onnx_near.defuse import defuse_contrib_ops
from onnx_near.graph import GraphIndex
from onnx_near.taps import plan_taps


def _run(m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


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
    attrs: dict[str, object] = {"activation": activation, "kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
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


def test_unknown_fused_activation_is_left_alone() -> None:
    """A fused activation the pass does not know stays fused (and is reported untappable)."""
    g = Graph(domains=[(MS, 1)])
    x = g.input("x", [1, 1, 3, 3])
    g.output(g.op("FusedConv", x, g.weight(1, 1, 1, 1), out="y", domain=MS, activation="Softsign"), [1, 1, 3, 3])
    m = g.model(infer=False, check=False)
    assert defuse_contrib_ops(m).graph.node[0].op_type == "FusedConv"
    assert len(plan_taps(GraphIndex(m), "all").untappable) == 1
