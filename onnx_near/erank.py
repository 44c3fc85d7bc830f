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

import contextlib
import functools
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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


# Below this size an SVD costs next to nothing: no need for the Gram route.
GRAM_MIN_SIZE = 48
# The Gram route's eigenvalues are taken to be within GRAM_ERROR_EPS·ε·λ_max of the exact
# ones.  Measured on the 130 activation matrices of benchmarks/erank_routes.py: the
# negative eigenvalues a rounding error gives these positive semi-definite Gram matrices
# stay below 0.8·ε·λ_max, and with 10·ε·λ_max the bound on the erank error stays at least
# ten times above the error measured against the SVD.  (The worst-case max(rows, cols)·ε·λ_max
# sent layers wider than their input to the SVD, twice as slow, for errors of 4e-8.)
GRAM_ERROR_EPS = 10
# The Gram route is used only when its error bound on the effective rank stays below this.
GRAM_MAX_RELATIVE_ERROR = 1e-6


def singular_values(a: Any, xp: ModuleType = np, rank_bound: int | None = None) -> Any:
    """The non-zero singular values of the float64 matrix ``a`` (and possibly some zeros).

    Exact steps first: rows and columns that are entirely zero (dead ReLU units, padding)
    only add singular values that are exactly 0, which the effective rank ignores, so they
    are dropped.  Then the fastest route that is exact enough:

    - The Gram route takes the eigenvalues of AᵀA (or AAᵀ, whichever is smaller) and their
      square roots: about a third of the time of an SVD for the matrices NEAR sees.  Each
      eigenvalue is taken to be within τ ≈ 10·ε·λ_max (measured; see
      :func:`_eigenvalue_error`), so σ_i to within
      min(√τ, τ/(2σ_i)); the route is kept only when that perturbation can move the
      effective rank by less than ``GRAM_MAX_RELATIVE_ERROR`` = 1e-6 (relative), i.e. for
      well-conditioned matrices.
    - Otherwise the SVD (LAPACK gesdd), exact for every matrix: for rank-deficient
      matrices with many near-zero singular values (a transformer's 4× feed-forward layer,
      a 1×1 projection to more channels).  A Cholesky test to skip the eigenvalues of those
      was tried and dropped: it also fails for the mildly deficient ones the Gram route
      handles (an MLP's 784→1024 layer), which then cost an SVD.

    ``rank_bound``, when the graph gives one (:func:`onnx_near.taps.structural_rank`), sends
    a matrix of which at least half the singular values are zero by construction straight to
    the SVD: so many near-zero values break the Gram bound (every such layer of the
    benchmarks did), and its eigenvalues would be computed in vain.

    Float32 variants (SVD or Gram) were measured and rejected: on the benchmark's
    rank-deficient layers their effective ranks are off by up to 3e-6 relative
    (``python benchmarks/erank_routes.py``).
    """
    a = _nonzero_part(a, xp)
    rows, cols = a.shape
    if min(rows, cols) < GRAM_MIN_SIZE:
        return xp.linalg.svd(a, compute_uv=False) if a.size else xp.zeros(0)
    if rank_bound is not None and 2 * rank_bound <= min(rows, cols):
        return xp.linalg.svd(a, compute_uv=False)
    g = a.T @ a if rows >= cols else a @ a.T
    lam_raw = xp.linalg.eigvalsh(g)
    lam = xp.clip(lam_raw, 0.0, None)
    lam_max = float(lam.max())
    if lam_max <= 0.0:
        return xp.sqrt(lam)
    tau = _eigenvalue_error(lam_raw, lam_max, max(rows, cols))
    sigma = xp.sqrt(lam)
    delta = xp.minimum(xp.sqrt(xp.asarray(tau)), tau / (2.0 * xp.maximum(sigma, 1e-300)))
    total = float(sigma.sum())
    p = xp.maximum(sigma, delta) / total
    bound = float((delta / total * (1.0 + xp.abs(xp.log(p)))).sum())
    if bound < GRAM_MAX_RELATIVE_ERROR:
        return sigma
    return xp.linalg.svd(a, compute_uv=False)


def _eigenvalue_error(lam: Any, lam_max: float, summed: int) -> float:
    """τ: how far the Gram route's eigenvalues may be from the exact ones.

    ``GRAM_ERROR_EPS``·ε·λ_max as measured for sums of up to 1024 terms, grown like the
    square root of longer sums (``summed`` terms form each Gram entry: ``rows="all"`` on a
    convolutional layer sums thousands); and never below ten times the largest negative
    eigenvalue found, which for a positive semi-definite matrix is rounding error alone.
    """
    eps = float(np.finfo(np.float64).eps)
    modelled = GRAM_ERROR_EPS * eps * lam_max * max(1.0, math.sqrt(summed / 1024))
    return max(modelled, -10.0 * min(float(lam.min()), 0.0))


def _nonzero_part(a: Any, xp: ModuleType) -> Any:
    """``a`` without its all-zero rows and columns (a view-free copy only when some are zero)."""
    nonzero = a != 0
    cols = nonzero.any(axis=0)
    rows = nonzero.any(axis=1)
    if bool(cols.all()) and bool(rows.all()):
        return a
    return a[rows][:, cols]


def effective_rank(matrix: Any, xp: ModuleType = np, rank_bound: int | None = None) -> float:
    """Effective rank of a 2-D ``matrix`` (Roy & Vetterli 2007), computed in float64.

    The matrix is used as it is: it is neither centred nor scaled.  Raises
    :class:`NonFiniteMatrixError` when it holds NaN or Inf, since such a matrix has no
    effective rank; an all-zero matrix has effective rank 0.  The singular values come from
    :func:`singular_values` (Gram route when its error bound stays below 1e-6, else SVD).
    """
    a = xp.asarray(matrix, dtype=xp.float64)
    if a.ndim != 2:
        raise ValueError(f"effective_rank expects a 2-D matrix, got {a.ndim} dimensions")
    if a.size == 0:
        return 0.0
    if not bool(xp.isfinite(a).all()):
        raise NonFiniteMatrixError("the matrix holds NaN or Inf values")
    return erank_from_singular_values(singular_values(a, xp, rank_bound), xp)


# Threads pay off for matrices of at least POOL_MIN rows and columns: several of them run at
# a time, one BLAS thread each.  Below it the effective ranks go one after the other on one
# BLAS thread: measured on 2 cores, 16 matrices of 256×256 take 84 ms in sequence and 86 ms
# two at a time, eight of 512×512 242 ms and 137 ms; a multi-threaded BLAS on a 128×128
# matrix costs 2.5× a single-threaded one.  A lone matrix of at least LARGE_MATRIX gets every
# BLAS thread: a 1024×1024 eigenvalue problem takes 0.075 s on two threads, 0.107 s on one.
POOL_MIN = 512
LARGE_MATRIX = 768


def effective_ranks(
    matrices: Sequence[Any],
    xp: ModuleType = np,
    workers: int | None = None,
    rank_bounds: Sequence[int | None] | None = None,
) -> list[float | NonFiniteMatrixError]:
    """:func:`effective_rank` of each matrix; a matrix with NaN/Inf gives its error instead.

    ``workers`` threads (default: the CPUs this process may use; when given, also the most
    BLAS threads used) share the matrices of at least ``POOL_MIN`` rows and columns, largest
    first, one BLAS thread each; the smaller ones follow one by one.  Results come back in
    the order given, and do not depend on the number of workers.  ``rank_bounds`` gives each
    matrix's structural rank bound, if any (see :func:`singular_values`).
    """
    out: list[float | NonFiniteMatrixError] = [0.0] * len(matrices)

    def one(k: int) -> None:
        try:
            out[k] = effective_rank(matrices[k], xp, rank_bounds[k] if rank_bounds is not None else None)
        except NonFiniteMatrixError as e:
            out[k] = e

    if xp is not np:
        for k in range(len(matrices)):
            one(k)
        return out
    blas = _blas_controller()
    cap = blas.limit(limits=workers, user_api="blas") if workers else contextlib.nullcontext()
    workers = workers or _cores()
    order = sorted(range(len(matrices)), key=lambda k: -_cost(matrices[k].shape))
    big = [k for k in order if min(matrices[k].shape) >= POOL_MIN]
    pooled = big if workers >= 2 and len(big) >= 2 else []
    alone = [k for k in big if not pooled and min(matrices[k].shape) >= LARGE_MATRIX]
    rest = [k for k in order if k not in set(pooled) | set(alone)]
    with cap:
        for k in alone:
            one(k)
    with blas.limit(limits=1, user_api="blas"):
        if pooled:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(one, pooled))
        for k in rest:
            one(k)
    return out


@functools.cache
def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries, found once: setting a limit through
    it costs 0.02 ms, against 0.3 ms for a fresh ``threadpool_limits`` (measured), which
    showed in scores of small models."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _cost(shape: tuple[int, ...]) -> int:
    """The order of the work of one decomposition: rows·cols·min(rows, cols)."""
    rows, cols = shape[0], shape[1] if len(shape) > 1 else 1
    return rows * cols * min(rows, cols)


def _cores() -> int:
    """CPUs this process may run on (respects pinning, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def approximate_effective_rank(
    matrix: Any, rng: np.random.Generator, probes: int = 48, steps: int = 40
) -> tuple[float, float]:
    """Effective rank by stochastic Lanczos quadrature, with its standard error.

    For G = AᵀA (n × n), Σσ = tr(G^{1/2}) and Σσ ln σ = tr(f(G)), f(λ) = √λ ln √λ, are
    estimated with Hutchinson's trace estimator on ``probes`` Rademacher vectors, each
    quadrature from ``steps`` Lanczos steps on G (full reorthogonalisation); then
    H = ln Σσ − Σσ ln σ / Σσ and erank = exp(H).  The standard error is the jackknife over
    probes; the error bound reported by onnx-near is four standard errors (measured on
    ReLU/tanh activation matrices of 1024–4096 columns: errors of 0–3.4 standard errors,
    0.04–1.9 % relative).  Cost: 2·probes·steps products with A instead of an O(n³)
    decomposition — 8× faster than the exact route at 4096 columns on 2 cores.  Ubaru, Chen & Saad, "Fast estimation of
    tr(f(A)) via stochastic Lanczos quadrature", SIAM J. Matrix Anal. Appl. 2017.
    """
    a = np.asarray(matrix, dtype=np.float64)
    if not np.isfinite(a).all():
        raise NonFiniteMatrixError("the matrix holds NaN or Inf values")
    if a.shape[0] < a.shape[1]:
        a = a.T
    n = a.shape[1]
    k = min(steps, n)
    # All probes advance together: each Lanczos step is one pair of matrix products (GEMMs).
    v = rng.choice([-1.0, 1.0], size=(n, probes)) / np.sqrt(n)
    basis = np.zeros((k, n, probes))
    alpha = np.zeros((k, probes))
    beta = np.zeros((k, probes))
    for j in range(k):
        basis[j] = v
        w = a.T @ (a @ v)
        alpha[j] = np.einsum("np,np->p", v, w)
        for _ in range(2):  # full reorthogonalisation, twice for stability
            coef = np.einsum("knp,np->kp", basis[: j + 1], w)
            w -= np.einsum("knp,kp->np", basis[: j + 1], coef)
        b = np.linalg.norm(w, axis=0)
        beta[j] = b
        v = np.divide(w, b, out=np.zeros_like(w), where=b > 1e-12 * np.maximum(np.abs(alpha[j]), 1e-300))
    s1 = np.empty(probes)
    s2 = np.empty(probes)
    for p in range(probes):
        m = k
        for j in range(k - 1):  # a (numerically) zero β ends this probe's Krylov space
            if beta[j, p] <= 1e-12 * max(abs(alpha[j, p]), 1e-300):
                m = j + 1
                break
        t = np.diag(alpha[:m, p]) + np.diag(beta[: m - 1, p], 1) + np.diag(beta[: m - 1, p], -1)
        theta, u = np.linalg.eigh(t)
        weights = u[0] ** 2
        sigma = np.sqrt(np.clip(theta, 0.0, None))
        s1[p] = n * float(weights @ sigma)
        s2[p] = n * float(weights @ np.where(sigma > 0, sigma * np.log(np.where(sigma > 0, sigma, 1.0)), 0.0))

    def erank(x1: np.ndarray, x2: np.ndarray) -> float:
        total = float(x1.mean())
        return 0.0 if total <= 0 else float(np.exp(np.log(total) - float(x2.mean()) / total))

    value = erank(s1, s2)
    keep = ~np.eye(probes, dtype=bool)
    loo = np.array([erank(s1[keep[i]], s2[keep[i]]) for i in range(probes)])
    stderr = float(np.sqrt((probes - 1) / probes * ((loo - loo.mean()) ** 2).sum()))
    return value, stderr
