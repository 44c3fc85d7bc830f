"""Big matrices: the effective-rank routes against the float64 SVD, timed side by side.

Synthetic layers of the sizes that make a score slow (BERT-base's 3072-wide feed-forward
layers, ResNet-50's 1×1 expansions to 1024/2048 channels), built in float32 as a model
computes them and scored, as onnx-near does, in float64:

* ``linear``: X·W + b, X standard normal (n rows × n/4), W ~ N(0, 0.02²), b ~ N(0, 0.02²):
  a feed-forward up-projection, rank ≤ n/4 + 1 by construction, plus float32 rounding;
* ``relu-in``: ReLU(X)·W, W ~ N(0, 2/K): a 1×1 convolution fed by a ReLU, rank ≤ n/4;
* ``tall``: ``linear`` with 4n rows (``rows="all"``);
* ``gelu``: GELU(``linear``) — full rank, the Gram route's case (no rank bound).

Routes: ``svd`` (numpy's gesdd in float64: the reference, and the route a rank-bounded matrix
took before the low-rank route), ``gram`` (√ of eigvalsh(AᵀA), its own error whatever its
bound says), ``lowrank`` (:func:`onnx_near.erank._low_rank_route`, with its bound) and
``onnx-near`` (:func:`onnx_near.erank.singular_values` with the structural bound, i.e. the
route it picks).  Each timing is the median of ``--runs`` runs, the routes interleaved run by
run; errors are relative erank errors against ``svd``.

    python benchmarks/erank_lowrank.py [--sizes 1024,2048,3072,4096] [--kinds linear,gelu]
        [--threads 1,2] [--runs 3]
    python benchmarks/erank_lowrank.py --drivers [--sizes 2048,3072,4096] [--threads 1,2]
    python benchmarks/erank_lowrank.py --gram-errors [--sizes 1024,2048]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.linalg as sl
from scipy.linalg import blas, lapack
from scipy.special import erf
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from onnx_near import erank as core

EPS = float(np.finfo(np.float64).eps)


def layer(kind: str, n: int, seed: int = 0) -> tuple[np.ndarray, int | None]:
    """The float64 matrix of ``kind`` at width ``n`` and its structural rank bound."""
    rng = np.random.default_rng(seed)
    k = n // 4
    rows = 4 * n if kind == "tall" else n
    x = rng.standard_normal((rows, k), dtype=np.float32)
    if kind == "relu-in":
        w = (math.sqrt(2.0 / k) * rng.standard_normal((k, n))).astype(np.float32)
        return np.asarray(np.maximum(x, 0) @ w, dtype=np.float64), k
    w = (0.02 * rng.standard_normal((k, n))).astype(np.float32)
    b = (0.02 * rng.standard_normal(n)).astype(np.float32)
    pre = x @ w + b
    if kind == "gelu":
        return np.asarray((0.5 * pre * (1 + erf(pre / math.sqrt(2)))).astype(np.float32), dtype=np.float64), None
    return np.asarray(pre, dtype=np.float64), k + 1


def gram_sigma(a: np.ndarray) -> np.ndarray:
    g = a.T @ a if a.shape[0] >= a.shape[1] else a @ a.T
    return np.sqrt(np.clip(np.linalg.eigvalsh(g), 0.0, None))


def interleaved(
    routes: dict[str, Callable[[], Any]], threads: list[int], runs: int
) -> dict[tuple[str, int], tuple[float, Any]]:
    """Median time and last result of each route under each BLAS thread count."""
    times: dict[tuple[str, int], list[float]] = {}
    last: dict[tuple[str, int], Any] = {}
    for _ in range(runs):
        for name, fn in routes.items():
            for t in threads:
                with threadpool_limits(t):
                    t0 = time.perf_counter()
                    last[(name, t)] = fn()
                    times.setdefault((name, t), []).append(time.perf_counter() - t0)
    return {key: (statistics.median(ts), last[key]) for key, ts in times.items()}


def layer_routes(a: np.ndarray, bound: int | None) -> dict[str, Callable[[], Any]]:
    routes: dict[str, Callable[[], Any]] = {
        "svd": lambda: np.linalg.svd(a, compute_uv=False),
        "gram": lambda: gram_sigma(a),
    }
    if bound is not None:
        routes["lowrank"] = lambda: core._low_rank_route(a, bound)
    routes["onnx-near"] = lambda: core.singular_values(a, np, bound)
    return routes


def driver_routes(a: np.ndarray) -> dict[str, Callable[[], Any]]:
    g = a.T @ a
    return {
        "gram: a.T @ a (numpy → syrk)": lambda: a.T @ a,
        "gram: blas.dsyrk": lambda: blas.dsyrk(1.0, a, trans=1),
        "eig: numpy eigvalsh (syevd)": lambda: np.linalg.eigvalsh(g),
        "eig: scipy eigh evr": lambda: sl.eigh(g, eigvals_only=True, driver="evr", check_finite=False),
        "eig: scipy eigh evd": lambda: sl.eigh(g, eigvals_only=True, driver="evd", check_finite=False),
        "eig: scipy eigh ev": lambda: sl.eigh(g, eigvals_only=True, driver="ev", check_finite=False),
        "eig: scipy eigh evx": lambda: sl.eigh(g, eigvals_only=True, driver="evx", check_finite=False),
        "eig: scipy eigh evr overwrite_a": lambda: sl.eigh(
            g.copy(), eigvals_only=True, driver="evr", overwrite_a=True, check_finite=False
        ),
        "eig: lapack.dsyevr jobz=N lower": lambda: lapack.dsyevr(g, compute_v=0, lower=1)[0],
        "eig: lapack.dsyevd jobz=N lower": lambda: lapack.dsyevd(g, compute_v=0, lower=1)[0],
        "svd: numpy svd (gesdd)": lambda: np.linalg.svd(a, compute_uv=False),
        "svd: lapack.dgesdd": lambda: lapack.dgesdd(a, compute_uv=0)[1],
        "svd: lapack.dgesvd": lambda: lapack.dgesvd(a, compute_uv=0)[1],
    }


def routes_table(sizes: list[int], kinds: list[str], threads: list[int], runs: int) -> None:
    print("| n | matrix | route | threads | median s | erank rel. error vs svd | note |")
    print("|---|--------|-------|---------|----------|-------------------------|------|")
    for n in sizes:
        for kind in kinds:
            a, bound = layer(kind, n)
            res = interleaved(layer_routes(a, bound), threads, runs)
            ref = core.erank_from_singular_values(res[("svd", threads[0])][1])
            for (name, t), (sec, out) in res.items():
                note = ""
                if name == "lowrank":
                    sigma, b, info = out
                    note = f"bound {b:.1e}, rank {info.get('rank', '?')}, drop {info.get('drop', math.nan):.1e}"
                    out = sigma
                if out is None:
                    print(f"| {n} | {kind} {a.shape[0]}×{a.shape[1]} | {name} | {t} | {sec:.2f} | refused | {note} |")
                    continue
                err = (core.erank_from_singular_values(out) - ref) / ref
                print(
                    f"| {n} | {kind} {a.shape[0]}×{a.shape[1]} | {name} | {t} | {sec:.2f} | {err:+.1e} | {note} |",
                    flush=True,
                )


def drivers_table(sizes: list[int], threads: list[int], runs: int) -> None:
    """LAPACK drivers for a full-rank (GELU) matrix: its Gram matrix's eigenvalues, its SVD."""
    print("| n | step | driver | " + " | ".join(f"{t} thread(s) median s" for t in threads) + " |")
    print("|---|------|--------|" + "---|" * len(threads))
    for n in sizes:
        a, _ = layer("gelu", n)
        routes = driver_routes(a)
        res = interleaved(routes, threads, runs)
        ref = np.linalg.svd(a, compute_uv=False)
        for name in routes:
            out = res[(name, threads[0])][1]
            ok = ""
            if name.startswith(("eig", "svd")):
                sig = np.sqrt(np.clip(np.sort(out)[::-1], 0, None)) if name.startswith("eig") else out
                e0 = core.erank_from_singular_values(ref)
                ok = f" (erank rel. error {abs(core.erank_from_singular_values(sig) - e0) / e0:.0e})"
            cells = " | ".join(f"{res[(name, t)][0]:.3f}" for t in threads)
            print(f"| {n} | {name.split(':')[0]} | {name.split(': ', 1)[1]}{ok} | {cells} |", flush=True)


def gram_errors(sizes: list[int], kinds: list[str]) -> None:
    """How far eigvalsh(AᵀA) lands from σ² (float64 SVD): in ε·λ_max and in √rows·ε·λ_i."""
    print("| n | matrix | max |Δλ|/(ε·λ_max) | top quarter | rest | max |Δλ_i|/(√rows·ε·λ_i), top quarter |")
    print("|---|--------|---|---|---|---|")
    for n in sizes:
        for kind in kinds:
            a, _ = layer(kind, n)
            s = np.linalg.svd(a, compute_uv=False)
            lam = np.sort(np.linalg.eigvalsh(a.T @ a if a.shape[0] >= a.shape[1] else a @ a.T))[::-1]
            d = np.abs(lam - s**2)
            q = max(1, len(s) // 4)
            absolute = d / (EPS * s[0] ** 2)
            relative = d[:q] / (math.sqrt(max(a.shape)) * EPS * s[:q] ** 2)
            print(
                f"| {n} | {kind} | {absolute.max():.2f} | {absolute[:q].max():.2f} | "
                f"{absolute[q:].max():.2f} | {relative.max():.2f} |",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sizes", default="1024,2048,3072,4096")
    ap.add_argument("--kinds", default="linear,relu-in,tall,gelu")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--drivers", action="store_true", help="time the LAPACK drivers instead")
    ap.add_argument("--gram-errors", action="store_true", help="measure the Gram route's eigenvalue errors")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if args.drivers:
        drivers_table(sizes, threads, args.runs)
    elif args.gram_errors:
        gram_errors(sizes, kinds)
    else:
        routes_table(sizes, kinds, threads, args.runs)


if __name__ == "__main__":
    main()
