"""Tiny ONNX models built in code for the tests (no framework needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10  # onnxruntime here reads IR ≤ 13; onnx writes a newer one by default


def model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    opset: int = 17,
) -> onnx.ModelProto:
    """A model with one graph, at an IR version onnxruntime accepts."""
    g = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)


def tensor(name: str, shape: Sequence[int | str | None] | None, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    """A typed value (shape None: unknown)."""
    return helper.make_tensor_value_info(name, elem, shape)


def weight(name: str, array: np.ndarray) -> onnx.TensorProto:
    """An initializer."""
    return numpy_helper.from_array(np.asarray(array), name)


def mlp(
    d_in: int = 6, hidden: int = 8, d_out: int = 3, seed: int = 0, act: str = "Relu", batch: int | str = "N"
) -> onnx.ModelProto:
    """x → Gemm → act → Gemm → y, weights drawn from a seeded generator."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((d_in, hidden)).astype(np.float32)
    w2 = rng.standard_normal((hidden, d_out)).astype(np.float32)
    return model(
        [
            helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node(act, ["h"], ["a"], name="act"),
            helper.make_node("Gemm", ["a", "w2"], ["y"], name="fc2"),
        ],
        [tensor("x", [batch, d_in])],
        [tensor("y", [batch, d_out])],
        [weight("w1", w1), weight("w2", w2)],
    )


def save(m: onnx.ModelProto, path: Path) -> Path:
    """Write ``m`` to ``path`` and return the path."""
    onnx.save(m, str(path))
    return path
