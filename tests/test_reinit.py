"""Weight re-initialisation: fans from each weight's role and shape, and each scheme's law."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from graphs import Graph, mlp
from onnx import numpy_helper

import onnx_near
from onnx_near.graph import GraphIndex
from onnx_near.reinit import SCHEMES, reinitialize, weight_roles


def _weights(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def _layers() -> onnx.ModelProto:
    """Conv(8←4, 3×3) → Gemm(transB=1, 40←128) → MatMul(128→300) + bias, to read fans from."""
    g = Graph()
    c = g.op(
        "Conv", g.input("x", [1, 4, 4, 8]), g.const(np.zeros((8, 4, 3, 3)), "conv_w"), g.const(np.zeros(8), "conv_b")
    )
    f = g.op("Flatten", c)
    h = g.op("Gemm", f, g.const(np.zeros((40, 128)), "gemm_w"), transB=1)
    y = g.op("Add", g.op("MatMul", h, g.const(np.zeros((40, 300)), "mm_w")), g.const(np.zeros(300), "mm_b"))
    g.output(y)
    return g.model(infer=False, check=False)


def test_fans_follow_each_weights_role() -> None:
    """Conv (out, in, k, k), Gemm with transB, MatMul (in, out): fans as torch.nn.init computes them."""
    roles = {r.weight: r for r in weight_roles(GraphIndex(_layers()))}
    assert (roles["conv_w"].fan_in, roles["conv_w"].fan_out, roles["conv_w"].bias) == (36, 72, "conv_b")
    assert (roles["gemm_w"].fan_in, roles["gemm_w"].fan_out) == (128, 40)
    assert (roles["mm_w"].fan_in, roles["mm_w"].fan_out, roles["mm_w"].bias) == (40, 300, "mm_b")


@pytest.mark.parametrize(
    "scheme,kind,scale",
    [
        ("kaiming-normal", "normal", lambda fi, fo: math.sqrt(2 / fi)),
        ("lecun-normal", "normal", lambda fi, fo: math.sqrt(1 / fi)),
        ("xavier-normal", "normal", lambda fi, fo: math.sqrt(2 / (fi + fo))),
        ("kaiming-uniform", "uniform", lambda fi, fo: math.sqrt(6 / fi)),
        ("xavier-uniform", "uniform", lambda fi, fo: math.sqrt(6 / (fi + fo))),
        ("pytorch-default", "uniform", lambda fi, fo: 1 / math.sqrt(fi)),
        ("normal", "normal", lambda fi, fo: 1.0),
        ("uniform", "uniform", lambda fi, fo: 1.0),
    ],
)
def test_scheme_draws_from_its_law(scheme: str, kind: str, scale: object) -> None:
    """The MatMul weight (12,000 values) has the scheme's std (normal) or bound (uniform)."""
    w = _weights(reinitialize(_layers(), scheme, np.random.default_rng(0)))["mm_w"]
    target = scale(40, 300)  # type: ignore[operator]
    if kind == "normal":
        assert w.std() == pytest.approx(target, rel=0.03) and abs(w.mean()) < 0.05 * target
    else:
        assert np.abs(w).max() <= target * (1 + 1e-6) and np.abs(w).max() > 0.99 * target
        assert w.std() == pytest.approx(target / math.sqrt(3), rel=0.03)


def test_orthogonal_rows_or_columns() -> None:
    """Orthogonal: the (out × in) view has orthonormal rows (out ≤ in) or columns (out > in)."""
    w = _weights(reinitialize(_layers(), "orthogonal", np.random.default_rng(1)))
    conv = w["conv_w"].reshape(8, 36)
    np.testing.assert_allclose(conv @ conv.T, np.eye(8), atol=1e-5)
    mm = w["mm_w"].T  # MatMul stores (in, out): the (out × in) view is its transpose, 300 × 40
    np.testing.assert_allclose(mm.T @ mm, np.eye(40), atol=1e-5)


def test_biases_zero_except_pytorch_default() -> None:
    """Biases are zero for the named schemes, U(±1/√fan_in) for pytorch-default."""
    zero = _weights(reinitialize(_layers(), "xavier-uniform", np.random.default_rng(2)))
    assert not zero["conv_b"].any() and not zero["mm_b"].any()
    torch_like = _weights(reinitialize(_layers(), "pytorch-default", np.random.default_rng(2)))
    assert 0 < np.abs(torch_like["mm_b"]).max() <= 1 / math.sqrt(40)


def test_every_scheme_runs_and_reinit_repetitions_differ(tmp_path: object) -> None:
    """score(reinit=…) re-draws weights each repetition: the repetitions differ, the seed repeats them."""
    from pathlib import Path

    path = Path(str(tmp_path)) / "m.onnx"
    onnx.save(mlp(hidden=32), str(path))
    for scheme in SCHEMES:
        r = onnx_near.score(path, reinit=scheme, repetitions=3, seed=0)
        assert len(set(r.scores)) == 3, scheme
        assert onnx_near.score(path, reinit=scheme, repetitions=3, seed=0).scores == r.scores


def _in_constant_nodes(m: onnx.ModelProto) -> onnx.ModelProto:
    """``m`` with every initializer moved into a Constant node (as Paddle and OpenVINO
    conversions keep their weights), the Conv weight behind a Cast from float16."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    nodes = []
    for t in out.graph.initializer:
        if t.name == "conv_w":
            half = numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), "conv_w_half")
            nodes.append(onnx.helper.make_node("Constant", [], ["conv_w_half"], value=half))
            nodes.append(onnx.helper.make_node("Cast", ["conv_w_half"], ["conv_w"], to=onnx.TensorProto.FLOAT))
        else:
            nodes.append(onnx.helper.make_node("Constant", [], [t.name], value=t))
    del out.graph.initializer[:]
    nodes.extend(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def test_weights_in_constant_nodes_are_redrawn_like_initializers() -> None:
    """A weight is a weight wherever the graph keeps it: the same roles and the same draws
    (same seed) for Constant-held weights as for initializers, written back into the nodes."""
    plain, held = _layers(), _in_constant_nodes(_layers())
    roles = [(r.fan_in, r.fan_out, r.transposed, r.bias) for r in weight_roles(GraphIndex(held))]
    assert roles == [(r.fan_in, r.fan_out, r.transposed, r.bias) for r in weight_roles(GraphIndex(plain))]
    a = _weights(reinitialize(plain, "xavier-normal", np.random.default_rng(3)))
    redrawn = reinitialize(held, "xavier-normal", np.random.default_rng(3))
    values = {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in redrawn.graph.node if n.op_type == "Constant"
    }
    assert values["conv_w_half"].dtype == np.float16
    np.testing.assert_allclose(values["conv_w_half"], a["conv_w"].astype(np.float16))
    for name in ("gemm_w", "mm_w", "mm_b", "conv_b"):
        np.testing.assert_array_equal(values[name], a[name])
    assert not np.all(values["gemm_w"] == 0)
