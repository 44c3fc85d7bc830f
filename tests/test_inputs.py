"""Input synthesis: the conventional companions of token ids (SPEC §5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from graphs import Graph, save
from onnx import TensorProto

import onnx_near

T = 6


def token_model() -> onnx.ModelProto:
    """A BERT-like front: token, token-type and position embeddings, masked, then a dense layer."""
    g = Graph()
    ids = g.input("input_ids", ["N", T], TensorProto.INT64)
    mask = g.input("attention_mask", ["N", T], TensorProto.INT64)
    types = g.input("token_type_ids", ["N", T], TensorProto.INT64)
    pos = g.input("position_ids", ["N", T], TensorProto.INT64)
    emb = g.op("Gather", g.weight(50, 8), ids)
    emb = g.op("Add", emb, g.op("Gather", g.weight(2, 8), types))
    emb = g.op("Add", emb, g.op("Gather", g.weight(T, 8), pos))
    keep = g.op("Unsqueeze", g.op("Cast", mask, to=TensorProto.FLOAT), g.const(np.array([-1]), dtype=np.int64))
    h = g.op("Mul", emb, keep)
    g.output(g.op("Relu", g.op("MatMul", h, g.weight(8, 8))), ["N", T, 8])
    return g.model(infer=False)


def test_companions_are_filled_by_convention(tmp_path: Path) -> None:
    """Only token ids given: the mask is ones, token types zeros, positions 0…T−1 — the same
    score as when those arrays are given by hand — and the report says what was filled."""
    path = save(token_model(), tmp_path / "tokens.onnx")
    ids = np.random.default_rng(0).integers(0, 50, size=(4, T)).astype(np.int64)
    explicit = {
        "input_ids": ids,
        "attention_mask": np.ones((4, T), np.int64),
        "token_type_ids": np.zeros((4, T), np.int64),
        "position_ids": np.tile(np.arange(T, dtype=np.int64), (4, 1)),
    }
    given = onnx_near.score(path, data=explicit, rows="all")
    filled = onnx_near.score(path, data={"input_ids": ids}, rows="all")
    assert filled.scores == given.scores
    notes = [w for w in filled.warnings if "was not given" in w]
    assert len(notes) == 3 and any("'attention_mask'" in n and "ones" in n for n in notes)
    assert not [w for w in given.warnings if "was not given" in w]


def test_a_token_model_scores_without_data(tmp_path: Path) -> None:
    """No data at all: ids drawn below the vocabulary, the companions by convention (a mask
    read by no embedding table used to be refused)."""
    path = save(token_model(), tmp_path / "tokens.onnx")
    r = onnx_near.score(path, seed=1)
    assert r.score > 0 and len([w for w in r.warnings if "was not given" in w]) == 3
    zeros = {"input_ids": np.zeros((8, T), np.int64), "attention_mask": np.zeros((8, T), np.int64)}
    assert onnx_near.score(path, data=zeros).score == 0.0  # a zero mask zeroes every activation


def test_made_up_symbolic_dims_show_as_unknown() -> None:
    """The layers table shows N and seq_len, but an exporter's generated dim name as '?'."""
    from onnx_near.report import _dims

    assert _dims(("N", 3, "seq_len")) == "N×3×seq_len"
    assert _dims(("LayerNormalizationonnx::Gather_1426_dim_0", 768)) == "?×768"
    assert _dims((None, 4)) == "?×4" and _dims(None) == "?"


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
