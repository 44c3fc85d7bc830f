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
    cut = onnx_near.score(model, data=data, rows=rows, seed=3, repetitions=2)
    with monkeypatch.context() as m:
        m.setattr(rewrite, "CUT_MIN_OPSET", 10**6)  # no tap is cut: every one comes back whole
        whole = onnx_near.score(model, data=data, rows=rows, seed=3, repetitions=2)
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
