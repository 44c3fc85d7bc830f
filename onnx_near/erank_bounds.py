"""Error bounds of the effective-rank routes that are not the SVD (pure numerics, any array module ``xp``).

:func:`~onnx_near.erank.singular_values` keeps the values of the Gram or the low-rank route
only when the bound these functions give on the error they make in the effective rank stays
below ``MAX_RELATIVE_ERROR``: :func:`eigenvalue_error` models how far a Gram matrix's
eigenvalues may be from the exact ones, :func:`sqrt_error` carries that to their square
roots, and :func:`erank_error_bound` to the effective rank.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

# The Gram route's eigenvalues are taken to be within GRAM_ERROR_EPS·ε·λ_max of the exact
# ones.  Measured on the 130 activation matrices of benchmarks/erank_routes.py: the
# negative eigenvalues a rounding error gives these positive semi-definite Gram matrices
# stay below 0.8·ε·λ_max, and with 10·ε·λ_max the bound on the erank error stays at least
# ten times above the error measured against the SVD (6.6 times since the bound's weights
# are the exact derivatives, :func:`erank_error_bound`).  (The worst-case
# max(rows, cols)·ε·λ_max sent layers wider than their input to the SVD, twice as slow, for
# errors of 4e-8.)
GRAM_ERROR_EPS = 10
# ... and within GRAM_RELATIVE_EPS·√rows·ε·λ_i of their own size, which is the larger term
# for the top eigenvalues: the rounding of the long sums that form AᵀA is relative to each
# entry.  Measured (``python benchmarks/erank_lowrank.py --gram-errors``, 1024² and 2048²):
# up to 1.5·√rows·ε·λ_i on the top quarter, and 37·ε·λ_max on the top eigenvalues of a
# 2048² structurally low-rank layer, where the absolute term alone (14·ε·λ_max) fails.  Its
# cost in the bound is nil: a relative error of 5e-14 on the largest singular values.
GRAM_RELATIVE_EPS = 10


def eigenvalue_error(lam: Any, summed: int, xp: ModuleType) -> Any:
    """τ_i: how far each of the Gram route's eigenvalues ``lam`` may be from the exact one.

    ``GRAM_ERROR_EPS``·ε·λ_max as measured for sums of up to 1024 terms, grown like the
    square root of longer sums (``summed`` terms form each Gram entry: ``rows="all"`` on a
    convolutional layer sums thousands), and never below ten times the largest negative
    eigenvalue found, which for a positive semi-definite matrix is rounding error alone;
    or ``GRAM_RELATIVE_EPS``·√summed·ε·|λ_i| where that is larger (the top eigenvalues).
    """
    eps = float(np.finfo(np.float64).eps)
    lam_max = max(float(lam.max()), 0.0)
    modelled = GRAM_ERROR_EPS * eps * lam_max * max(1.0, math.sqrt(summed / 1024))
    absolute = max(modelled, -10.0 * min(float(lam.min()), 0.0))
    return xp.maximum(absolute, GRAM_RELATIVE_EPS * math.sqrt(summed) * eps * xp.abs(lam))


def sqrt_error(lam: Any, tau: Any, xp: ModuleType) -> Any:
    """Per value, the largest |√λ − √max(λ̂, 0)| over λ ≥ 0 with |λ − λ̂| ≤ τ (λ̂ = ``lam``)."""
    lam_c = xp.clip(lam, 0.0, None)
    s = xp.sqrt(lam_c)
    up = xp.clip(lam + tau, 0.0, None) - lam_c
    down = lam_c - xp.clip(lam - tau, 0.0, None)
    hi = up / xp.maximum(xp.sqrt(lam_c + up) + s, 1e-300)
    lo = down / xp.maximum(s + xp.sqrt(xp.clip(lam_c - down, 0.0, None)), 1e-300)
    return xp.maximum(hi, lo)


def erank_error_bound(sigma: Any, delta: Any, xp: ModuleType) -> float:
    """A bound on the relative change of the effective rank when each singular value
    ``sigma[j]`` may be off by ``delta[j]``.

    With S = Σσ and c = Σσ·ln σ / S, ∂H/∂σ_j = (c − ln σ_j)/S exactly (H = ln S − c), so
    |ΔH| ≤ Σ_j δ_j·w_j / (S − Σδ) with w_j = 2 + max |ln s − c| over s ∈ [max(σ_j − δ_j, δ_j),
    σ_j + δ_j]: one of the 2 covers the stretch below δ_j (∫₀^x |ln s − c| ds ≤
    x·(1 + |ln x − c|)), the other the move of c itself (at most 2·|ΔH| + Σδ/S, which is small
    whenever the bound is).  The relative change of erank = e^H is then ≤ |ΔH|·e^{|ΔH|}.
    """
    total = float(sigma.sum())
    slack = float(delta.sum())
    if slack <= 0.0:
        return 0.0
    if total <= slack:
        return math.inf
    pos = sigma > 0
    c = float((sigma[pos] * xp.log(sigma[pos])).sum()) / total
    moved = delta > 0
    d = delta[moved]
    hi = xp.log(sigma[moved] + d) - c
    lo = xp.log(xp.maximum(sigma[moved] - d, d)) - c
    dh = float((d * (2.0 + xp.maximum(xp.abs(hi), xp.abs(lo)))).sum()) / (total - slack)
    return dh * math.exp(dh) if dh < 700 else math.inf
