"""The effective-rank routes, side by side, on the matrices NEAR really sees.

For each case of ``vs_pytorch.py`` (the same seeded PyTorch models, exported to ONNX), the
matrices onnx-near scores are taken and each is decomposed by every route:

* ``svd64``:  LAPACK gesdd in float64 (numpy) — the reference, exact for every matrix;
* ``gram64``: eigenvalues of AᵀA (or AAᵀ) in float64, square roots — fast, inexact when the
  matrix is ill-conditioned;
* ``svd32``:  LAPACK sgesdd in float32 (scipy) — what ``torch.linalg.svdvals`` does in float32;
* ``gram32``: the Gram route in float32;
* ``onnx-near``: :func:`onnx_near.erank.effective_rank`, which picks a route per matrix.

It prints, per case and route, the total time on one BLAS thread and the largest relative
erank error against ``svd64``, and onnx-near's time against the fastest *exact* route for
each matrix (exact: error below 1e-6 relative, the bar the issue sets).

    python benchmarks/erank_routes.py [--cases mlp,transformer,resnet18,cnn] [--runs 3]
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits

import onnx_near
from onnx_near.erank import effective_rank, erank_from_singular_values

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_pytorch  # the cases, their inputs and their export

EXACT = 1e-6


def case_matrices(case: str, tmp: Path) -> list[tuple[np.ndarray, int | None]]:
    """The matrices onnx-near takes the effective ranks of for ``case`` (seed 0), each with
    its structural rank bound."""
    model = vs_pytorch.BUILDERS[case]()
    shape = vs_pytorch.SAMPLE_SHAPES[case]
    geo = vs_pytorch.rows_per_sample(model, torch.zeros((1, *shape)))
    need = max(math.ceil(cols / rps) for rps, cols in geo.values())
    x = np.random.default_rng(0).standard_normal((need, *shape), dtype=np.float32)
    path = tmp / f"{case}.onnx"
    vs_pytorch.export(model, torch.from_numpy(x[:1]), path)
    # score.py hands its matrices to effective_ranks: catch them on the way.
    score_module = importlib.import_module("onnx_near.score")
    seen: list[tuple[np.ndarray, int | None]] = []
    original = score_module.effective_ranks

    def catch(matrices: Any, *args: Any, **kwargs: Any) -> Any:
        seen.extend(zip(matrices, kwargs.get("rank_bounds") or [None] * len(matrices)))
        return original(matrices, *args, **kwargs)

    score_module.effective_ranks = catch
    try:
        onnx_near.score(path, data=x, seed=0)
    finally:
        score_module.effective_ranks = original
    return seen


def gram(a: np.ndarray) -> np.ndarray:
    g = a.T @ a if a.shape[0] >= a.shape[1] else a @ a.T
    return np.sqrt(np.clip(np.linalg.eigvalsh(g), 0, None))


ROUTES: dict[str, Callable[[np.ndarray, int | None], float]] = {
    "svd64": lambda m, _: erank_from_singular_values(np.linalg.svd(m.astype(np.float64), compute_uv=False)),
    "gram64": lambda m, _: erank_from_singular_values(gram(m.astype(np.float64))),
    "svd32": lambda m, _: erank_from_singular_values(lapack.sgesdd(m.astype(np.float32), compute_uv=0)[1]),
    "gram32": lambda m, _: erank_from_singular_values(gram(m.astype(np.float32)).astype(np.float64)),
    "onnx-near": lambda m, bound: effective_rank(m, np, bound),
}


def timed(
    route: Callable[[np.ndarray, int | None], float], m: np.ndarray, bound: int | None, runs: int
) -> tuple[float, float]:
    best, value = math.inf, math.nan
    for _ in range(runs):
        t0 = time.perf_counter()
        value = route(m, bound)
        best = min(best, time.perf_counter() - t0)
    return value, best


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--cases", default="mlp,transformer,resnet18,cnn")
    ap.add_argument("--runs", type=int, default=3, help="timing runs per matrix and route (the fastest is kept)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| case | matrices | route | time s | max erank rel. error | exact (≤1e-6) on |")
    print("|------|----------|-------|--------|----------------------|------------------|")
    summary = []
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(1):
        for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
            mats = [(m, b) for m, b in case_matrices(case, Path(tmp)) if m.size and np.isfinite(m).all()]
            values: dict[str, list[float]] = {}
            times: dict[str, list[float]] = {}
            for name, route in ROUTES.items():
                for m, bound in mats:
                    v, t = timed(route, m, bound, args.runs)
                    values.setdefault(name, []).append(v)
                    times.setdefault(name, []).append(t)
            ref = values["svd64"]
            errors = {n: [abs(v - r) / max(r, 1e-300) for v, r in zip(vs, ref)] for n, vs in values.items()}
            for name in ROUTES:
                exact = sum(e <= EXACT for e in errors[name])
                print(
                    f"| {case} | {len(mats)} | {name} | {sum(times[name]):.3f} | "
                    f"{max(errors[name]):.1e} | {exact}/{len(mats)} |"
                )
            # The fastest exact route of each matrix, among the fixed routes.
            best = [
                min(times[n][k] for n in ("svd64", "gram64", "svd32", "gram32") if errors[n][k] <= EXACT)
                for k in range(len(mats))
            ]
            summary.append((case, sum(times["onnx-near"]) / sum(best)))
    print()
    for case, ratio in summary:
        print(f"{case}: onnx-near / fastest exact route per matrix = {ratio:.2f}")


if __name__ == "__main__":
    main()
