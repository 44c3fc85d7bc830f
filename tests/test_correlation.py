"""Correlations of a predictor with the accuracies (onnx_near/correlation.py): Kendall's τ and
Spearman's ρ against scipy, top-k precision, and the rank average of several predictors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from onnx_near.correlation import correlate, rank_average


def test_correlations_match_scipy() -> None:
    """τ and ρ are scipy's; top-k precision counts the shared top-k on a hand-checked example."""
    pred = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    acc = np.array([0.2, 0.5, 0.6, 0.7, 0.1, 0.65])
    c = correlate(pred, acc, 2)
    assert c.kendall_tau == pytest.approx(stats.kendalltau(pred, acc).statistic)
    assert c.spearman_rho == pytest.approx(stats.spearmanr(pred, acc).statistic)
    assert c.top_k_precision == 1.0  # top-2 by score {5, 3}, by accuracy {3, 5}
    assert correlate(pred, acc, 1).top_k_precision == 0.0  # {5} vs {3}
    assert correlate(pred, acc, 3).top_k_precision == pytest.approx(2 / 3)  # {5, 3, 1} vs {3, 5, 2}


def test_rank_average() -> None:
    """The mean of the ranks (ties averaged); a model lacking a proxy has none, the others are ranked without it."""
    np.testing.assert_allclose(rank_average([[1.0, 3.0, 2.0], [10.0, 20.0, 30.0]]), [1.0, 2.5, 2.5])
    np.testing.assert_allclose(rank_average([[5.0, 5.0, 1.0]]), [2.5, 2.5, 1.0])
    got = rank_average([[1.0, 2.0, math.nan, 3.0], [3.0, 2.0, 1.0, 1.0]])
    np.testing.assert_allclose(got[[0, 1, 3]], [2.0, 2.0, 2.0])
    assert math.isnan(got[2])
