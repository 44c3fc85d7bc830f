"""onnx-near against golden effective ranks computed by the source frameworks.

Every ``*.golden.json`` under ``models/`` is a case: the shipped models and the corpus of
exports (PyTorch's two exporters, skl2onnx, tf2onnx/jax2onnx, onnxruntime-optimised graphs,
converted opsets).  The goldens come from the framework's side — forward hooks on PyTorch
modules, scikit-learn's own weights, Keras/JAX intermediates — on the same inputs with all
rows, never from onnx-near (see the make_*.py scripts in models/).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import onnx_near

MODELS = Path(__file__).resolve().parents[1] / "models"
CASES = sorted(MODELS.rglob("*.golden.json"))


def case_id(path: Path) -> str:
    return str(path.relative_to(MODELS)).removesuffix(".golden.json")


def test_the_corpus_is_there() -> None:
    """The shipped models and the exporter corpus are all found."""
    assert len(CASES) >= 4
    assert {"mlp", "cnn", "transformer", "sklearn_mlp"} <= {case_id(p) for p in CASES}


@pytest.mark.parametrize("golden_path", CASES, ids=case_id)
def test_matches_framework_goldens(golden_path: Path) -> None:
    """Tap count, sorted per-tap eranks and the total agree with the framework's (1e-4 relative, rows=all)."""
    golden = json.loads(golden_path.read_text())
    folder = golden_path.parent
    result = onnx_near.score(folder / golden["model"], data=folder / golden["inputs"], rows="all")
    got = sorted(layer.erank for layer in result.layers)
    want = sorted(t["erank"] for t in golden["taps"])
    assert len(got) == len(want), f"{len(got)} taps, the framework has {len(want)}: {[l.op for l in result.layers]}"
    assert got == pytest.approx(want, rel=1e-4)
    assert result.score == pytest.approx(golden["total"], rel=1e-4)
    assert sorted(tuple(layer.shape) for layer in result.layers) == sorted(tuple(t["shape"]) for t in golden["taps"])
