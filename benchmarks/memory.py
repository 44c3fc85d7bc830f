"""Peak memory of ``onnx-near score`` against what it must hold, as the rows asked for grow.

The issue's target: peak resident memory within 2× of (model weights + one batch of tap
tensors + the matrices kept), and asking for more rows must not grow it past that.  For the
ResNet-18 case of ``vs_pytorch.py`` (224×224, synthetic inputs), ``onnx-near score`` runs as
a fresh process per row count; its peak resident set (``wait4``) is compared with

* the imports alone (``python -c "import numpy, onnx, onnxruntime, onnx_near.cli"``);
* weights (the ONNX file's tensors) + batch budget (64 MiB, ``--batch-memory``'s
  default) + matrices (rows × columns × 4 bytes over the taps, from the JSON report).

    python benchmarks/memory.py [--rows square,1024,2048] [--case resnet18]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_pytorch  # the cases and their export, the launcher measuring peak memory

BATCH_BUDGET_MIB = 64


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rows", default="square,1024,2048")
    ap.add_argument("--case", default="resnet18", choices=sorted(vs_pytorch.BUILDERS))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        path = tmp / f"{args.case}.onnx"
        vs_pytorch.export(
            vs_pytorch.BUILDERS[args.case](), torch.zeros((1, *vs_pytorch.SAMPLE_SHAPES[args.case])), path
        )
        weights = sum(len(t.raw_data) or t.ByteSize() for t in onnx.load(str(path)).graph.initializer) / 2**20
        imports = vs_pytorch.run_process(
            [sys.executable, "-c", "import numpy, onnx, onnxruntime, onnx_near.cli"], tmp, 0
        )[1]
        cli = vs_pytorch.onnx_near_cli()
        print(
            f"{args.case}: weights {weights:.1f} MiB, batch budget {BATCH_BUDGET_MIB} MiB, imports alone {imports:.0f} MiB"
        )
        print(
            "| rows | matrices MiB | held MiB (w + b + m) | peak MiB | peak − imports | (peak − imports) / held | peak / held |"
        )
        print(
            "|------|--------------|----------------------|----------|----------------|-------------------------|-------------|"
        )
        for rows in [r.strip() for r in args.rows.split(",") if r.strip()]:
            _, peak, out = vs_pytorch.run_process(
                [*cli, "score", str(path), "--rows", rows, "--format", "json", "--seed", "0"], tmp, 0
            )
            report = json.loads(out)
            matrices = sum(layer["shape"][0] * layer["shape"][1] * 4 for layer in report["layers"]) / 2**20
            held = weights + BATCH_BUDGET_MIB + matrices
            print(
                f"| {rows} | {matrices:.1f} | {held:.0f} | {peak:.0f} | {peak - imports:.0f} | "
                f"{(peak - imports) / held:.2f} | {peak / held:.2f} |"
            )


if __name__ == "__main__":
    main()
