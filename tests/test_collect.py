"""The collect stage: rows cut inside the graph against rows cut from whole tap outputs.

The rewrite appends, after every tap, the nodes that cut out the rows its matrix keeps
(onnx_near.rewrite.cut_windows).  The reference is the collection without them: every tap
returned whole by onnxruntime and its block taken in numpy (what onnx-near did before,
still used for taps that cannot be cut).  Both must give the same matrices, so the same
scores, on every model of the corpus, for square, N and all rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from corpus import case_id, cases

import onnx_near
from onnx_near import rewrite

ROWS = ("square", 7, "all")


def _score_both(monkeypatch: pytest.MonkeyPatch, golden_path: Path, rows: object) -> tuple[object, object]:
    golden = json.loads(golden_path.read_text())
    model, data = golden_path.parent / golden["model"], golden_path.parent / golden["inputs"]
    cut = onnx_near.score(model, data=data, rows=rows, seed=3, repetitions=2, batchnorm="running")
    with monkeypatch.context() as m:
        m.setattr(rewrite, "CUT_MIN_OPSET", 10**6)  # no tap is cut: every one comes back whole
        whole = onnx_near.score(model, data=data, rows=rows, seed=3, repetitions=2, batchnorm="running")
    return cut, whole


@pytest.mark.parametrize("golden_path", cases(), ids=case_id)
def test_rows_cut_in_the_graph_give_the_same_scores(monkeypatch: pytest.MonkeyPatch, golden_path: Path) -> None:
    """Every corpus model, square / 7 / all rows, two repetitions: per-tap effective ranks,
    rows and shapes of the in-graph cut equal those of the whole-output collection (1e-12)."""
    for rows in ROWS:
        cut, whole = _score_both(monkeypatch, golden_path, rows)
        assert [l.tensor for l in cut.layers] == [l.tensor for l in whole.layers]  # type: ignore[attr-defined]
        assert [l.shape for l in cut.layers] == [l.shape for l in whole.layers]  # type: ignore[attr-defined]
        assert [l.row_starts for l in cut.layers] == [l.row_starts for l in whole.layers]  # type: ignore[attr-defined]
        got = np.array([l.erank for l in cut.layers])  # type: ignore[attr-defined]
        want = np.array([l.erank for l in whole.layers])  # type: ignore[attr-defined]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg=f"rows={rows}")


def test_onnxruntime_writes_the_rows_into_the_matrix(tmp_path: Path) -> None:
    """run_into: the cut rows (samples 1..5 of the batch, rows 1..3 of those) land in a view of
    a larger matrix, and nothing else of it is touched."""
    import onnx
    from graphs import Graph

    from onnx_near.load import load_model
    from onnx_near.run import Runner

    g = Graph()
    g.output(g.op("Relu", g.op("MatMul", g.input("x", ["N", 3, 5]), g.weight(5, 4))), ["N", 3, 4])  # a sequence
    path = tmp_path / "m.onnx"
    onnx.save(g.model(), str(path))
    prepared = rewrite.prepare(load_model(path))
    relu = prepared.cuts[next(t.tensor for t in prepared.plan.taps if t.op == "Relu")]
    assert relu.cut
    runner = Runner(prepared.model, tmp_path, "cpu", [c.output for c in prepared.cuts.values()])
    x = np.random.default_rng(0).standard_normal((6, 3, 5)).astype(np.float32)
    whole = np.maximum(x @ np.asarray(_weight(prepared.model)), 0).reshape(6 * 3, 4)  # rows: sample by sample
    matrix = np.full((10, 4), -1.0, dtype=np.float32)
    feeds: dict[str, np.ndarray] = {"x": x}
    for c in prepared.cuts.values():
        for name, v in zip(c.bounds or (), (1, 5, 1, 3)):  # samples 1..5 of the batch, then rows 1..3 of those
            feeds[name] = np.array([v], dtype=np.int64)
    runner.run_into(feeds, {c.output: matrix[4:6] for c in prepared.cuts.values() if c is relu})
    np.testing.assert_array_equal(matrix[4:6], whole[3 * 1 + 1 : 3 * 1 + 3])
    assert (matrix[:4] == -1).all() and (matrix[6:] == -1).all()


def _weight(model: object) -> np.ndarray:
    from onnx import numpy_helper

    (w,) = [numpy_helper.to_array(t) for t in model.graph.initializer if t.dims and list(t.dims) == [5, 4]]  # type: ignore[attr-defined]
    return w


def test_feature_maps_are_cut_and_plain_matrices_come_back_whole() -> None:
    """The CNN's convolutional taps (N×C×H×W) are cut in the graph; its logits (N×10), already
    a matrix of samples, come back whole (cutting them would only add nodes)."""
    from onnx_near.load import load_model

    prepared = rewrite.prepare(load_model(Path(__file__).resolve().parents[1] / "models" / "cnn.onnx"))
    cut = {t.op: prepared.cuts[t.tensor].cut for t in prepared.plan.taps}
    assert cut == {"Conv": True, "BatchNormalization": True, "Relu": True, "Gemm": False}
    old = rewrite.CUT_MIN_OPSET
    try:
        rewrite.CUT_MIN_OPSET = 10**6
        assert not any(
            c.cut
            for c in rewrite.prepare(
                load_model(Path(__file__).resolve().parents[1] / "models" / "cnn.onnx")
            ).cuts.values()
        )
    finally:
        rewrite.CUT_MIN_OPSET = old


def test_sequence_first_taps_take_their_rows_sample_by_sample(tmp_path: Path) -> None:
    """A tap laid out (T, N, D) — sequence first, as nn.MultiheadAttention exports — has its
    rows in sample order, as forward hooks flattening (N, T, D) give them: the score equals
    the closed form and does not depend on the batch size asked for."""
    import onnx
    from graphs import Graph

    g = Graph()
    x = g.input("x", ["N", 4, 3])
    w = g.rng.standard_normal((3, 5)).astype(np.float32)
    seq_first = g.op("Transpose", x, perm=[1, 0, 2])
    h = g.op("MatMul", seq_first, g.const(w), out="h")  # (T, N, 5)
    g.output(g.op("Transpose", g.op("Relu", h), perm=[1, 0, 2]), ["N", 4, 5])
    path = tmp_path / "seq_first.onnx"
    onnx.save(g.model(), str(path))
    data = np.random.default_rng(4).standard_normal((6, 4, 3)).astype(np.float32)
    scores = {b: onnx_near.score(path, data=data, rows=7, seed=2, batch_size=b) for b in (1, 3, 6)}
    assert scores[1].scores == scores[3].scores == scores[6].scores
    layer = next(l for l in scores[3].layers if l.tensor == "h")
    (start,) = layer.row_starts
    (first,) = scores[3].window_starts
    rows = (data[first:] @ w).reshape(-1, 5)[start : start + 7].astype(np.float64)  # sample by sample, as hooks see it
    s = np.linalg.svd(rows, compute_uv=False)
    p = s / s.sum()
    assert layer.erank == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-6)
