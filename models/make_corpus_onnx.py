"""Corpus cases made from the shipped models by ONNX tooling rather than by an exporter.

Run from the repository root (needs only onnx and onnxruntime)::

    python models/make_corpus_onnx.py

* ``corpus/ort-extended/``: each shipped model after onnxruntime's own graph optimiser at
  ``ORT_ENABLE_EXTENDED``, saved with ``optimized_model_filepath``.  The graphs then hold
  onnxruntime's contrib ops (FusedConv, FusedGemm, QuickGelu, BiasGelu, FusedMatMul,
  SkipLayerNormalization) that onnx-near must split back.
* ``corpus/onnx-version-converter/``: shipped models converted by ``onnx.version_converter``
  to newer opsets, up to the newest one onnxruntime accepts.

Goldens: the optimiser and the converter do not change what the network computes, so each
case keeps the goldens of its source model (computed by PyTorch / scikit-learn, see
make_models.py), with one structural exception: when onnxruntime folds a BatchNorm into the
Conv before it, the Conv's own output no longer exists; its golden tap (a Conv tap directly
followed by a BatchNorm tap in the framework's order) is dropped and the BatchNorm output,
which the folded Conv now produces, stays.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime as ort
from common import ATOL, ort_run, write_golden

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
SHIPPED = ["mlp", "cnn", "transformer", "sklearn_mlp"]
# Cases of the PyTorch corpus that the optimiser fuses in other ways (FusedConv with a
# residual sum, FusedGemm with LeakyRelu/Sigmoid, contrib Gelu, BiasGelu in nn.TransformerEncoder).
TORCH_CASES = ["resblock", "mlp_gelu", "mlp_leakyrelu", "mlp_sigmoid", "transformer_encoder"]
OPSETS = [18, 21, 23, 25, 26]  # 26: the newest opset onnxruntime 1.31 accepts (onnx knows up to 28)


def _golden(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.golden.json").read_text())


def _drop_folded_convs(taps: list[dict]) -> list[dict]:
    """Without the Conv taps that a BatchNorm tap follows directly (folded by the optimiser)."""
    return [
        t
        for k, t in enumerate(taps)
        if not (t["type"].startswith("Conv") and k + 1 < len(taps) and taps[k + 1]["type"].startswith("BatchNorm"))
    ]


def _same_outputs(a: Path, b: Path, feeds: dict[str, np.ndarray]) -> None:
    for x, y in zip(ort_run(a, feeds), ort_run(b, feeds)):
        if isinstance(x, np.ndarray):
            np.testing.assert_allclose(y, x, rtol=0, atol=ATOL)


def _feeds(folder: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(folder / f"{name}.inputs.npz") as z:
        return {k: z[k] for k in z.files}


def build_ort_extended() -> None:
    out = CORPUS / "ort-extended"
    out.mkdir(parents=True, exist_ok=True)
    sources = [(HERE, n, n) for n in SHIPPED] + [
        (CORPUS / "torch-torchscript", n, f"torchscript_{n}") for n in TORCH_CASES
    ]
    for folder, source, name in sources:
        target = out / f"{name}.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(target)
        ort.InferenceSession(str(folder / f"{source}.onnx"), options, providers=["CPUExecutionProvider"])
        model = onnx.load(str(target))
        contrib = sorted({n.op_type for n in model.graph.node if n.domain == "com.microsoft"})
        assert contrib, f"{name}: the optimiser fused nothing"
        _same_outputs(folder / f"{source}.onnx", target, _feeds(folder, source))
        shutil.copyfile(folder / f"{source}.inputs.npz", out / f"{name}.inputs.npz")
        g = _golden(folder, source)
        folded = any(n.op_type == "FusedConv" for n in model.graph.node) and any(
            t["type"].startswith("BatchNorm") for t in g["taps"]
        )
        taps = _drop_folded_convs(g["taps"]) if folded else g["taps"]
        kind = f"{g['kind']} with {', '.join(contrib)}"
        write_golden(out, name, g["framework"], g["opset"], taps, exporter="onnxruntime ORT_ENABLE_EXTENDED", kind=kind)
        print(f"ort-extended/{name}: {kind}")


def build_opsets() -> None:
    out = CORPUS / "onnx-version-converter"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("mlp", "cnn", "transformer"):
        source = onnx.load(str(HERE / f"{name}.onnx"))
        for opset in OPSETS:
            case = f"{name}_opset{opset}"
            model = onnx.version_converter.convert_version(source, opset)
            model.ir_version = onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)])
            onnx.checker.check_model(model)
            onnx.save(model, str(out / f"{case}.onnx"))
            _same_outputs(HERE / f"{name}.onnx", out / f"{case}.onnx", _feeds(HERE, name))
            shutil.copyfile(HERE / f"{name}.inputs.npz", out / f"{case}.inputs.npz")
            g = _golden(HERE, name)
            write_golden(
                out,
                case,
                g["framework"],
                opset,
                g["taps"],
                exporter="onnx.version_converter",
                kind=f"{g['kind']} at opset {opset}",
            )
            print(f"onnx-version-converter/{case}")


def main() -> None:
    build_ort_extended()
    build_opsets()


if __name__ == "__main__":
    main()
