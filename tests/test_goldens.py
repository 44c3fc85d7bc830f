"""onnx-near against golden effective ranks computed by the source frameworks.

The goldens in ``models/*.golden.json`` come from ``models/make_models.py``: forward hooks
on the PyTorch modules (or scikit-learn's own weights in float64 numpy) on the same
inputs, all rows, singular values from torch/numpy — no ONNX, no onnxruntime.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import onnx_near

MODELS = Path(__file__).resolve().parents[1] / "models"
NAMES = ["mlp", "cnn", "transformer", "sklearn_mlp"]


@pytest.mark.parametrize("name", NAMES)
def test_matches_framework_goldens(name: str) -> None:
    """Sorted per-tap eranks and the total agree with the framework's to 1e-4 relative (rows=all)."""
    golden = json.loads((MODELS / f"{name}.golden.json").read_text())
    result = onnx_near.score(MODELS / f"{name}.onnx", data=MODELS / golden["inputs"], rows="all")
    got = sorted(l.erank for l in result.layers)
    want = sorted(t["erank"] for t in golden["taps"])
    assert len(got) == len(want), "tap count differs from the framework's hooked modules"
    assert got == pytest.approx(want, rel=1e-4)
    assert result.score == pytest.approx(golden["total"], rel=1e-4)
    shapes = sorted(tuple(l.shape) for l in result.layers)
    assert shapes == sorted(tuple(t["shape"]) for t in golden["taps"])
