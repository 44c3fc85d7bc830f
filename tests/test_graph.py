"""The graph index (onnx_near/graph.py): parameter counts wherever and however the graph keeps
its weights, and the weightless and split copies used for shape inference and onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from graphs import Graph


def test_without_weights_keeps_everything_but_the_weights_data() -> None:
    """The weightless copy used for shape inference: same graph, opsets, metadata; big tensors empty."""
    from onnx_near.graph import without_weights

    g = Graph()
    h = g.op("Relu", g.op("Gemm", g.input("x", ["N", 100]), g.weight(100, 64)))
    g.output(g.op("Gemm", h, g.weight(64, 10)), ["N", 10])
    model = g.model(infer=False)
    model.doc_string = "kept"
    onnx.helper.set_model_props(model, {"author": "test"})
    light = without_weights(model, keep_below=1000)
    assert light.doc_string == "kept" and list(light.metadata_props) == list(model.metadata_props)
    assert list(light.opset_import) == list(model.opset_import) and light.ir_version == model.ir_version
    assert list(light.graph.node) == list(model.graph.node) and list(light.graph.output) == list(model.graph.output)
    for a, b in zip(light.graph.initializer, model.graph.initializer):
        assert (a.name, a.data_type, list(a.dims)) == (b.name, b.data_type, list(b.dims))
        assert (a.ByteSize() < 100) == (np.prod(b.dims) >= 1000)
    assert model.graph.initializer[0].ByteSize() > 100 * 64 * 4  # the original is untouched


def test_parameters_merged_by_deduplication_count_per_reader() -> None:
    """Issue #11 item 8: the dynamo exporter's optimiser merges equal-valued initializers
    (BERT-base: 25 LayerNorm weights of ones become one tensor, read by 25 nodes; 85 zero
    biases one) and leaves 0-d scalars (the attention scale).  A uniform initializer counts
    once per reader, a tied random weight once, a 0-d float not at all: here PyTorch's count
    of three LayerNorm(8) and two Linear(8, 8) sharing one weight matrix (tied) is
    3·(8+8) + 8·8 + 2·8 = 128."""
    from onnx_near.graph import GraphIndex, parameter_count

    g = Graph(opset=17)
    ones, zeros, w = g.const(np.ones(8), "ones"), g.const(np.zeros(8), "zeros"), g.weight(8, 8)
    scale = g.const(np.float32(0.35), "scale")
    h = g.input("x", ["N", 8])
    for _ in range(3):
        h = g.op("LayerNormalization", h, ones, zeros, axis=-1)
    for _ in range(2):
        h = g.op("Add", g.op("MatMul", h, w), zeros)
    g.output(g.op("Mul", h, scale), ["N", 8])
    assert parameter_count(GraphIndex(g.model())) == 3 * 16 + 64 + 2 * 8


def test_quantised_operator_weights_count_as_parameters() -> None:
    """A QOperator layer's integer weight counts as the parameters it stands for; its scales
    and zero points do not (a QLinearConv 4←3, 3×3 with an int32 bias: 108 + 4)."""
    from onnx import TensorProto

    from onnx_near.graph import GraphIndex, parameter_count

    g = Graph(opset=17)
    x = g.input("x", ["N", 3, 8, 8], TensorProto.UINT8)
    s, z = g.const(np.float32(0.1)), g.const(np.uint8(128), dtype=np.uint8)
    wq = g.const(np.ones((4, 3, 3, 3)), dtype=np.int8)
    ws, wz = g.const(np.full(4, 0.01)), g.const(np.zeros(4), dtype=np.int8)
    b = g.const(np.zeros(4), dtype=np.int32)
    y = g.op("QLinearConv", x, s, z, wq, ws, wz, s, z, b)
    g.output(y)
    assert parameter_count(GraphIndex(g.model(infer=False, check=False))) == 108 + 4


def test_weights_in_constant_nodes_are_counted() -> None:
    """A model whose weights sit in Constant nodes (Paddle/OpenVINO conversions) has the same
    parameter count as the same model with initializers; scalar constants are not parameters
    (issue #11, item 6)."""
    from onnx import helper

    from onnx_near.graph import GraphIndex, parameter_count

    g = Graph()
    h = g.op("Gemm", g.input("x", ["N", 6]), g.weight(6, 8), g.weight(8))
    g.output(g.op("Mul", g.op("Relu", h), g.constant_node(0.5)), ["N", 8])  # a scalar, as exporters write it
    with_inits = g.model(infer=False)
    moved = onnx.ModelProto()
    moved.CopyFrom(with_inits)
    nodes = [helper.make_node("Constant", [], [t.name], value=t) for t in moved.graph.initializer]
    del moved.graph.initializer[:]
    old = list(moved.graph.node)
    del moved.graph.node[:]
    moved.graph.node.extend(nodes + old)
    assert parameter_count(GraphIndex(with_inits)) == 6 * 8 + 8
    assert parameter_count(GraphIndex(moved)) == 6 * 8 + 8


def test_parameter_count_matches_pytorch_on_the_digits_models() -> None:
    """PyTorch's own count (accuracy.csv's params, from make_search_space.py) for all 64 models,
    including BatchNorm models whose second γ/β the exporter deduplicated into Identity nodes."""
    import csv

    from onnx_near.graph import GraphIndex, parameter_count
    from onnx_near.load import load_model

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "digits"
    rows = list(csv.DictReader((root / "accuracy.csv").open()))
    got = {r["model"]: parameter_count(GraphIndex(load_model(root / r["model"]).proto)) for r in rows}
    assert len(rows) == 64 and got == {r["model"]: int(r["params"]) for r in rows}


def test_parameter_count_of_deduplicated_aliases() -> None:
    """An initializer named again through Identity for a second layer counts twice; BN statistics never."""
    g = Graph()
    ones, zeros = g.const(np.ones(8), "gamma"), g.const(np.zeros(8), "beta")
    h = g.op("Gemm", g.input("x", ["N", 4]), g.weight(4, 8))
    alias: Callable[[str], str] = lambda t: g.op("Identity", t)  # noqa: E731  (how torch.onnx names a deduplicated copy)
    h = g.op("BatchNormalization", h, ones, zeros, alias(zeros), alias(ones))
    h = g.op("Gemm", h, g.weight(8, 8))
    h = g.op("BatchNormalization", h, alias(ones), alias(zeros), alias(zeros), alias(ones))
    g.output(h, ["N", 8])
    from onnx_near.graph import GraphIndex, parameter_count

    # two Gemm weights (4·8 + 8·8) and two BatchNorms' γ and β (2·16)
    assert parameter_count(GraphIndex(g.model(infer=False))) == 32 + 64 + 32
