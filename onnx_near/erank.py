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

This module holds the exact routes (SVD, Gram, low-rank) and the pool that runs many
matrices at once; the error bounds that let a route other than the SVD vouch for its values
are in :mod:`onnx_near.erank_bounds`, the approximate route (stochastic Lanczos quadrature,
``--approx-above``) and the array-module helpers in :mod:`onnx_near.lanczos`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any, cast

import numpy as np

from .erank_bounds import eigenvalue_error as _eigenvalue_error
from .erank_bounds import erank_error_bound as _erank_error_bound
from .erank_bounds import sqrt_error as _sqrt_error
from .errors import NonFiniteMatrixError
from .lanczos import approximate_effective_rank as approximate_effective_rank
from .lanczos import array_module as array_module
from .lanczos import to_host as to_host


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


# Below this size an SVD costs next to nothing: no need for the Gram or low-rank routes.
GRAM_MIN_SIZE = 48
# A route other than the SVD is used only when its bound on the erank error stays below this.
MAX_RELATIVE_ERROR = 1e-6
GRAM_MAX_RELATIVE_ERROR = MAX_RELATIVE_ERROR  # the name this bound had first

# The low-rank route (see :func:`singular_values`) from this size on, where it starts to beat
# the SVD (measured on 1 BLAS thread, n×n layers of rank n/4 + 1: 0.05 s against 0.06 s at
# 512, 0.15 s against 0.20 s at 1024), with LOW_RANK_OVERSAMPLING columns beyond the
# structural rank bound in its test matrix.
LOW_RANK_MIN_SIZE = 512
# ... and only for bounds of at most a quarter of the size (+1 for a bias): its test matrix
# has r + LOW_RANK_OVERSAMPLING columns, so towards r = n/2 its products cost an SVD's.
# Measured on ResNet-50's 2048² layers of bound 1024/1025 (one thread): 3.1–4.3 s before
# falling back, against the SVD's 2.2–2.4 s; at bound 512/513 it wins (1.1 s against 2.1).
LOW_RANK_MAX_SHARE = 4
LOW_RANK_OVERSAMPLING = 10
# The test matrix is Gaussian from this fixed seed: the same matrix gives the same values,
# bit for bit, and the caller's generator is never drawn from.
LOW_RANK_SEED = 0x4E454152
# The route gives up (before its costly half) unless its Ritz values drop by at least this
# factor somewhere within the rank bound: below a structural rank, float32 rounding noise
# gives drops of about 1e6; a convolution whose input has fewer independent rows than
# channels, of 300 to 6000 (ResNet-18), where the route still vouches for its values.
LOW_RANK_MIN_GAP = 100
# A matrix with more than LOW_RANK_QR_ASPECT times as many rows as columns (``rows="all"``)
# is first reduced to its n×n R factor (same singular values).  Measured on 1 BLAS thread,
# 1024 columns of rank 257 (medians of 3, a busy machine): 4096 rows 0.82 s so against 0.97 s
# without (SVD 1.70 s), 8192 rows 1.76 s against 2.24 s (SVD 1.90 s), 3072 rows 0.66 s
# against 0.61 s (SVD 0.91 s).  Where the rows are that many, the QR is most of the cost.
LOW_RANK_QR_ASPECT = 3
# Rounding of the route's own products (Householder application, Ritz vectors, Q1ᵀQ1 and
# Q1ᵀY), modelled as LOW_RANK_ROUNDING·ε times their size (see :func:`_low_rank_route`).
LOW_RANK_ROUNDING = 10


def singular_values(a: Any, xp: ModuleType = np, rank_bound: int | None = None) -> Any:
    """The non-zero singular values of the float64 matrix ``a`` (and possibly some zeros).

    Exact steps first: rows and columns that are entirely zero (dead ReLU units, padding)
    only add singular values that are exactly 0, which the effective rank ignores, so they
    are dropped.  Then the fastest route that can vouch for its values: each route other than
    the SVD bounds the error its values make in the effective rank
    (:func:`~onnx_near.erank_bounds.erank_error_bound`) and is kept only when that bound stays below
    ``MAX_RELATIVE_ERROR`` = 1e-6 (relative); otherwise the SVD gives them.

    - Low-rank route (:func:`_low_rank_route`; numpy only, at least ``LOW_RANK_MIN_SIZE``
      rows and columns), for a matrix whose structural ``rank_bound`` r
      (:func:`onnx_near.taps.structural_rank`) is at most half its size: a layer wider than
      its input, such as BERT's 768→3072 feed-forward up-projections or ResNet-50's 1×1
      expansions to 4× the channels.  Such a matrix is rank r plus float32 rounding noise:
      the top r singular values come from a randomized range finder, the n − r values of
      the noise tail from a Gram route of their own, both with rigorous a-posteriori bounds.
      Measured (``python benchmarks/erank_lowrank.py``; n×n, r = n/4 + 1; medians of 3 on a
      2-core machine shared with other work): on one BLAS thread 1.1 s against the SVD's
      2.4 s at 2048, 4.4 s against 10–12 s at 3072, 20 s against 47 s at 4096; on two,
      0.9 s against 1.6 s at 2048 and 2.7 s against 6.5 s at 3072; erank errors ≤ 2e-15,
      own bounds ≤ 1e-8.  The Gram route on such a matrix is about as fast (0.8 s, 4 s,
      18 s on one thread) and lands within 1.3e-7, but only because its errors cancel: its
      tail values are individually off by up to 100 %, and its bound (3e-6 – 4e-6) rightly
      refuses it.  On whole models (``python benchmarks/erank_routes.py --cases
      resnet50,bert``, one thread): BERT-base's 111 matrices take 103 s against 319 s by
      SVD, ResNet-50's 156 take 55 s against 79 s.  ResNet-50's 2048-channel convolutions
      fed by 7×7 maps, whose rank (≈ 430) lies well below the bound (512) with no clear
      drop, are refused and go to the SVD.
    - Gram route (:func:`_gram_singular_values`): the eigenvalues of AᵀA (or AAᵀ, whichever
      is smaller) and their square roots, about a third of the time of an SVD (0.08 s against
      0.20 s at 1024, 1.3 s against 4.1 s at 2048, 3.5 s against 11.9 s at 3072 for a
      full-rank GELU output).  Each eigenvalue is taken to be within τ_i
      (:func:`~onnx_near.erank_bounds.eigenvalue_error`, measured) of the exact one, so σ_i within
      :func:`~onnx_near.erank_bounds.sqrt_error`; the bound passes for well-conditioned matrices.
    - Otherwise the SVD (numpy's gesdd), exact for every matrix: for rank-deficient matrices
      with many near-zero singular values (a transformer's 4× feed-forward layer on cupy or
      below ``LOW_RANK_MIN_SIZE``, a layer whose rank bound is wrong, an ill-conditioned
      activation).  A Cholesky test to skip the eigenvalues of those was tried and dropped:
      it also fails for the mildly deficient ones the Gram route handles (an MLP's 784→1024
      layer), which then cost an SVD.

    Drivers (``python benchmarks/erank_lowrank.py --drivers``, 2048-4096): numpy's eigvalsh
    (syevd), scipy's eigh with driver evr/evd/ev/evx, and scipy.linalg.lapack's dsyevr/dsyevd
    with jobz='N' all tridiagonalise and then find roots alike, and were within noise of one
    another (0.64 s at 2048 on one thread), LAPACK's 2-stage dsyevd/dsyev (called in numpy's
    OpenBLAS) no faster, float32 no faster; numpy's svd (gesdd) beat scipy's dgesdd and dgesvd
    (2.5 s against 2.8 s and 4.7 s).  So numpy's eigvalsh and svd stay, which cupy also has.

    ``rank_bound`` at most half the size on cupy, or below ``LOW_RANK_MIN_SIZE``, sends the
    matrix straight to the SVD: so many near-zero values break the Gram bound (every such
    layer of the benchmarks did), and its eigenvalues would be computed in vain.

    Float32 variants (SVD or Gram) were measured and rejected: on the benchmark's
    rank-deficient layers their effective ranks are off by up to 3e-6 relative
    (``python benchmarks/erank_routes.py``).
    """
    return _routed(a, xp, rank_bound)[1]


def _routed(a: Any, xp: ModuleType, rank_bound: int | None) -> tuple[str, Any]:
    """:func:`singular_values` with the name of the route that gave them ("svd", "gram",
    "low-rank"; benchmarks/erank_routes.py reports it)."""
    a = _nonzero_part(a, xp)
    rows, cols = a.shape
    if min(rows, cols) < GRAM_MIN_SIZE:
        return "svd", xp.linalg.svd(a, compute_uv=False) if a.size else xp.zeros(0)
    if rank_bound is not None and 2 * rank_bound <= min(rows, cols):
        n = min(rows, cols)
        if xp is np and n >= LOW_RANK_MIN_SIZE and LOW_RANK_MAX_SHARE * (rank_bound - 1) <= n:
            sigma = _low_rank_singular_values(a, rank_bound)
            if sigma is not None:
                return "low-rank", sigma
        return "svd", xp.linalg.svd(a, compute_uv=False)
    sigma = _gram_singular_values(a, xp)
    if sigma is not None:
        return "gram", sigma
    return "svd", xp.linalg.svd(a, compute_uv=False)


def _gram_singular_values(a: Any, xp: ModuleType) -> Any | None:
    """√ of the eigenvalues of AᵀA (or AAᵀ, the smaller), or None when their error bound on
    the effective rank reaches ``MAX_RELATIVE_ERROR``."""
    rows, cols = a.shape
    g = a.T @ a if rows >= cols else a @ a.T
    lam = xp.linalg.eigvalsh(g)
    sigma = xp.sqrt(xp.clip(lam, 0.0, None))
    if float(lam.max()) <= 0.0:
        return sigma
    tau = _eigenvalue_error(lam, max(rows, cols), xp)
    if _erank_error_bound(sigma, _sqrt_error(lam, tau, xp), xp) < MAX_RELATIVE_ERROR:
        return sigma
    return None


def _low_rank_singular_values(a: np.ndarray, rank_bound: int) -> np.ndarray | None:
    """:func:`_low_rank_route`'s values when their bound on the erank error stays below
    ``MAX_RELATIVE_ERROR``, else None."""
    sigma, bound, _ = _low_rank_route(a, rank_bound)
    return sigma if sigma is not None and bound < MAX_RELATIVE_ERROR else None


def _low_rank_route(
    a: np.ndarray, rank_bound: int, times: dict[str, float] | None = None
) -> tuple[np.ndarray | None, float, dict[str, float]]:
    """All singular values of ``a`` (numpy, float64) — a matrix of rank at most about
    ``rank_bound`` but for rounding noise — with a bound on the relative error of the
    effective rank they give (inf, and no values, when the route gives up), and diagnostics.

    With m ≥ n (else Aᵀ) and k = rank_bound + LOW_RANK_OVERSAMPLING:

    1. Z = AᵀAΩ (Ω: n×k, Gaussian from LOW_RANK_SEED) and its Householder QR, Z = H·[R; 0]:
       the first k columns V_b of the orthogonal H span A's top right singular vectors to an
       angle of about (σ_{k+1}/σ_r)², the others, V_b⊥, are their exact complement.
    2. A·H (LAPACK ormqr) = [W, A·V_b⊥] with W = A·V_b; the Ritz pairs of W (eigh of WᵀW)
       give s_1 ≥ … ≥ s_k and a k×k rotation U.  r is where s_i/s_{i+1} drops most within
       the rank bound; the route gives up when that drop is below LOW_RANK_MIN_GAP.
    3. V1 = V_b·U[:, :r], S1 = diag(s_1 … s_r), Q1 = A·V1·S1⁻¹ and Y = A·V1⊥ with
       V1⊥ = [V_b·U[:, r:], V_b⊥] (m × (n−r)).  With P1 the orthonormal polar factor of Q1,
       X = (Q1ᵀQ1)^½, and any complement P1⊥, A is exactly [[X·S1, X⁻¹·Q1ᵀY], [0, T]] in the
       orthogonal bases [P1, P1⊥] and [V1, V1⊥], and YᵀY = (X⁻¹Q1ᵀY)ᵀ(X⁻¹Q1ᵀY) + TᵀT.  So
       σ(A)² are the eigenvalues of [[S1·Q1ᵀQ1·S1, S1·H], [(S1·H)ᵀ, YᵀY]], H = Q1ᵀY, computed:
       - the first block's eigenvalues are s_i²·(1 ± ω), ω = ‖Q1ᵀQ1 − I‖ (Ostrowski);
       - the second's are the tail's, from eigvalsh(YᵀY): an (n−r)-sized Gram route whose
         error τ (:func:`~onnx_near.erank_bounds.eigenvalue_error`) is relative to λ_max(YᵀY) ≈ σ_{r+1}², not to
         σ_1², which is why it stays exact where the Gram route on A does not;
       - the coupling moves each eigenvalue by at most min(‖S1·H‖, ‖S1·H‖²/gap) (Weyl; the
         quadratic residual bound of Li & Li 2005), gap = (1 − ω)·s_r² − λ_max(YᵀY).
    4. Rounding in the route's own products (the Householder application, Q1, the QR that
       first reduces a matrix of more than LOW_RANK_QR_ASPECT·n rows) is taken to perturb A
       by at most ρ = LOW_RANK_ROUNDING·ε·(k + √m)·‖A‖_F, and 2ρ is added to every value's
       error (modelled, generously: at 2048² ρ = 1.2e-9, while the route's values are within
       2e-13 of the float64 SVD's and the tail's reach 1e-5).

    All singular values are returned, the r large ones and the n − r of the tail: the tail
    of a float32 layer is rounding noise (σ ≈ 1e-6·σ_r), but at 3072 columns its 2303
    values move the erank by 7e-6 relative, over the 1e-6 bar (measured).
    ``times``, when given, collects the seconds of each step.
    """
    from scipy.linalg import lapack  # the numpy path only: cupy has no ormqr

    info: dict[str, float] = {}
    clock = [time.perf_counter()]

    def tick(step: str) -> None:
        if times is not None:
            now = time.perf_counter()
            times[step] = times.get(step, 0.0) + now - clock[0]
            clock[0] = now

    if a.shape[0] < a.shape[1]:
        a = a.T
    m, n = a.shape
    norm_a = float(np.linalg.norm(a))
    if m > LOW_RANK_QR_ASPECT * n:
        a = cast(np.ndarray, np.linalg.qr(a, mode="r"))  # n×n, A's singular values; rounding within ρ
        tick("qr-tall")
    k = min(rank_bound + LOW_RANK_OVERSAMPLING, n)
    top = min(rank_bound, k - 1)
    if top < 1:
        return None, math.inf, info
    probe = np.random.default_rng(LOW_RANK_SEED).standard_normal((n, k))
    z = a.T @ (a @ probe)
    tick("range")
    h, tau = np.linalg.qr(z, mode="raw")  # LAPACK's reflectors, transposed
    reflectors = np.asfortranarray(h.T)
    tick("qr")
    lwork = max(1, int(lapack.dormqr("L", "T", reflectors, tau, a.T, -1)[1][0]))
    ct, _, status = lapack.dormqr("L", "T", reflectors, tau, a.T, lwork)  # (A·H)ᵀ = Hᵀ·Aᵀ
    if status != 0:
        return None, math.inf, info
    tick("ormqr")
    wt = ct[:k]
    theta, u = np.linalg.eigh(wt @ wt.T)
    s = np.sqrt(np.clip(theta[::-1], 0.0, None))
    u = u[:, ::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        drops = np.nan_to_num(s[:top] / s[1 : top + 1], nan=0.0, posinf=np.inf)
    r = int(np.argmax(drops)) + 1
    info.update(rank=r, drop=float(drops[r - 1]))
    if not drops[r - 1] >= LOW_RANK_MIN_GAP:
        return None, math.inf, info
    s1 = s[:r]
    q1t = (u[:, :r].T @ wt) / s1[:, None]
    yt = np.concatenate([u[:, r:].T @ wt, ct[k:]])
    del ct, wt
    tick("ritz")
    eps = float(np.finfo(np.float64).eps)
    qq = q1t @ q1t.T
    qq[np.diag_indices(r)] -= 1.0
    w2 = float(np.linalg.norm(qq)) + LOW_RANK_ROUNDING * eps * math.sqrt(m) * r  # ω, and Q1ᵀQ1's rounding
    h = q1t @ yt.T
    hn = float(np.linalg.norm(h))
    shn = float(np.linalg.norm(h * s1[:, None]))  # ‖S1·H‖, below s_1·‖H‖ as the top rows converge first
    del h
    tick("checks")
    if not w2 < 0.5:
        return None, math.inf, info
    lam = np.linalg.eigvalsh(yt @ yt.T)
    tick("tail")

    rho = LOW_RANK_ROUNDING * eps * (k + math.sqrt(m)) * norm_a
    slack = LOW_RANK_ROUNDING * eps * math.sqrt(m * r) * float(np.linalg.norm(yt))  # of H = Q1ᵀY
    e = shn + float(s1[0]) * slack  # ‖S1·H‖, the off-diagonal block of MᵀM
    tau_y = _eigenvalue_error(lam, m, np)
    gap = (1.0 - w2) * float(s1[-1]) ** 2 - float((lam + tau_y).max())
    couple = e if gap <= 0.0 else min(e, e * e / gap)
    delta_top = w2 * s1 + 2 * rho + _sqrt_error((1.0 - w2) * s1**2, np.full(r, couple), np)
    delta_tail = 2 * rho + _sqrt_error(lam, tau_y + couple, np)
    sigma = np.concatenate([s1, np.sqrt(np.clip(lam, 0.0, None))])
    bound = _erank_error_bound(sigma, np.concatenate([delta_top, delta_tail]), np)
    info.update(omega=w2, h=hn, sh=shn, couple=couple, rho=rho, tail_max=float(np.sqrt(max(float(lam.max()), 0.0))))
    return sigma, bound, info


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
    :func:`singular_values` (the low-rank or the Gram route when its error bound stays below
    1e-6, else the SVD).
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
    progress: Callable[[int], None] | None = None,
) -> list[float | NonFiniteMatrixError]:
    """:func:`effective_rank` of each matrix; a matrix with NaN/Inf gives its error instead.

    ``workers`` threads (default: the CPUs this process may use; when given, also the most
    BLAS threads used) share the matrices of at least ``POOL_MIN`` rows and columns, largest
    first, one BLAS thread each; the smaller ones follow one by one.  Results come back in
    the order given, and do not depend on the number of workers.  ``rank_bounds`` gives each
    matrix's structural rank bound, if any (see :func:`singular_values`).  ``progress(done)``
    is called after each matrix with the number done so far.
    """
    out: list[float | NonFiniteMatrixError] = [0.0] * len(matrices)
    done = [0]
    lock = threading.Lock()

    def one(k: int) -> None:
        try:
            out[k] = effective_rank(matrices[k], xp, rank_bounds[k] if rank_bounds is not None else None)
        except NonFiniteMatrixError as e:
            out[k] = e
        if progress is not None:
            with lock:
                done[0] += 1
                progress(done[0])

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
