"""onnx-near against golden effective ranks computed by the source frameworks.

Every ``*.golden.json`` under ``models/`` is a case: the shipped models and the corpus of
exports (PyTorch's two exporters, skl2onnx, tf2onnx/jax2onnx, onnxruntime-optimised graphs,
converted opsets).  The goldens come from the framework's side — forward hooks on PyTorch
modules, scikit-learn's own weights, Keras/JAX intermediates — on the same inputs with all
rows, never from onnx-near (see the make_*.py scripts in models/).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from corpus import REL_TOL, case_id, cases, evaluate, readme_section, render


def test_the_corpus_is_there() -> None:
    """The shipped models and the exporter corpus are all found."""
    ids = {case_id(p) for p in cases()}
    assert {"mlp", "cnn", "transformer", "sklearn_mlp"} <= ids
    assert len(ids) >= 20


@pytest.mark.parametrize("golden_path", cases(), ids=case_id)
def test_matches_framework_goldens(golden_path: Path) -> None:
    """Tap count, sorted per-tap eranks, matrix shapes and the total agree with the framework's (1e-4 relative, rows=all)."""
    o = evaluate(golden_path)
    assert len(o.got) == len(o.want), f"{len(o.got)} taps ({', '.join(o.ops)}), the framework has {len(o.want)}"
    assert list(o.got) == pytest.approx(list(o.want), rel=REL_TOL)
    assert o.score == pytest.approx(o.total, rel=REL_TOL)
    assert o.got_shapes == o.want_shapes


def test_readme_coverage_table_is_current() -> None:
    """The README's coverage table is the one the corpus gives (regenerate: python tests/corpus.py --write-readme)."""
    assert readme_section() == render([evaluate(p) for p in cases()])
