"""Shared by the model-making scripts: golden effective ranks and the files of a case.

A *case* is three files side by side: ``NAME.onnx``, ``NAME.inputs.npz`` (arrays keyed by
ONNX input name, in the dtype each input declares) and ``NAME.golden.json`` (per-tap
effective ranks computed on the source framework's side, all rows).  Nothing here imports
onnx_near: the goldens must stay independent of the code they check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

MAX_IR_VERSION = 10  # onnxruntime here reads IR <= 13; keep a margin
ATOL = 1e-4

Tap = dict[str, Any]


def erank_numpy(matrix: np.ndarray) -> float:
    """Effective rank exp(H(sigma / sum sigma)) in float64 (Roy & Vetterli 2007); 0 for an all-zero matrix."""
    s = np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False)
    total = s.sum()
    if total == 0.0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def tap(module: str, type_: str, role: str, matrix: np.ndarray) -> Tap:
    """One golden tap from its all-rows matrix (rows x features), numpy side."""
    return {"module": module, "type": type_, "role": role, "shape": list(matrix.shape), "erank": erank_numpy(matrix)}


def cap_ir_version(path: Path, full_check: bool = True) -> onnx.ModelProto:
    """Make sure ir_version <= MAX_IR_VERSION (re-save if lowered) and that the model passes the checker."""
    model = onnx.load(str(path))
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
        onnx.save(model, str(path))
    onnx.checker.check_model(model, full_check=full_check)
    return model


def graph_inputs(model: onnx.ModelProto) -> list[tuple[str, np.dtype]]:
    """(name, dtype) of the model's real inputs (initializers excluded)."""
    init_names = {i.name for i in model.graph.initializer}
    out = []
    for i in model.graph.input:
        if i.name not in init_names:
            elem = i.type.tensor_type.elem_type
            out.append((i.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))))
    return out


def single_input(model: onnx.ModelProto) -> tuple[str, np.dtype]:
    """The one input of a single-input model."""
    inputs = graph_inputs(model)
    assert len(inputs) == 1, [n for n, _ in inputs]
    return inputs[0]


def ort_run(path: Path, feeds: dict[str, np.ndarray]) -> list[Any]:
    """Run the model file on the CPU provider (sanity checks only, never for goldens)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def save_inputs(path: Path, model: onnx.ModelProto, data: np.ndarray) -> dict[str, np.ndarray]:
    """Write the one input's data, checking its dtype against the model's declaration."""
    name, dtype = single_input(model)
    assert data.dtype == dtype, (data.dtype, dtype)
    feeds = {name: data}
    np.savez(path, **feeds)
    return feeds


def write_golden(
    out_dir: Path,
    name: str,
    framework: str,
    opset: int,
    taps: list[Tap],
    exporter: str = "",
    kind: str = "",
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``NAME.golden.json``: the taps (in the framework's order), their total, and ``extra`` fields."""
    golden: dict[str, Any] = {
        "model": f"{name}.onnx",
        "inputs": f"{name}.inputs.npz",
        "framework": framework,
        "exporter": exporter,
        "kind": kind,
        "opset": opset,
        "taps": taps,
        "total": float(sum(t["erank"] for t in taps)),
        **(extra or {}),
    }
    (out_dir / f"{name}.golden.json").write_text(json.dumps(golden, indent=1) + "\n")


def finish_case(
    out_dir: Path,
    name: str,
    data: np.ndarray,
    y: np.ndarray,
    taps: list[Tap],
    framework: str,
    opset: int,
    exporter: str,
    kind: str,
    extra: dict[str, Any] | None = None,
) -> None:
    """Check the exported ``NAME.onnx`` against the framework's output ``y`` (all samples,
    then 3), write its inputs (keyed by the ONNX input name) and its goldens."""
    onnx_path = out_dir / f"{name}.onnx"
    proto = cap_ir_version(onnx_path)
    feeds = save_inputs(out_dir / f"{name}.inputs.npz", proto, data)
    (ort_y,) = ort_run(onnx_path, feeds)
    np.testing.assert_allclose(ort_y, y, rtol=0, atol=ATOL)
    (ort_small,) = ort_run(onnx_path, {k: v[:3] for k, v in feeds.items()})
    np.testing.assert_allclose(ort_small, y[:3], rtol=0, atol=ATOL)
    write_golden(out_dir, name, framework, opset, taps, exporter, kind, extra)
