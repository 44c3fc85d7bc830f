"""Quantised models (issue #12 item 4): scored on the float values their integers stand for.

Unit tests build graphs of a few nodes in code; the end-to-end tests quantise the shipped
float models at test time with ``onnxruntime.quantization`` (static QDQ and QOperator,
calibrated on the models' own inputs; dynamic) and compare each with its float original.
Oracles: the float model's per-layer effective ranks (all rows), and onnxruntime's integer
outputs dequantised in numpy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from onnx_near import describe, score
from onnx_near.config import ScoreConfig
from onnx_near.dequantise import float_view
from onnx_near.erank import effective_rank
from onnx_near.graph import GraphIndex
from onnx_near.load import load_model
from onnx_near.rewrite import analyse
from onnx_near.vet import vet

MODELS = Path(__file__).resolve().parent.parent / "models"
CASES = {  # float model, its inputs
    "cnn": (MODELS / "cnn.onnx", MODELS / "cnn.inputs.npz"),
    "mlp": (MODELS / "mlp.onnx", MODELS / "mlp.inputs.npz"),
    "transformer": (MODELS / "transformer.onnx", MODELS / "transformer.inputs.npz"),
    "healthy": (MODELS / "vet" / "healthy.onnx", MODELS / "vet" / "inputs.npy"),
}
FORMATS = ("qdq", "qoperator", "dynamic")
# Measured with rows="all": the largest per-layer |erank(int8) − erank(float)| / erank(float)
# over these models and formats is 8.7 % (the first QGemm of models/vet/healthy.onnx, QOperator:
# 16 inputs bound the float layer's rank to 17; its rounded 64-wide output goes above it); the
# QDQ and dynamic models stay within 3.8 %.
TOLERANCE = 0.10


def _feeds(data: Path) -> dict[str, np.ndarray]:
    if data.suffix == ".npy":
        return {"input": np.load(data)}
    with np.load(data) as z:
        return {k: z[k] for k in z.files}


class _Reader(CalibrationDataReader):  # type: ignore[misc]
    """The model's inputs in batches of 32, for the static quantiser's calibration."""

    def __init__(self, feeds: dict[str, np.ndarray]) -> None:
        n = len(next(iter(feeds.values())))
        self.batches = iter([{k: v[i : i + 32] for k, v in feeds.items()} for i in range(0, n, 32)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def _quantise(src: Path, data: Path, fmt: str, dst: Path, **options: object) -> Path:
    if fmt == "dynamic":
        quantize_dynamic(str(src), str(dst), **options)
    else:
        q = QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator
        quantize_static(str(src), str(dst), _Reader(_feeds(data)), quant_format=q, **options)
    return dst


@pytest.fixture(scope="module")
def int8(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """``int8(case, format)``: the case's float model quantised in that format (made once)."""
    folder = tmp_path_factory.mktemp("int8")
    made: dict[tuple[str, str], Path] = {}

    def make(case: str, fmt: str) -> Path:
        if (case, fmt) not in made:
            src, data = CASES[case]
            made[case, fmt] = _quantise(src, data, fmt, folder / f"{case}.{fmt}.onnx")
        return made[case, fmt]

    return make


# --- end to end: the shipped models, quantised by onnxruntime ----------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_weighted_layer_has_a_float_tap(int8: Callable[[str, str], Path], case: str, fmt: str) -> None:
    """Every weighted layer of the float model has a tap in the quantised one (its output, or
    for a ReLU the quantiser folded into a QOperator layer's range, its activation), and no
    quantised layer is listed as not scored."""
    src, _ = CASES[case]
    float_layers = [t for t in describe(src).layers if "pre" in t.role]
    q = describe(int8(case, fmt))
    layers = [t for t in q.layers if "pre" in t.role or "+Relu (folded" in t.op]
    assert len(layers) == len(float_layers)
    assert not [s for s in q.skipped if "integer output is not scored" in s.reason]
    if fmt == "qoperator":
        assert all("dequantised" in t.op for t in layers if "Normalization" not in t.op)
    assert q.params == describe(src).params  # the quantised weights stand for the float ones


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantised_macs_are_the_float_models(int8: Callable[[str, str], Path], fmt: str) -> None:
    """MACs of QLinearConv, QGemm, ConvInteger, MatMulInteger… as the float layers they stand for."""
    from onnx_near.cost import count_macs

    src, _ = CASES["cnn"]
    shapes = {"input": (3, 16, 16)}
    want = count_macs(onnx.load(str(src)), shapes)
    assert want and count_macs(onnx.load(str(int8("cnn", fmt))), shapes) == want


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_vet_against_the_float_model_passes_and_eranks_stay_close(
    int8: Callable[[str, str], Path], case: str, fmt: str
) -> None:
    """Healthy 8-bit quantisation passes ``vet --baseline float.onnx``; every tap of the
    quantised model is matched with a float tap of the same kind, and its erank (all rows) is
    within :data:`TOLERANCE` of the float one."""
    src, data = CASES[case]
    r = vet(int8(case, fmt), data=data, config=ScoreConfig(rows="all"), baseline=src)
    assert r.passed, r.findings
    assert all(v.baseline_erank is not None for v in r.layers)
    for v in r.layers:
        assert v.baseline_erank is not None
        assert abs(v.erank - v.baseline_erank) <= TOLERANCE * v.baseline_erank, (v.name, v.erank, v.baseline_erank)
    if fmt != "qoperator":  # QOperator folds ReLUs into layers: one tap fewer per folded ReLU
        f = score(src, data=data, rows="all", batchnorm="running")  # vet scores with running statistics
        assert [t.role for t in r.report.layers] == [t.role for t in f.layers]
        assert r.report.score == pytest.approx(f.score, rel=0.01)


def _corrupt(src: Path, dst: Path, weight: str, how: str) -> Path:
    """``src`` with one layer's quantised weight set to its zero point ("zero": the layer's
    output is its bias alone) or its weight scale made 1000 times smaller ("scale")."""
    m = onnx.load(str(src))
    inits = {t.name: t for t in m.graph.initializer}
    if how == "zero":
        w = inits[weight + "_quantized"]
        zp = numpy_helper.to_array(inits[weight + "_zero_point"])
        a = numpy_helper.to_array(w)
        zp = zp.reshape(zp.shape + (1,) * (a.ndim - zp.ndim)) if zp.ndim else zp
        w.CopyFrom(numpy_helper.from_array(np.broadcast_to(zp, a.shape).astype(a.dtype).copy(), w.name))
    else:
        s = inits[weight + "_scale"]
        s.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(s) / 1000).astype(np.float32), s.name))
    onnx.save(m, str(dst))
    return dst


@pytest.mark.parametrize("how", ["zero", "scale"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("case", "weight", "layer"),
    [("healthy", "fc2.weight", "fc2"), ("cnn", "features.3.weight", "/features/features.3/Conv")],
)
def test_vet_catches_a_corrupted_layer_at_that_layer(
    int8: Callable[[str, str], Path], tmp_path: Path, case: str, weight: str, layer: str, fmt: str, how: str
) -> None:
    """A layer whose quantised weight is zeroed, or whose weight scale is 1000 times too
    small, fails vet against the float model, first at that layer: its erank dropped."""
    src, data = CASES[case]
    bad = _corrupt(int8(case, fmt), tmp_path / "bad.onnx", weight, how)
    r = vet(bad, data=data, baseline=src)
    assert not r.passed
    first = next(v for v in r.layers if v.problems)
    assert first.name.startswith(layer), r.findings
    assert "dropped" in {p.rule for p in first.problems}


@pytest.mark.parametrize("case", ["cnn", "mlp", "transformer"])
def test_dequantised_taps_are_onnxruntimes_dequantisation(int8: Callable[[str, str], Path], case: str) -> None:
    """Oracle: each dequantised tap of a QOperator model holds, bit for bit, its integer
    output as onnxruntime computes it, dequantised in numpy with the op's output scale and
    zero point; and its erank (all rows) is that of the numpy values."""
    path = int8(case, "qoperator")
    model, _, plan = analyse(load_model(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    taps = [t for t in plan.taps if "(dequantised" in t.op and producer[t.tensor].op_type == "DequantizeLinear"]
    assert taps
    added = [t for t in taps if t.tensor.startswith("onnx_near::")]
    assert added or case == "cnn"  # the others have layers whose output no DequantizeLinear of the graph held
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    integers = [producer[t.tensor].input[0] for t in taps]
    for name in [t.tensor for t in taps] + integers:
        if name not in {o.name for o in exposed.graph.output}:
            exposed.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    _, data = CASES[case]
    names = [t.tensor for t in taps] + integers
    got = dict(zip(names, session.run(names, _feeds(data))))
    report = score(path, data=data, rows="all", batchnorm="running")  # what onnxruntime runs
    eranks = {layer.tensor: layer.erank for layer in report.layers}
    for t, q in zip(taps, integers):
        dq = producer[t.tensor]
        scale, zero = inits[dq.input[1]], inits[dq.input[2]]
        expected = ((got[q].astype(np.int32) - zero.astype(np.int32)).astype(np.float32) * scale).astype(np.float32)
        np.testing.assert_array_equal(got[t.tensor], expected)
        matrix = np.moveaxis(expected, t.axis, -1).reshape(-1, expected.shape[t.axis])
        assert eranks[t.tensor] == pytest.approx(effective_rank(matrix.astype(np.float64)), rel=1e-9, abs=1e-9)


def test_uint8_activations_and_per_channel_weights(tmp_path: Path) -> None:
    """uint8 activations (a folded ReLU's zero point is 0) and per-channel weight scales
    are read the same way."""
    src, data = CASES["mlp"]
    for fmt in ("qdq", "qoperator"):
        path = _quantise(src, data, fmt, tmp_path / f"{fmt}.onnx", activation_type=QuantType.QUInt8, per_channel=True)
        r = vet(path, data=data, config=ScoreConfig(rows="all"), baseline=src)
        assert r.passed, r.findings
        assert any("Relu (folded" in v.op or "+Relu (folded" in v.op for v in r.layers)
        assert all(v.baseline_erank is not None for v in r.layers)


# --- unit tests: graphs of a few nodes ---------------------------------------------------------


def _const(name: str, value: np.ndarray | np.generic) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _save(tmp_path: Path, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], out: str, c: int = 4) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return path


def _qlinearconv_chain(tmp_path: Path, zero_point: int) -> Path:
    """x → QuantizeLinear → QLinearConv (output zero point ``zero_point``) → QLinearConv →
    DequantizeLinear → y: the first conv's output has no DequantizeLinear, the second's has."""
    rng = np.random.default_rng(0)
    inits = [
        _const("xs", np.float32(0.02)),
        _const("xz", np.int8(0)),
        _const("w1", rng.integers(-100, 100, (4, 3, 3, 3), dtype=np.int8)),
        _const("w2", rng.integers(-100, 100, (4, 4, 1, 1), dtype=np.int8)),
        _const("ws", np.float32(0.01)),
        _const("wz", np.int8(0)),
        _const("ys1", np.float32(0.05)),
        _const("yz1", np.int8(zero_point)),
        _const("ys2", np.float32(0.05)),
        _const("yz2", np.int8(0)),
        _const("b1", rng.integers(-50, 50, 4, dtype=np.int32)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="quant"),
        helper.make_node(
            "QLinearConv", ["xq", "xs", "xz", "w1", "ws", "wz", "ys1", "yz1", "b1"], ["y1"], name="conv1", pads=[1] * 4
        ),
        helper.make_node("QLinearConv", ["y1", "ys1", "yz1", "w2", "ws", "wz", "ys2", "yz2"], ["y2"], name="conv2"),
        helper.make_node("DequantizeLinear", ["y2", "ys2", "yz2"], ["y"], name="dequant"),
    ]
    return _save(tmp_path, nodes, inits, "y")


def test_qlinearconv_outputs_are_dequantised_taps(tmp_path: Path) -> None:
    """A QLinearConv's tap is its output dequantised with its own scale and zero point: a
    DequantizeLinear is added where the graph has none (conv1), the graph's own is tapped
    where it has one (conv2); neither has a rank bound (rounding breaks the weights' bound)."""
    path = _qlinearconv_chain(tmp_path, zero_point=3)
    model, _, plan = analyse(load_model(path))
    assert [(t.name, t.op, t.role, t.axis) for t in plan.taps] == [
        ("conv1", "QLinearConv (dequantised)", "pre", 1),
        ("conv2", "QLinearConv (dequantised)", "pre", 1),
    ]
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    assert list(dq[plan.taps[0].tensor].input) == ["y1", "ys1", "yz1"]
    assert plan.taps[1].tensor == "y"
    assert all(t.rank_bound is None for t in plan.taps)
    assert not plan.untappable
    r = score(path, data=np.random.default_rng(1).standard_normal((4, 3, 6, 6)).astype(np.float32), rows="all")
    assert all(layer.erank > 1 for layer in r.layers)


def test_relu_folded_into_a_qlinearconv_range_is_its_post_activation(tmp_path: Path) -> None:
    """An output zero point at the integer type's minimum is a ReLU the quantiser folded
    into the range: the dequantised output is tapped as the post-activation, and the hidden
    pre-activation is said."""
    plan = analyse(load_model(_qlinearconv_chain(tmp_path, zero_point=-128)))[2]
    assert [(t.op, t.role) for t in plan.taps] == [
        ("QLinearConv+Relu (folded, dequantised)", "post"),
        ("QLinearConv (dequantised)", "pre"),
    ]
    assert [(u.where, u.op) for u in plan.untappable] == [("conv1", "QLinearConv")]
    assert "pre-activation exists in no tensor" in plan.untappable[0].reason


def _qdq_conv(tmp_path: Path, zero_point: int, relu: bool) -> Path:
    """x → Q/DQ → Conv (weights DequantizeLinear(w_q)) → c → Q(zero point) → DQ → [Relu]."""
    rng = np.random.default_rng(0)
    inits = [
        _const("xs", np.float32(0.02)),
        _const("xz", np.int8(0)),
        _const("wq", rng.integers(-100, 100, (4, 3, 3, 3), dtype=np.int8)),
        _const("ws", np.float32(0.01)),
        _const("wz", np.int8(0)),
        _const("cs", np.float32(0.05)),
        _const("cz", np.int8(zero_point)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"]),
        helper.make_node("Conv", ["xd", "w"], ["c"], name="conv"),
        helper.make_node("QuantizeLinear", ["c", "cs", "cz"], ["cq"], name="c_QuantizeLinear"),
        helper.make_node("DequantizeLinear", ["cq", "cs", "cz"], ["cd"], name="c_DequantizeLinear"),
    ]
    if relu:
        nodes.append(helper.make_node("Relu", ["cd"], ["r"], name="relu"))
    return _save(tmp_path, nodes, inits, "r" if relu else "cd")


def test_qdq_layer_is_tapped_once_on_its_float_output(tmp_path: Path) -> None:
    """In a QDQ graph the Conv's own float output is its tap, once (the DequantizeLinear after
    its QuantizeLinear holds the same values rounded); its weights held as initializer →
    DequantizeLinear are weights (the rank bound is the float Conv's: 3·3·3 = 27)."""
    plan = analyse(load_model(_qdq_conv(tmp_path, zero_point=5, relu=True)))[2]
    assert [(t.name, t.op, t.role, t.tensor) for t in plan.taps] == [
        ("conv", "Conv", "pre", "c"),
        ("relu", "Relu", "post", "r"),
    ]
    assert plan.taps[0].rank_bound == 27


def test_qdq_relu_folded_into_a_quantizelinear_range(tmp_path: Path) -> None:
    """A layer's QuantizeLinear whose range starts at its zero point stands for the ReLU the
    quantiser removed: its DequantizeLinear's output is tapped as the post-activation."""
    plan = analyse(load_model(_qdq_conv(tmp_path, zero_point=-128, relu=False)))[2]
    assert [(t.name, t.op, t.role, t.tensor) for t in plan.taps] == [
        ("conv", "Conv", "pre", "c"),
        ("c_QuantizeLinear", "Relu (folded into QuantizeLinear)", "post", "cd"),
    ]


def test_an_integer_product_not_scaled_back_stays_unscored(tmp_path: Path) -> None:
    """A ConvInteger whose int32 output is not Cast and scaled back to float has no float
    value to tap: it is listed as a quantised layer not scored."""
    rng = np.random.default_rng(0)
    inits = [_const("wq", rng.integers(0, 255, (4, 3, 3, 3), dtype=np.uint8)), _const("s", np.float32(0.1))]
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node("ConvInteger", ["xq", "wq"], ["c"], name="conv"),
        helper.make_node("Cast", ["c"], ["cf"], to=TensorProto.FLOAT),
        helper.make_node("Relu", ["cf"], ["r"], name="relu"),
    ]
    plan = analyse(load_model(_save(tmp_path, nodes, inits, "r")))[2]
    assert [t.name for t in plan.taps] == ["relu"]
    assert [(u.where, u.op) for u in plan.untappable] == [("conv", "ConvInteger")]


def test_float_and_weight_only_models_are_left_as_they_are(tmp_path: Path) -> None:
    """A float model, or one whose weights alone are quantised (DequantizeLinear of
    initializers), has no float view: its taps are found on the graph itself."""
    assert float_view(GraphIndex(onnx.load(str(CASES["cnn"][0])))) is None
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"]),
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
    ]
    inits = [
        _const("wq", np.ones((4, 3, 1, 1), dtype=np.int8)),
        _const("ws", np.float32(0.1)),
        _const("wz", np.int8(0)),
    ]
    assert float_view(GraphIndex(onnx.load(str(_save(tmp_path, nodes, inits, "c"))))) is None


def test_rank_bounds_hold_only_for_unrounded_values(int8: Callable[[str, str], Path]) -> None:
    """The weights' rank bound holds for a QDQ layer's float output and the BatchNorm after
    it, not for a dequantised QLinearConv output nor the BatchNorm reading it."""
    qdq = analyse(load_model(int8("cnn", "qdq")))[2]
    qop = analyse(load_model(int8("cnn", "qoperator")))[2]
    floats = analyse(load_model(CASES["cnn"][0]))[2]
    bounds = [t.rank_bound for t in floats.taps if t.op in ("Conv", "BatchNormalization")]
    assert [t.rank_bound for t in qdq.taps if t.op in ("Conv", "BatchNormalization")] == bounds
    assert all(b is not None for b in bounds)
    assert [t.rank_bound for t in qop.taps if "Conv" in t.op or t.op == "BatchNormalization"] == [None] * 4


def test_readme_example_is_real_output(int8: Callable[[str, str], Path]) -> None:
    """docs/vet.md's `vet healthy.int8.onnx --baseline models/vet/healthy.onnx` table shows what
    vet gives for the healthy fixture quantised in QOperator format (square rows, seed 0)."""
    text = (MODELS.parent / "docs" / "vet.md").read_text()
    block = text.split("$ onnx-near vet healthy.int8.onnx", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if line.strip()]
    head = next(line for line in lines if line.startswith("#"))
    starts = {m.group(): m.start() for m in re.finditer(r"\S+", head)}
    ends = [*list(starts.values())[1:], None]
    rows = [
        {name: line[a:b].strip() for (name, a), b in zip(starts.items(), ends)} for line in lines if line[:1].isdigit()
    ]
    src, data = CASES["healthy"]
    r = vet(int8("healthy", "qoperator"), data=data, baseline=src)
    assert r.passed and "PASSED" in block
    assert len(rows) == len(r.layers)
    for cells, v in zip(rows, r.layers):
        assert (cells["layer"], cells["op"]) == (v.name, v.op)
        assert float(cells["erank"]) == pytest.approx(v.erank, abs=1e-4)
        assert float(cells["baseline"]) == pytest.approx(v.baseline_erank, abs=1e-4)
