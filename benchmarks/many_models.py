"""Models per second of `onnx-near rank` over a folder of a few hundred small models.

    python benchmarks/many_models.py [--models 300] [--no-ray]

Writes small MLPs (varied width and activation) to a temporary folder, then ranks them with
the local engine (1 and 2 processes) and with Ray on 2 local CPUs (``pip install
'onnx-near[ray]'``), each streaming its rows to a results file, and prints per engine: the
wall time of the call, the start-up (call to first row: spawning the pool's processes, or
Ray's workers importing onnx-near), the steady rate (first row to last), and the ratios
against the local pool at the same CPU count, all measured in the same run.  Ray itself is
started once beforehand (its start-up is printed apart), then warmed with a few models, as
a cluster would be; with ``--chunk 1`` too, the difference per task is Ray's own cost.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnx_near
from onnx_near.engines import Engine, LocalEngine, RayEngine
from onnx_near.rank import rank_models

ACTS = ["Relu", "Tanh", "Sigmoid", "Elu", "LeakyRelu", "Softplus"]


def small_model(k: int, rng: np.random.Generator) -> onnx.ModelProto:
    """An MLP 32 → w → w → 10 with one of six activations (k picks width and activation)."""
    w = [16, 32, 64, 128][k % 4]
    act = ACTS[k % len(ACTS)]
    sizes = [32, w, w, 10]
    nodes, inits, x = [], [], "input"
    for i in range(3):
        inits.append(
            numpy_helper.from_array(
                (rng.standard_normal((sizes[i], sizes[i + 1])) / np.sqrt(sizes[i])).astype(np.float32), f"w{i}"
            )
        )
        nodes.append(helper.make_node("Gemm", [x, f"w{i}"], [f"h{i}"]))
        x = f"h{i}"
        if i < 2:
            nodes.append(helper.make_node(act, [x], [f"a{i}"]))
            x = f"a{i}"
    g = helper.make_graph(
        nodes,
        "m",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 32])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


class Clock:
    """rank_models' progress callback: when the first and the last row came."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first = self.last = self.start
        self.rows = 0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done == 1:
            self.first = now
        self.last, self.rows = now, done


def timed(folder: Path, engine: Engine, results: Path) -> dict[str, float]:
    """Rank ``folder`` on ``engine``: wall, start-up and steady rate (models per second)."""
    clock = Clock()
    r = rank_models([folder], engine=engine, results=results, progress=clock)
    wall = time.perf_counter() - clock.start
    assert all(m.error is None for m in r.models)
    n = len(r.models)
    return {
        "wall": wall,
        "rate": n / wall,
        "startup": clock.first - clock.start,
        "steady": (n - 1) / max(clock.last - clock.first, 1e-9),
    }


def line(name: str, m: dict[str, float], n: int) -> str:
    return (
        f"{name:<26} {m['wall']:6.2f} s  {m['rate']:6.1f} models/s  start-up {m['startup']:5.2f} s  "
        f"steady {m['steady']:6.1f} models/s ({1e3 / m['steady']:.2f} ms per model)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3, help="Rounds, each running every engine once; medians shown.")
    ap.add_argument("--no-ray", action="store_true", help="Only the local engine.")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "models"
        folder.mkdir()
        for k in range(args.models):
            onnx.save(small_model(k, rng), str(folder / f"m{k:04d}.onnx"))
        one = [onnx_near.score(folder / "m0003.onnx").timings for _ in range(5)]
        split = {k: statistics.median(t[k] for t in one) * 1e3 for k in one[0]}
        print(f"{args.models} models (MLPs 32-w-w-10, w in 16..128), synthetic inputs, rows streamed to JSONL")
        print(
            f"one model in-process: {split['total']:.1f} ms (load+rewrite {split['load_rewrite']:.1f}, session "
            f"{split['session']:.1f}, forward {split['forward']:.1f}, erank {split['erank']:.1f})"
        )
        engines: dict[str, Engine] = {"local, 1 process": LocalEngine(1), "local pool, 2 processes": LocalEngine(2)}
        if not args.no_ray:
            import ray

            t0 = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            print(
                f"ray.init(num_cpus=2): {time.perf_counter() - t0:.2f} s (once per run of the CLI; not counted below)"
            )
            warm = Path(tmp) / "warm"
            warm.mkdir()
            for k in range(8):
                onnx.save(small_model(k, rng), str(warm / f"w{k}.onnx"))
            rank_models([warm], engine=RayEngine(chunk=1))  # each worker imports onnx-near once
            engines |= {"ray, 2 CPUs, auto chunk": RayEngine(), "ray, 2 CPUs, chunk 1": RayEngine(chunk=1)}
        out = Path(tmp) / "results"
        out.mkdir()
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in engines}
        try:
            for r in range(args.repeat):  # interleaved: a machine that drifts moves every engine alike
                for k, (name, engine) in enumerate(engines.items()):
                    rounds[name].append(timed(folder, engine, out / f"{r}-{k}.jsonl"))
        finally:
            if not args.no_ray:
                ray.shutdown()
        runs = {name: {k: statistics.median(m[k] for m in ms) for k in ms[0]} for name, ms in rounds.items()}
        print(f"medians of {args.repeat} interleaved rounds:")
        for name, m in runs.items():
            print(line(name, m, args.models))
        pool = runs["local pool, 2 processes"]
        print(
            f"local pool 2 processes against 1: steady rate {pool['steady'] / runs['local, 1 process']['steady']:.2f}x"
        )
        if not args.no_ray:
            print("Ray against the local pool at 2 CPUs (ratios of the medians, same run):")
            for name in ("ray, 2 CPUs, auto chunk", "ray, 2 CPUs, chunk 1"):
                m = runs[name]
                print(
                    f"  {name}: wall {m['wall'] / pool['wall']:.2f}x, steady rate {m['steady'] / pool['steady']:.2f}x "
                    f"(time per model {100 * (pool['steady'] / m['steady'] - 1):+.0f} %)"
                )
            chunk1, auto = runs["ray, 2 CPUs, chunk 1"]["steady"], runs["ray, 2 CPUs, auto chunk"]["steady"]
            print(f"  Ray's cost of a task (chunk 1 against auto, 2 CPUs): {2e3 * (1 / chunk1 - 1 / auto):.2f} ms")


if __name__ == "__main__":
    main()
