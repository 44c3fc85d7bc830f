"""Vetting against a baseline (onnx_near/baseline.py): pairing two graphs' taps, and the
difference of their activations on the same inputs, checked against numpy's forward pass."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_near.baseline import COMPARED_SAMPLES, BaselineTap, divergences, pair_taps
from onnx_near.config import ScoreConfig
from onnx_near.report import LayerScore
from onnx_near.vet import vet, vet_table

CFG = ScoreConfig(threads=1)


def _layer(index: int, name: str, op: str, role: str, erank: float) -> LayerScore:
    return LayerScore(index, name, op, role, name, (8, 8), erank, 0.0, -1)


def test_pairs_taps_by_kind_in_order_names_breaking_ties() -> None:
    """A QOperator graph that folded the first Gemm's ReLU has one tap fewer; the others pair
    with the float taps of their kind, in order, not by position."""
    quantised = (
        _layer(0, "/0/Gemm_quant", "QGemm+Relu (folded, dequantised)", "post", 40.0),
        _layer(1, "/2/Gemm_quant", "QGemm (dequantised)", "pre", 35.0),
        _layer(2, "/3/Mul_quant", "SiLU (dequantised QLinearMul)", "post", 37.0),
        _layer(3, "/4/Gemm_quant", "QGemm (dequantised)", "pre", 7.0),
    )
    base = [
        BaselineTap("/0/Gemm", "Gemm", "pre", 16.0),
        BaselineTap("/1/Relu", "Relu", "post", 41.0),
        BaselineTap("/2/Gemm", "Gemm", "pre", 35.5),
        BaselineTap("/3/Mul", "SiLU", "post", 37.5),
        BaselineTap("/4/Gemm", "Gemm", "pre", 7.5),
    ]
    assert pair_taps(quantised, base) == {0: 1, 1: 2, 2: 3, 3: 4}
    # Same kinds in the same order: paired by position, whatever the names.
    renamed = [BaselineTap(f"n{k}", t.op, t.role, t.erank) for k, t in enumerate(base)]
    floats = tuple(_layer(k, t.name, t.op, t.role, t.erank) for k, t in enumerate(base))
    assert pair_taps(floats, renamed) == {k: k for k in range(len(base))}
    # Where two pairings keep as many pairs, the names decide.
    one = (_layer(0, "b_quant", "QGemm (dequantised)", "pre", 1.0),)
    assert pair_taps(one, [BaselineTap("a", "Gemm", "pre", 2.0), BaselineTap("b", "Gemm", "pre", 3.0)]) == {0: 1}
    assert pair_taps(one, [BaselineTap("a", "Gemm", "pre", 2.0)]) == {0: 0}
    assert pair_taps(one, [BaselineTap("a", "Relu", "post", 2.0)]) == {}


def _mlp(w: list[np.ndarray], path: Path, width: int = 8) -> Path:
    """x → fc1 → relu1 → fc2 → relu2 → fc3 → y (Gemm without bias: the tap is the Gemm's output)."""
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h1"], name="fc1"),
        helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
        helper.make_node("Gemm", ["a1", "w2"], ["h2"], name="fc2"),
        helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
        helper.make_node("Gemm", ["a2", "w3"], ["y"], name="fc3"),
    ]
    g = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(a.astype(np.float32), f"w{k + 1}") for k, a in enumerate(w)],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(path))
    return path


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path, list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    w = [rng.standard_normal((8, 8)), rng.standard_normal((8, 8)), rng.standard_normal((8, 3))]
    healthy = _mlp(w, tmp_path / "healthy.onnx")
    faulty = _mlp([w[0], w[1].T, w[2]], tmp_path / "transposed.onnx")
    x = rng.standard_normal((64, 8)).astype(np.float32)
    return healthy, faulty, w, x


def test_divergence_is_the_relative_difference_of_the_two_forward_passes(
    pair: tuple[Path, Path, list[np.ndarray], np.ndarray],
) -> None:
    """‖A − B‖ / ‖B‖ over the first COMPARED_SAMPLES samples, as numpy computes it."""
    healthy, faulty, w, x = pair
    d = divergences(faulty, healthy, x, CFG, [("h1", "h1"), ("h2", "h2"), ("a2", "a2"), ("y", "y")])
    assert d.samples == COMPARED_SAMPLES and d.unpaired is None
    xs = x[:COMPARED_SAMPLES].astype(np.float64)
    a1 = np.maximum(xs @ w[0], 0)
    h2a, h2b = a1 @ w[1].T, a1 @ w[1]
    expected = {
        "h1": 0.0,
        "h2": np.linalg.norm(h2a - h2b) / np.linalg.norm(h2b),
        "a2": np.linalg.norm(np.maximum(h2a, 0) - np.maximum(h2b, 0)) / np.linalg.norm(np.maximum(h2b, 0)),
    }
    ya, yb = np.maximum(h2a, 0) @ w[2], np.maximum(h2b, 0) @ w[2]
    expected["y"] = np.linalg.norm(ya - yb) / np.linalg.norm(yb)
    assert set(d.values) == set(expected)
    for t, e in expected.items():
        assert d.values[t] == pytest.approx(e, rel=1e-5, abs=1e-7), t
    assert d.values["h2"] > 0.5


def test_vet_finds_the_transposed_layer_and_notes_what_follows(
    pair: tuple[Path, Path, list[np.ndarray], np.ndarray],
) -> None:
    healthy, faulty, _, x = pair
    alone = vet(faulty, x, CFG)
    assert alone.passed  # no rule sees a transposed weight without a baseline
    r = vet(faulty, x, CFG, baseline=healthy)
    assert not r.passed
    by_name = {v.name: v for v in r.layers}
    assert [p.rule for p in by_name["fc2"].problems] == ["diverged"]
    assert [v.name for v in r.layers if v.problems] == ["fc2"]
    assert by_name["fc1"].divergence == 0.0 and by_name["relu1"].divergence == 0.0
    assert "inherited" in [n.rule for n in by_name["relu2"].notes]
    assert "differs" in vet_table(r).splitlines()[2]
    doc = r.to_dict()
    assert doc["layers"][2]["divergence"] == pytest.approx(by_name["fc2"].divergence)
    assert math.isclose(doc["layers"][2]["problems"][0]["threshold"], 0.5)


def test_a_saved_report_gives_no_divergence(
    pair: tuple[Path, Path, list[np.ndarray], np.ndarray], tmp_path: Path
) -> None:
    """A JSON report holds eranks, not activations: the eranks are compared, nothing else."""
    healthy, faulty, _, x = pair
    report = tmp_path / "healthy.json"
    report.write_text(json.dumps(vet(healthy, x, CFG).to_dict()))
    r = vet(faulty, x, CFG, baseline=report)
    assert r.passed and all(v.divergence is None for v in r.layers)
    assert all(v.baseline_erank is not None for v in r.layers)
    assert "differs" not in vet_table(r)


def test_a_baseline_with_other_inputs_is_not_compared(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    w = [rng.standard_normal((8, 8)), rng.standard_normal((8, 8)), rng.standard_normal((8, 3))]
    wide = [rng.standard_normal((6, 8)), w[1], w[2]]
    a = _mlp(w, tmp_path / "a.onnx")
    b = _mlp(wide, tmp_path / "b.onnx", width=6)
    r = vet(a, None, CFG, baseline=b)
    assert all(v.divergence is None for v in r.layers)
    assert any("inputs differ" in w for w in r.report.warnings)


def test_vet_takes_in_memory_models(pair: tuple[Path, Path, list[np.ndarray], np.ndarray]) -> None:
    """vet and its baseline as ModelProto or bytes: the same verdicts as from the files."""
    healthy, faulty, _, x = pair
    from_files = vet(faulty, x, CFG, baseline=healthy).to_dict()
    held = vet(onnx.load(str(faulty)), x, CFG, baseline=healthy.read_bytes()).to_dict()
    assert held["layers"] == from_files["layers"] and held["vet"]["findings"] == from_files["vet"]["findings"]
    assert held["model"] == "<in-memory model>" and held["vet"]["baseline"] == "<in-memory model>"
