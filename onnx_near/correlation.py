"""How well a predictor orders models like their accuracies after training: Kendall's τ,
Spearman's ρ and top-k precision (:func:`correlate`), and the rank-average combination of
several proxies (:func:`rank_average`).  Pure statistics on arrays, for :mod:`onnx_near.rank`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Correlation:
    """How well one predictor orders the models like their accuracies."""

    kendall_tau: float
    spearman_rho: float
    top_k_precision: float
    models: int | None = None  # the models correlated, when fewer than those with an accuracy
    k: int | None = None  # then the k of its top-k precision (10 % of those models)


def correlate(predictor: np.ndarray, accuracy: np.ndarray, k: int) -> Correlation:
    """Kendall's τ (τ-b), Spearman's ρ and top-k precision of ``predictor`` against ``accuracy``.

    Top-k precision: the share of the k most accurate models among the k best-scored ones.
    NaN where the predictor is unknown for some model or constant.
    """
    from scipy import stats  # imported here: scipy.stats alone takes most of a second to import

    if np.isnan(predictor).any() or np.ptp(predictor) == 0:
        return Correlation(math.nan, math.nan, math.nan)
    tau = float(stats.kendalltau(predictor, accuracy).statistic)
    rho = float(stats.spearmanr(predictor, accuracy).statistic)
    best_pred = set(np.argsort(-predictor, kind="stable")[:k].tolist())
    best_acc = set(np.argsort(-accuracy, kind="stable")[:k].tolist())
    return Correlation(tau, rho, len(best_pred & best_acc) / k)


def rank_average(values: Sequence[Sequence[float]]) -> np.ndarray:
    """The rank-average combination of proxies: per model, the mean over the proxies of its
    rank among the models (1 = lowest, ties averaged, as ``scipy.stats.rankdata``); NaN for a
    model that lacks one of them (ranked among the models that have them all).  Higher is
    better, like each proxy.  ``values``: one sequence per proxy, the models in the same order."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    out = np.full(v.shape[1] if v.ndim == 2 else 0, math.nan)
    ok = ~np.isnan(v).any(axis=0) if v.size else np.zeros(0, dtype=bool)
    if ok.any():
        out[ok] = np.mean([stats.rankdata(row[ok]) for row in v], axis=0)
    return out
