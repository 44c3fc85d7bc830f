"""Time `onnx-near score` on each shipped model.

Prints, per model: the whole-process wall time of the CLI (median of --runs runs, imports
and session creation included), and the in-process split of one `onnx_near.score` call
into load+rewrite, session creation, forward passes and effective ranks (median of --runs).

    python benchmarks/score_times.py [--runs 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import onnx_near

MODELS = Path(__file__).resolve().parents[1] / "models"
NAMES = ["mlp", "cnn", "transformer", "sklearn_mlp"]


def whole_process(model: Path, runs: int) -> float:
    exe = shutil.which("onnx-near") or sys.executable
    cmd = (
        [exe, "score", str(model), "--format", "json"]
        if exe != sys.executable
        else [exe, "-m", "onnx_near.cli", "score", str(model), "--format", "json"]
    )
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def in_process(model: Path, runs: int) -> dict[str, float]:
    parts: dict[str, list[float]] = {}
    for _ in range(runs):
        for k, v in onnx_near.score(model).timings.items():
            parts.setdefault(k, []).append(v)
    return {k: statistics.median(v) for k, v in parts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print(
        f"{'model':12s} {'CLI (s)':>8s} {'API (ms)':>9s} {'load+rewrite':>13s} {'session':>8s} {'forward':>8s} {'erank':>7s}"
    )
    for name in NAMES:
        path = MODELS / f"{name}.onnx"
        wall = whole_process(path, args.runs)
        t = in_process(path, args.runs)
        ms = {k: 1000 * v for k, v in t.items()}
        print(
            f"{name:12s} {wall:8.3f} {ms['total']:9.1f} {ms['load_rewrite']:11.1f}ms {ms['session']:6.1f}ms "
            f"{ms['forward']:6.1f}ms {ms['erank']:5.1f}ms"
        )


if __name__ == "__main__":
    main()
