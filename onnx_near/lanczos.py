"""The approximate effective rank (``--approx-above``): stochastic Lanczos quadrature, with its standard error.

Pure numerics like :mod:`onnx_near.erank`, for the matrices too large for an exact
decomposition; it runs in the array module of the matrix it is given (numpy, or cupy for a
device array: :func:`array_module`), and only small coefficients come back to the host
(:func:`to_host`).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, cast

import numpy as np

from .errors import NonFiniteMatrixError


def approximate_effective_rank(
    matrix: Any, rng: np.random.Generator, probes: int = 48, steps: int = 40, xp: ModuleType | None = None
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

    The Lanczos steps run in the array module of ``matrix`` (``xp``, default
    :func:`array_module`: cupy for a device array); only the small tridiagonal
    coefficients (steps × probes) come back to the host for the quadrature.
    """
    xp = xp if xp is not None else array_module(matrix)
    a = xp.asarray(matrix, dtype=xp.float64)
    if not bool(xp.isfinite(a).all()):
        raise NonFiniteMatrixError("the matrix holds NaN or Inf values")
    if a.shape[0] < a.shape[1]:
        a = a.T
    n = a.shape[1]
    k = min(steps, n)
    # All probes advance together: each Lanczos step is one pair of matrix products (GEMMs).
    v = xp.asarray(rng.choice([-1.0, 1.0], size=(n, probes)) / np.sqrt(n))
    basis = xp.zeros((k, n, probes))
    alpha_d = xp.zeros((k, probes))
    beta_d = xp.zeros((k, probes))
    for j in range(k):
        basis[j] = v
        w = a.T @ (a @ v)
        alpha_d[j] = xp.einsum("np,np->p", v, w)
        for _ in range(2):  # full reorthogonalisation, twice for stability
            coef = xp.einsum("knp,np->kp", basis[: j + 1], w)
            w = w - xp.einsum("knp,kp->np", basis[: j + 1], coef)
        b = xp.linalg.norm(w, axis=0)
        beta_d[j] = b
        going = b > 1e-12 * xp.maximum(xp.abs(alpha_d[j]), 1e-300)
        v = xp.where(going, w / xp.where(going, b, 1.0), 0.0)
    alpha, beta = to_host(alpha_d, xp), to_host(beta_d, xp)
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


def array_module(a: Any) -> ModuleType:
    """The array module of ``a``: the namespace it names (``__array_namespace__``, the
    Python array API standard, which numpy ≥ 2 and cupy arrays have), cupy for a cupy array
    of an older cupy, else numpy."""
    namespace = getattr(a, "__array_namespace__", None)
    if namespace is not None:
        return cast(ModuleType, namespace())
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cast(ModuleType, cupy)
    return np


def to_host(a: Any, xp: ModuleType) -> np.ndarray:
    """``a`` as a numpy array: copied from the device when ``xp`` is not numpy."""
    return a if xp is np else np.asarray(xp.asnumpy(a))
