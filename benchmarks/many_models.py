"""Models per second of `onnx-near rank` over a folder of a few hundred small models.

    python benchmarks/many_models.py [--models 300]

Writes small MLPs and CNNs (varied width and activation) to a temporary folder, then ranks
them with 1 and with 2 processes and prints models per second and the per-model time,
with the in-process split of one model's time (imports excluded) for comparison.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=300)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for k in range(args.models):
            onnx.save(small_model(k, rng), str(folder / f"m{k:04d}.onnx"))
        one = [onnx_near.score(folder / "m0003.onnx").timings for _ in range(5)]
        split = {k: statistics.median(t[k] for t in one) * 1e3 for k in one[0]}
        print(f"{args.models} models (MLPs 32-w-w-10, w in 16..128), synthetic inputs")
        print(
            f"one model in-process: {split['total']:.1f} ms (load+rewrite {split['load_rewrite']:.1f}, session "
            f"{split['session']:.1f}, forward {split['forward']:.1f}, erank {split['erank']:.1f})"
        )
        for jobs in (1, 2):
            t0 = time.perf_counter()
            r = rank_models([folder], jobs=jobs)
            dt = time.perf_counter() - t0
            assert all(m.error is None for m in r.models)
            print(
                f"jobs={jobs}: {dt:.1f} s, {args.models / dt:.1f} models/s, {1e3 * dt / args.models:.1f} ms per model"
            )


if __name__ == "__main__":
    main()
