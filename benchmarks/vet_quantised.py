"""`onnx-near vet --baseline` at real size: a float model quantised to int8 must pass against
its float original, and a square weight stored transposed must be caught at its layer.

    python benchmarks/vet_quantised.py MODEL.onnx [--samples 64] [--threads 2]

MODEL is a float ONNX file with one image input (N, C, H, W) — e.g. torchvision's ResNet-50
exported with ``torch.onnx.export(..., opset_version=17, do_constant_folding=False)``.  The
benchmark writes into a temporary folder:

* ``int8.onnx``: MODEL quantised by ``onnxruntime.quantization.quantize_static`` (QDQ,
  per-tensor, MinMax), calibrated on ``--samples`` smooth random images (onnx-near's own
  synthetic image inputs, seed 0);
* ``transposed.onnx``: MODEL with the weight of its first convolution whose output and input
  channel counts are equal stored with those two axes swapped.

Then it vets ``int8.onnx`` and ``transposed.onnx`` against MODEL on the same smooth random
images and prints, per file: passed or failed, the findings, the largest divergence of any
tap (‖A − B‖ ÷ ‖B‖) and the largest by which a tap differs more than its feed (the quantity
the *diverged* rule compares with its 50 % threshold), and the wall time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_near.config import ScoreConfig
from onnx_near.inputs import InputSpec, synthesise
from onnx_near.vet import VetResult, vet


def images(model: onnx.ModelProto, n: int) -> tuple[str, np.ndarray]:
    x = model.graph.input[0]
    dims = [d.dim_value for d in x.type.tensor_type.shape.dim][1:]
    spec = InputSpec(x.name, np.dtype(np.float32), tuple(dims), None, None)
    return x.name, synthesise(spec, n, np.random.default_rng(0), "smooth")


def quantise(src: Path, dst: Path, name: str, data: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter([{name: data[i : i + 8]} for i in range(0, len(data), 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ)


def transpose_square_conv(model: onnx.ModelProto, dst: Path) -> str:
    weights = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        w = weights.get(n.input[1]) if n.op_type == "Conv" and len(n.input) > 1 else None
        if w is not None and len(w.dims) == 4 and w.dims[0] == w.dims[1] and w.dims[0] > 1:
            a = numpy_helper.to_array(w)
            w.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(a.transpose(1, 0, 2, 3)), w.name))
            onnx.save(model, str(dst))
            return n.name
    raise SystemExit("the model has no convolution with as many output as input channels")


def summary(label: str, r: VetResult, seconds: float) -> str:
    by_tensor = {v.tensor: v for v in r.layers}
    divs = [v.divergence for v in r.layers if v.divergence is not None]
    more = [
        v.divergence - (by_tensor[v.feed].divergence or 0.0 if v.feed in by_tensor else 0.0)
        for v in r.layers
        if v.divergence is not None
    ]
    worst = max(r.layers, key=lambda v: v.divergence or 0.0)
    lines = [
        f"{label}: {'PASSED' if r.passed else 'FAILED'} in {seconds:.0f} s; taps compared {len(divs)} of {len(r.layers)}; "
        f"largest divergence {max(divs):.1%} (#{worst.index} {worst.name}); largest beyond its feed {max(more):.1%}",
        *(f"    {f}" for f in r.findings[:6]),
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: its default)")
    args = ap.parse_args()
    model = onnx.load(str(args.model))
    name, data = images(model, args.samples)
    cfg = ScoreConfig(threads=args.threads or 0)
    with tempfile.TemporaryDirectory() as tmp:
        int8, transposed = Path(tmp) / "int8.onnx", Path(tmp) / "transposed.onnx"
        t0 = time.monotonic()
        quantise(args.model, int8, name, data)
        print(f"quantised in {time.monotonic() - t0:.0f} s")
        layer = transpose_square_conv(model, transposed)
        print(f"transposed the weight of {layer!r}")
        for label, path in (("int8 against float", int8), (f"{layer} transposed against float", transposed)):
            t0 = time.monotonic()
            r = vet(path, {name: data}, cfg, baseline=args.model)
            print(summary(label, r, time.monotonic() - t0), flush=True)


if __name__ == "__main__":
    main()
