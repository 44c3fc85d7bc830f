"""Effective rank: the numerical core of NEAR.

Pure numerics: this module imports neither onnx nor onnxruntime.  Every function takes an
array module ``xp`` (``numpy`` by default; ``cupy`` has the same interface) so the same
code runs on the CPU or on a GPU.

For a real matrix ``A`` with singular values ``σ_1 … σ_Q`` (``Q = min(rows, cols)``)::

    p_k   = σ_k / Σ_i σ_i
    H     = −Σ_k p_k · ln p_k        (terms with p_k = 0 contribute 0)
    erank = exp(H)

O. Roy and M. Vetterli, "The effective rank: a measure of effective dimensionality",
EUSIPCO 2007.  NEAR (Husistein, Reiher, Eckhoff, arXiv 2408.08776, ICLR 2025) sums this
quantity over the pre- and post-activation matrices of a network.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from .errors import NonFiniteMatrixError


def erank_from_singular_values(sigma: Any, xp: ModuleType = np) -> float:
    """Effective rank from the singular values ``sigma`` (any order, all ≥ 0).

    Returns 0.0 when every singular value is 0 (the all-zero matrix).
    """
    sigma = xp.asarray(sigma, dtype=xp.float64)
    total = float(sigma.sum())
    if total <= 0.0:
        return 0.0
    p = sigma[sigma > 0] / total
    entropy = -float((p * xp.log(p)).sum())
    return float(np.exp(entropy))


def effective_rank(matrix: Any, xp: ModuleType = np) -> float:
    """Effective rank of a 2-D ``matrix`` (Roy & Vetterli 2007), computed in float64.

    The matrix is used as it is: it is neither centred nor scaled.  Raises
    :class:`NonFiniteMatrixError` when it holds NaN or Inf, since such a matrix has no
    effective rank; an all-zero matrix has effective rank 0.
    """
    a = xp.asarray(matrix, dtype=xp.float64)
    if a.ndim != 2:
        raise ValueError(f"effective_rank expects a 2-D matrix, got {a.ndim} dimensions")
    if a.size == 0:
        return 0.0
    if not bool(xp.isfinite(a).all()):
        raise NonFiniteMatrixError("the matrix holds NaN or Inf values")
    sigma = xp.linalg.svd(a, compute_uv=False)
    return erank_from_singular_values(sigma, xp)
