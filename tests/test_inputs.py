"""The model's inputs (onnx_near/inputs/): synthesis (token ids below the vocabulary, the
conventional companions of token ids, a decoder's empty past, SPEC §5), dynamic dimensions,
inputs that are not a batch, and the batch-axis rules."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from graphs import Graph, assert_scored, save
from onnx import TensorProto

import onnx_near
from onnx_near.errors import InputDataError

MODELS = Path(__file__).resolve().parents[1] / "models"
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
    assert_scored(r, taps=2)  # the MatMul and its Relu
    assert len([w for w in r.warnings if "was not given" in w]) == 3
    zeros = {"input_ids": np.zeros((8, T), np.int64), "attention_mask": np.zeros((8, T), np.int64)}
    assert onnx_near.score(path, data=zeros).score == 0.0  # a zero mask zeroes every activation


def test_synthetic_token_ids_stay_within_the_vocabulary() -> None:
    """Integer inputs read by an embedding table get ids below the table's size."""
    from onnx_near.graph import GraphIndex
    from onnx_near.inputs import input_specs, synthesise
    from onnx_near.rewrite import infer_shapes

    index = GraphIndex(infer_shapes(onnx.load(str(MODELS / "transformer.onnx"))))
    (spec,) = input_specs(index, {}, None)
    assert spec.vocab == 50 and spec.sample_shape == (12,)
    ids = synthesise(spec, 1000, np.random.default_rng(0))
    assert ids.dtype == np.int64 and ids.min() == 0 and ids.max() == 49


def test_dynamic_dimension_needs_a_shape(tmp_path: Path) -> None:
    """A dynamic non-batch dim must be given; with --shape the model scores."""
    g = Graph()
    g.output(g.op("Relu", g.op("MatMul", g.input("x", ["N", "T", 4]), g.weight(4, 5))), ["N", "T", 5])
    path = save(g.model(infer=False), tmp_path / "seq.onnx")
    with pytest.raises(InputDataError, match=r"--shape x=NxDx4"):
        onnx_near.score(path)
    r = onnx_near.score(path, shapes={"x": (None, 3, 4)})
    assert [l.shape for l in r.layers] == [(5, 5), (5, 5)]


def _decoder_with_past() -> onnx.ModelProto:
    """A one-layer decoder step as optimum exports it: ``input_ids [batch, sequence_length]``,
    a cache ``past_key_values.0.key [batch, 1, past_sequence_length, 8]`` concatenated with
    the new keys, and ``attention_mask [batch, past_sequence_length + sequence_length]``."""
    from onnx import TensorProto

    g = Graph(seed=3)
    ids = g.input("input_ids", ["batch", "sequence_length"], TensorProto.INT64)
    past = g.input("past_key_values.0.key", ["batch", 1, "past_sequence_length", 8])
    mask = g.input("attention_mask", ["batch", "past_sequence_length + sequence_length"], TensorProto.INT64)
    emb = g.op("Gather", g.weight(50, 8), ids)
    k = g.op("Unsqueeze", g.op("MatMul", emb, g.weight(8, 8)), g.const(np.array([1]), dtype=np.int64))
    keys = g.op("Concat", past, k, axis=2)
    m = g.op("Unsqueeze", g.op("Cast", mask, to=TensorProto.FLOAT), g.const(np.array([1, 3]), dtype=np.int64))
    y = g.op("Relu", g.op("ReduceSum", g.op("Mul", keys, m), g.const(np.array([2]), dtype=np.int64), keepdims=0))
    g.output(g.op("Gemm", g.op("Flatten", y), g.weight(8, 4)), ["batch", 4])
    return g.model(infer=False)


def test_a_decoders_past_is_empty_by_default(tmp_path: Path) -> None:
    """Issue #11 item 3: a decoder export with past key/values gets an empty past (length 0)
    and the mask's ``past_sequence_length + sequence_length`` is the sequence length; the
    score is that of the same data with the empty past given explicitly."""
    path = save(_decoder_with_past(), tmp_path / "decoder.onnx")
    r = onnx_near.score(path, shapes={"input_ids": (None, 6)}, seed=0)
    assert len(r.layers) == 3 and math.isfinite(r.score)
    assert any("empty past" in w for w in r.warnings)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, (16, 6))
    data: dict[str, np.ndarray] = {
        "input_ids": ids,
        "past_key_values.0.key": np.zeros((16, 1, 0, 8), np.float32),
        "attention_mask": np.ones((16, 6), np.int64),
    }
    a = onnx_near.score(path, data=data, seed=0)
    b = onnx_near.score(path, data={"input_ids": ids}, seed=0)
    assert b.score == a.score


# --- inputs that are not a batch (issue #11, item 2) ---------------------------------------

H = 8
SR = 16000


def static_state_model(state: tuple[int, ...] = (2, 1, H)) -> onnx.ModelProto:
    """A fully static recurrent step: x [1, 16] through a dense layer, added to a state [2, 1, 8]."""
    g = Graph()
    x = g.input("x", [1, 16])
    s = g.input("state", list(state))
    a = g.op("Relu", g.op("Gemm", x, g.weight(16, H), g.weight(H)))
    g.output(g.op("Tanh", g.op("Add", s, a)), list(state))
    return g.model(infer=False)


def vad_model(state: str = "N", transposed: bool = False, sr: tuple[int, ...] = ()) -> onnx.ModelProto:
    """A Silero-VAD-like step: x [N, 16], a state [2, N, 8] (batch on axis 1; ``state`` names
    its batch symbol) and an int64 sample rate, scaling the sum by sr / 16000.  ``transposed``:
    the state is declared [N, 2, 8] and transposed in the graph (the oracle, batched on axis 0)."""
    g = Graph()
    x = g.input("x", ["N", 16])
    s = g.input("state", ["N", 2, H] if transposed else [2, state, H])
    if transposed:
        s = g.op("Transpose", s, perm=[1, 0, 2])
    rate = g.input("sr", list(sr), TensorProto.INT64)
    a = g.op("Relu", g.op("Gemm", x, g.weight(16, H), g.weight(H)))
    scale = g.op("Div", g.op("Cast", rate, to=TensorProto.FLOAT), g.const(float(SR)))
    g.output(g.op("Tanh", g.op("Mul", g.op("Add", s, a), scale)), [2, "N", H])
    return g.model(infer=False)


def _vad_data(n: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "x": rng.standard_normal((n, 16)).astype(np.float32),
        "state": rng.standard_normal((2, n, H)).astype(np.float32),
        "sr": np.array(SR, np.int64),
    }


def test_a_static_state_is_fed_unchanged(tmp_path: Path) -> None:
    """A fully static model with a state [2, 1, 8]: the state keeps its shape (it used to be
    overwritten with the batch size, and onnxruntime refused it), zeros when not given."""
    path = save(static_state_model(), tmp_path / "static.onnx")
    r = onnx_near.score(path, seed=0)
    assert_scored(r, taps=3)  # Gemm, Relu, Tanh
    assert any("'state'" in w and "no batch axis" in w and "zeros" in w for w in r.warnings), r.warnings
    x = np.random.default_rng(0).standard_normal((12, 16)).astype(np.float32)
    zeros = onnx_near.score(path, data={"x": x, "state": np.zeros((2, 1, H), np.float32)}, rows="all")
    missing = onnx_near.score(path, data={"x": x}, rows="all")
    ones = onnx_near.score(path, data={"x": x, "state": np.ones((2, 1, H), np.float32)}, rows="all")
    assert zeros.scores == missing.scores and ones.scores != zeros.scores
    assert any("'state'" in w and "the data" in w for w in ones.warnings), ones.warnings
    assert [l.shape for l in ones.layers] == [(12, H), (12, H), (24, H)]


def test_a_state_batched_on_axis_1_and_a_scalar_sample_rate(tmp_path: Path) -> None:
    """A state [2, N, 8] is sliced along axis 1 and a scalar sample rate fed whole: the same
    score as the same model taking the state [N, 2, 8] (batch on axis 0) and transposing it."""
    path = save(vad_model(), tmp_path / "vad.onnx")
    oracle = save(vad_model(transposed=True), tmp_path / "oracle.onnx")
    data = _vad_data()
    r = onnx_near.score(path, data=data, rows="all")
    o = onnx_near.score(oracle, data={**data, "state": data["state"].transpose(1, 0, 2)}, rows="all")
    assert r.scores == pytest.approx(o.scores, rel=1e-6)
    assert_scored(r, taps=3)
    assert [l.shape for l in r.layers] == [l.shape for l in o.layers]
    assert any("'state'" in w and "axis 1" in w for w in r.warnings), r.warnings
    assert any("'sr'" in w and "no batch axis" in w for w in r.warnings), r.warnings
    given = onnx_near.score(path, data={"x": data["x"], "state": data["state"]}, rows="all", input_values={"sr": SR})
    assert given.scores == r.scores
    assert any("'sr'" in w and "16000" in w and "--input" in w for w in given.warnings), given.warnings
    # sliced into batches along axis 1: the same score whatever the batch size (and a sample rate [1])
    one = save(vad_model(sr=(1,)), tmp_path / "vad1.onnx")
    rows = [onnx_near.score(one, data={**data, "sr": np.array([SR])}, rows=6, batch_size=b).score for b in (1, 4)]
    oracle_one = save(vad_model(transposed=True, sr=(1,)), tmp_path / "oracle1.onnx")
    batch_first = {**data, "state": data["state"].transpose(1, 0, 2), "sr": np.array([SR])}
    assert rows[0] == rows[1] == pytest.approx(onnx_near.score(oracle_one, data=batch_first, rows=6).score, rel=1e-6)


def test_synthetic_inputs_with_a_sample_rate_given(tmp_path: Path) -> None:
    """No data: the state is drawn along its batch axis, the sample rate comes from --input;
    without it, one sentence asks for it."""
    path = save(vad_model(), tmp_path / "vad.onnx")
    r = onnx_near.score(path, seed=1, input_values={"sr": SR})
    assert_scored(r, taps=3)
    assert onnx_near.score(path, seed=1, input_values={"sr": SR}).scores == r.scores
    with pytest.raises(InputDataError, match=r"'sr'.*--input sr="):
        onnx_near.score(path)
    with pytest.raises(InputDataError, match=r"'sr'.*--input sr="):
        onnx_near.score(path, data={"x": _vad_data()["x"], "state": _vad_data()["state"]})


def test_batch_axis_option(tmp_path: Path) -> None:
    """--batch-axis says what the graph cannot: a state whose batch symbol no other input
    shares, or a static [1, 1, 8] state that is not a batch."""
    data = _vad_data()
    plain = onnx_near.score(save(vad_model(), tmp_path / "vad.onnx"), data=data, rows="all")
    path = save(vad_model(state="state_batch"), tmp_path / "unshared.onnx")
    with pytest.raises(InputDataError, match=r"'state'.*--batch-axis"):
        onnx_near.score(path, data=data, rows="all")
    told = onnx_near.score(path, data=data, rows="all", batch_axes={"state": 1})
    assert told.scores == plain.scores
    h0 = save(static_state_model(state=(1, 1, H)), tmp_path / "h0.onnx")
    x = np.random.default_rng(0).standard_normal((12, 16)).astype(np.float32)
    whole = {"x": x, "state": np.ones((1, 1, H), np.float32)}
    with pytest.raises(InputDataError, match=r"'state'.*axis 0.*--batch-axis state=none"):
        onnx_near.score(h0, data=whole)
    r = onnx_near.score(h0, data=whole, batch_axes={"state": None})
    assert_scored(r, taps=3)
    assert any("'state'" in w and "no batch axis" in w for w in r.warnings)


def test_data_counts_samples_along_each_batch_axis(tmp_path: Path) -> None:
    """Arrays with different numbers of samples: the message says along which axis."""
    path = save(vad_model(), tmp_path / "vad.onnx")
    data = {**_vad_data(), "state": np.zeros((2, 7, H), np.float32)}
    with pytest.raises(InputDataError, match=r"'x' 10 \(axis 0\).*'state' 7 \(axis 1\)"):
        onnx_near.score(path, data=data)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"input_values": {"rate": 1}}, r"--input names input 'rate'"),
        ({"batch_axes": {"rate": 0}}, r"--batch-axis names input 'rate'"),
        ({"batch_axes": {"state": 3}}, r"--batch-axis state=3.*3 dimensions"),
        ({"input_values": {"sr": 16000.5}}, r"'sr'.*integer"),
        ({"input_values": {"sr": SR, "state": 0}, "data": "vad"}, r"'state'.*both"),
    ],
)
def test_bad_input_options(tmp_path: Path, options: dict[str, Any], match: str) -> None:
    """Options naming no input, or an impossible axis or value: one sentence that says so."""
    path = save(vad_model(), tmp_path / "vad.onnx")
    data = _vad_data() if options.pop("data", None) else None
    options.setdefault("input_values", {"sr": SR})
    with pytest.raises(InputDataError, match=match):
        onnx_near.score(path, data=data, **options)


def lstm_vad_model(batch: int | str = "N") -> onnx.ModelProto:
    """Silero VAD's shape of things, with a real ONNX LSTM: x [B, 16] → dense → LSTM step whose
    initial h and c are the two halves of a state [2, B, 8], scaled by sr / 16000 → a speech
    probability, and the new state out.  ``batch=1``: the static export."""
    from onnx import helper

    g = Graph()
    x = g.input("x", [batch, 16])
    state = g.input("state", [2, batch, H])
    rate = g.input("sr", [], TensorProto.INT64)
    step = g.op("Unsqueeze", g.op("Relu", g.op("Gemm", x, g.weight(16, H), g.weight(H))), g.const([0], dtype=np.int64))
    g.nodes.append(helper.make_node("Split", [state, g.const([1, 1], dtype=np.int64)], ["h0", "c0"], axis=0))
    w, r, b = g.weight(1, 4 * H, H), g.weight(1, 4 * H, H), g.weight(1, 8 * H)
    g.nodes.append(helper.make_node("LSTM", [step, w, r, b, "", "h0", "c0"], ["y", "yh", "yc"], hidden_size=H))
    scale = g.op("Div", g.op("Cast", rate, to=TensorProto.FLOAT), g.const(float(SR)))
    h = g.op("Mul", g.op("Squeeze", "yh", g.const([0], dtype=np.int64)), scale)
    g.output(g.op("Sigmoid", g.op("Gemm", h, g.weight(H, 1), g.weight(1)), out="prob"), [batch, 1])
    g.output(g.op("Concat", "yh", "yc", axis=0, out="new_state"), [2, batch, H])
    return g.model(infer=False)


def test_an_lstm_with_a_static_state_scores_as_its_dynamic_export(tmp_path: Path) -> None:
    """End to end: the static export (state [2, 1, 8], fed whole) and the dynamic one (state
    [2, N, 8], zeros for every sample, batched on axis 1) give the same score on the same x."""
    static = save(lstm_vad_model(1), tmp_path / "static.onnx")
    dynamic = save(lstm_vad_model(), tmp_path / "dynamic.onnx")
    x = np.random.default_rng(5).standard_normal((20, 16)).astype(np.float32)
    a = onnx_near.score(static, data={"x": x}, input_values={"sr": SR}, rows="all")
    b = onnx_near.score(
        dynamic, data={"x": x, "state": np.zeros((2, 20, H), np.float32)}, input_values={"sr": SR}, rows="all"
    )
    assert_scored(a, taps=4)  # Gemm, Relu, the head's Gemm and Sigmoid (the LSTM is no tap)
    assert a.scores == pytest.approx(b.scores, rel=1e-5)
    assert [l.shape for l in a.layers] == [l.shape for l in b.layers]
    assert_scored(onnx_near.score(static, input_values={"sr": SR}), taps=4)  # synthetic x, the state zeros
    assert_scored(onnx_near.score(dynamic, input_values={"sr": SR}), taps=4)  # synthetic x and state


@pytest.mark.parametrize(
    "inputs,given,shapes,expected",
    [
        # rule 3: the symbol the inputs share, leading one of them
        ({"x": ["N", 16], "state": [2, "N", 8], "sr": []}, {}, {}, {"x": 0, "state": 1, "sr": None}),
        ({"ids": ["batch", "seq"], "mask": ["batch", "seq"]}, {}, {}, {"ids": 0, "mask": 0}),
        # shared, but leading no input: image and mask [1, C, H, W] of a static batch (rule 5)
        ({"image": [1, 3, "H", "W"], "mask": [1, 1, "H", "W"]}, {}, {}, {"image": 0, "mask": 0}),
        # rule 4: each input's own batch name (exporters' "<input>_dynamic_axes_1"), or unknown
        ({"a": ["a_dyn", 4], "b": ["b_dyn", 3], "c": [None, 2]}, {}, {}, {"a": 0, "b": 0, "c": 0}),
        ({"x": ["N", 16], "state": [2, 1, 8], "mask": [1, 16]}, {}, {}, {"x": 0, "state": None, "mask": None}),
        # rule 5: a fully static model; rule 6 for what does not lead with its batch
        ({"x": [1, 512], "state": [2, 1, 128], "sr": [1]}, {}, {}, {"x": 0, "state": None, "sr": None}),
        ({"x": [1, 10, 32], "h0": [1, 1, 64]}, {}, {}, {"x": 0, "h0": 0}),
        ({"sr": [], "x": [4, 8]}, {}, {}, {"sr": None, "x": 0}),
        # rules 1 and 2: --batch-axis, then the N of --shape
        ({"x": [1, 10, 32], "h0": [1, 1, 64]}, {"h0": None}, {}, {"x": 0, "h0": None}),
        ({"x": ["T", "N", 32], "h0": [1, "N", 64]}, {"x": 1}, {"h0": (1, None, 64)}, {"x": 1, "h0": 1}),
    ],
)
def test_batch_axis_rules(
    inputs: dict[str, list[int | str | None]],
    given: dict[str, int | None],
    shapes: dict[str, tuple[int | None, ...]],
    expected: dict[str, int | None],
) -> None:
    """Each rule of batch_axes, on the declared shapes alone."""
    from onnx_near.inputs import batch_axes

    g = Graph()
    for name, dims in inputs.items():
        g.input(name, dims)
    g.output(g.op("Relu", next(iter(inputs))))
    assert batch_axes(g.index(check=False), given, shapes) == expected
