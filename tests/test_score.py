"""The scoring pipeline end to end (onnx_near/score.py): sampling, determinism, modes, rows,
invalid layers, what cannot be tapped, exporter quirks, one forward pass per batch, the GPU path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import Graph, add_only, loop_body, mlp, save

import onnx_near
from onnx_near.errors import InputDataError, NoTapsError

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_same_seed_same_score_bit_for_bit() -> None:
    """The same model, data and seed give the same score, bit for bit."""
    a = onnx_near.score(MODELS / "cnn.onnx", seed=3, repetitions=2)
    b = onnx_near.score(MODELS / "cnn.onnx", seed=3, repetitions=2)
    assert a.scores == b.scores
    assert [l.erank for l in a.layers] == [l.erank for l in b.layers]
    c = onnx_near.score(MODELS / "cnn.onnx", seed=4, repetitions=2)
    assert c.scores != a.scores


def test_square_matrices_by_default() -> None:
    """Each matrix has as many rows as columns (the paper's choice)."""
    r = onnx_near.score(MODELS / "transformer.onnx")
    assert all(l.shape[0] == l.shape[1] for l in r.layers)
    assert {l.shape[1] for l in r.layers} == {32, 64, 5}


def test_repetitions_mean_and_std(tmp_path: Path) -> None:
    """The score is the mean of the repetitions' totals, with their sample standard deviation."""
    r = onnx_near.score(MODELS / "mlp.onnx", repetitions=4, seed=0)
    assert len(r.scores) == 4 and len(set(r.scores)) == 4
    assert r.score == pytest.approx(np.mean(r.scores))
    assert r.score_std == pytest.approx(np.std(r.scores, ddof=1))
    # a repetition's total is the sum of its taps' eranks: the means add up to the score, and the
    # totals' spread is at most the taps' spreads summed (a standard deviation is subadditive)
    assert sum(l.erank for l in r.layers) == pytest.approx(r.score, rel=1e-12)
    assert all(l.erank_std > 0 for l in r.layers)  # every repetition draws its own rows
    assert r.score_std <= sum(l.erank_std for l in r.layers) * (1 + 1e-12)
    # one tap: its per-repetition eranks are the totals, so its spread is theirs exactly
    g = Graph()
    g.output(g.op("Gemm", g.input("x", ["N", 6]), g.weight(6, 8)), ["N", 8])
    one = onnx_near.score(save(g.model(infer=False), tmp_path / "one.onnx"), repetitions=4, seed=0)
    (tap,) = one.layers
    assert len(set(one.scores)) == 4 and tap.erank == pytest.approx(np.mean(one.scores), rel=1e-12)
    assert tap.erank_std == pytest.approx(np.std(one.scores, ddof=1), rel=1e-12)


def test_rows_all_is_not_random() -> None:
    """With all rows of the user's data, the seed changes nothing."""
    data = MODELS / "cnn.inputs.npz"
    a = onnx_near.score(MODELS / "cnn.onnx", data=data, rows="all", seed=0, bn_batch=32)  # the data's 32 samples
    b = onnx_near.score(MODELS / "cnn.onnx", data=data, rows="all", seed=9, bn_batch=32)
    assert a.score == b.score
    assert a.layers[0].shape == (32 * 16 * 16, 8)


def test_explicit_row_count() -> None:
    """--rows N gives N×C matrices."""
    r = onnx_near.score(MODELS / "cnn.onnx", rows=40)
    assert all(l.shape[0] == 40 for l in r.layers)


def test_batch_size_does_not_change_the_score() -> None:
    """Streaming batch by batch keeps exactly the rows a single pass would (running statistics:
    with the batch's own, the batch is part of the score)."""
    a = onnx_near.score(MODELS / "cnn.onnx", seed=1, batch_size=1, batchnorm="running")
    b = onnx_near.score(MODELS / "cnn.onnx", seed=1, batch_size=64, batchnorm="running")
    assert a.scores == b.scores


def test_strict_mode_taps_activation_sites_only() -> None:
    """taps='activations': the ReLU inputs (BN outputs) and outputs; convs and the final Gemm are not taps."""
    r = onnx_near.score(MODELS / "cnn.onnx", taps="activations")
    assert [(l.op, l.role) for l in r.layers] == [
        ("BatchNormalization", "pre"),
        ("Relu", "post"),
        ("BatchNormalization", "pre"),
        ("Relu", "post"),
    ]


def test_nan_activations_make_the_layer_invalid(tmp_path: Path) -> None:
    """A tap with NaN activations has no erank: reported invalid with the reason, score NaN (not 0)."""
    m = mlp()
    w = onnx.numpy_helper.to_array(m.graph.initializer[1]).copy()
    w[0, 0] = np.nan
    m.graph.initializer[1].CopyFrom(onnx.numpy_helper.from_array(w, "w2"))
    r = onnx_near.score(save(m, tmp_path / "nan.onnx"))
    status = {l.name: l.status for l in r.layers}
    assert status == {"fc1": "ok", "act": "ok", "fc2": "invalid"}
    assert "NaN" in (r.layers[2].reason or "")
    assert math.isnan(r.score) and not r.valid
    assert json.loads(onnx_near.report.to_json(r))["score"] is None


def test_too_few_samples_for_square_warns_and_goes_rectangular(tmp_path: Path) -> None:
    """With 5 samples and 8 neurons the matrix is 5×8 and a warning says so."""
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    r = onnx_near.score(save(mlp(), tmp_path / "m.onnx"), data=x)
    assert r.layers[0].shape == (5, 8)
    assert r.warnings and "square" in r.warnings[0]


def test_too_few_samples_for_explicit_rows_is_an_error(tmp_path: Path) -> None:
    """Asking for more rows than the data holds is an error naming the tap."""
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    with pytest.raises(InputDataError, match="--rows 10"):
        onnx_near.score(save(mlp(), tmp_path / "m.onnx"), data=x, rows=10)


def test_fixed_batch_model(tmp_path: Path) -> None:
    """A model whose batch dim is fixed at 4 is fed batches of 4 (the last one padded)."""
    r = onnx_near.score(save(mlp(batch=4), tmp_path / "b4.onnx"), seed=0)
    assert [l.shape for l in r.layers] == [(8, 8), (8, 8), (3, 3)]


def test_model_without_taps(tmp_path: Path) -> None:
    """A graph with no weighted layer and no activation is refused with NoTapsError."""
    with pytest.raises(NoTapsError):
        onnx_near.score(save(add_only(), tmp_path / "add.onnx"))


def test_axis_override(tmp_path: Path) -> None:
    """--axis TENSOR=K makes axis K the columns."""
    tap = "/features/features.0/Conv_output_0"
    r = onnx_near.score(MODELS / "cnn.onnx", axes={tap: 2})
    assert r.layers[0].axis == 2 and r.layers[0].shape == (16, 16)


def test_loop_body_is_reported_and_the_rest_scored(tmp_path: Path) -> None:
    """Tensors inside a Loop body cannot be tapped: they are listed as skipped; the main graph is scored."""
    from onnx import helper

    body = loop_body()
    g = Graph()
    h = g.op("Relu", g.op("Gemm", g.input("x", ["N", 6]), g.weight(6, 8)))
    g.const(np.random.default_rng(5).standard_normal((8, 8)), "wb")
    trips, cond = (
        g.const(np.array(3, np.int64), "trips", dtype=np.int64),
        g.const(np.array(True), "cond", dtype=np.bool_),
    )
    g.nodes.append(helper.make_node("Loop", [trips, cond, h], ["y"], body=body, name="refine"))
    g.output("y", ["N", 8])
    r = onnx_near.score(save(g.model(infer=False, check=False), tmp_path / "loop.onnx"))
    assert [l.op for l in r.layers] == ["Gemm", "Relu"]
    (skipped,) = r.skipped
    assert skipped.name == "refine" and skipped.op == "Loop" and "MatMul" in skipped.reason and "Tanh" in skipped.reason


def test_exporter_shape_quirks_do_not_stop_scoring(tmp_path: Path) -> None:
    """No value_info, outputs without shapes, an unnamed dynamic batch dim: the same score as the tidy model."""
    m = onnx.load(str(MODELS / "cnn.onnx"))
    del m.graph.value_info[:]
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
    m.graph.input[0].type.tensor_type.shape.dim[0].Clear()  # neither dim_value nor dim_param
    quirky = onnx_near.score(save(m, tmp_path / "quirky.onnx"), seed=2)
    tidy = onnx_near.score(MODELS / "cnn.onnx", seed=2)
    assert quirky.scores == tidy.scores


def test_one_forward_pass_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batch of a repetition's window runs once, with every tap that has rows in it:
    a budget smaller than one sample's tap tensors only makes the batches smaller (never a
    pass per group of taps), and the scores are those of one big batch, bit for bit."""
    from onnx_near import run

    batches: list[int] = []
    plain_run, plain_run_into = run.Runner.run, run.Runner.run_into

    def counting(self: run.Runner, feeds: dict[str, np.ndarray], *args: object) -> object:
        batches.append(int(feeds["input"].shape[0]))
        return plain_run(self, feeds, *args)  # type: ignore[arg-type]

    def counting_into(self: run.Runner, feeds: dict[str, np.ndarray], *args: object) -> object:
        batches.append(int(feeds["input"].shape[0]))
        return plain_run_into(self, feeds, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(run.Runner, "run", counting)  # the probe
    monkeypatch.setattr(run.Runner, "run_into", counting_into)  # the batches
    whole = onnx_near.score(MODELS / "cnn.onnx", seed=5, repetitions=2, batch_size=64, batchnorm="running")
    assert batches == [1, 2, 10, 10]  # two probes (1 sample, then 2 for shapes), the window (10) once a repetition
    batches.clear()
    small = onnx_near.score(MODELS / "cnn.onnx", seed=5, repetitions=2, max_batch_bytes=6000, batchnorm="running")
    window = sum(batches[2:]) // 2
    assert len(batches) - 2 == 2 * -(-window // max(batches[2:]))  # ceil(window / batch) passes a repetition
    assert max(batches[2:]) < window
    assert small.scores == whole.scores
    assert [l.erank for l in small.layers] == [l.erank for l in whole.layers]


def _cuda_with_cupy() -> bool:
    try:
        import cupy
        import onnxruntime as ort

        cupy.cuda.runtime.getDeviceCount()
        return "CUDAExecutionProvider" in ort.get_available_providers()
    except Exception:
        return False


@pytest.mark.skipif(not _cuda_with_cupy(), reason="no onnxruntime-gpu with cupy and a CUDA device")
@pytest.mark.parametrize("name", ["mlp", "cnn", "transformer"])
def test_gpu_path_agrees_with_the_cpu(name: str) -> None:
    """On a GPU (CUDA provider, tap outputs bound in device memory, ranks in cupy): the same
    taps and rows, and effective ranks within float32 forward-pass noise of the CPU's."""
    path = Path(__file__).resolve().parents[1] / "models" / f"{name}.onnx"
    gpu = onnx_near.score(path, device="cuda", seed=0)
    cpu = onnx_near.score(path, device="cpu", seed=0)
    assert gpu.provider == "CUDAExecutionProvider"
    assert [l.row_starts for l in gpu.layers] == [l.row_starts for l in cpu.layers]
    assert [l.erank for l in gpu.layers] == pytest.approx([l.erank for l in cpu.layers], rel=1e-4)


def test_weights_in_constant_nodes_score_like_initializers(tmp_path: Path) -> None:
    """Issue #11 item 6: a weight is a weight wherever the graph keeps it.  The same network
    with its weights in Constant nodes (the Conv's behind DequantizeLinear, the Gemm's behind
    Cast, as Paddle/OpenVINO conversions write them) has the same taps, structural ranks,
    parameter count, MACs and NEAR score as with initializers."""
    from onnx import TensorProto, helper, numpy_helper

    from onnx_near.graph import GraphIndex
    from onnx_near.rewrite import infer_shapes
    from onnx_near.taps import plan_taps

    g = Graph()
    c = g.op("Conv", g.input("x", ["N", 3, 8, 8]), g.weight(6, 3, 3, 3), g.weight(6), pads=[1, 1, 1, 1])
    f = g.op("Flatten", g.op("Relu", c))
    g.output(g.op("Tanh", g.op("Gemm", f, g.weight(6 * 64, 10), g.weight(10))), ["N", 10])
    plain = g.model()
    held = onnx.ModelProto()
    held.CopyFrom(plain)
    nodes = []
    conv_w, gemm_w = plain.graph.node[0].input[1], next(n for n in plain.graph.node if n.op_type == "Gemm").input[1]
    for t in held.graph.initializer:
        w = numpy_helper.to_array(t)
        if t.name == conv_w:  # int8 with a scale, dequantised: exactly the same float values
            scale = np.float32(np.abs(w).max() / 127)
            q = np.round(w / scale).astype(np.int8)
            w = q.astype(np.float32) * scale
            nodes += [
                helper.make_node("Constant", [], ["q"], value=numpy_helper.from_array(q, "q")),
                helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.array(scale), "s")),
                helper.make_node("DequantizeLinear", ["q", "s"], [t.name]),
            ]
            plain.graph.initializer[[i.name for i in plain.graph.initializer].index(t.name)].CopyFrom(
                numpy_helper.from_array(w, t.name)
            )
        elif t.name == gemm_w:
            half = numpy_helper.from_array(w.astype(np.float64), "w64")
            nodes += [
                helper.make_node("Constant", [], ["w64"], value=half),
                helper.make_node("Cast", ["w64"], [t.name], to=TensorProto.FLOAT),
            ]
        else:
            nodes.append(helper.make_node("Constant", [], [t.name], value=t))
    del held.graph.initializer[:]
    nodes.extend(held.graph.node)
    del held.graph.node[:]
    held.graph.node.extend(nodes)

    def taps(m: onnx.ModelProto) -> list[tuple[str, str, int | None]]:
        return [(t.op, t.role, t.rank_bound) for t in plan_taps(GraphIndex(infer_shapes(m))).taps]

    assert taps(held) == taps(plain)
    assert [b for _, _, b in taps(plain)] == [28, None, 6 * 64 + 1, None]  # Conv 3·3·3 + bias, Gemm 384 + bias
    a = onnx_near.score(save(plain, tmp_path / "plain.onnx"), shapes={"x": (4, 3, 8, 8)}, seed=0)
    b = onnx_near.score(save(held, tmp_path / "held.onnx"), shapes={"x": (4, 3, 8, 8)}, seed=0)
    assert (b.params, b.macs) == (a.params, a.macs) == (6 * 3 * 9 + 6 + 384 * 10 + 10, 64 * 6 * 27 + 384 * 10)
    assert b.score == pytest.approx(a.score, rel=1e-6)


def test_score_reports_the_bound_of_approximated_taps(tmp_path: object) -> None:
    """With approx_above, large taps carry erank_error; small ones stay exact (None)."""
    from pathlib import Path

    import onnx

    import onnx_near

    g = __import__("graphs").Graph()
    h = g.op("Relu", g.op("Gemm", g.input("x", ["N", 100]), g.weight(100, 256)))
    g.output(g.op("Gemm", h, g.weight(256, 10)), ["N", 10])
    path = Path(str(tmp_path)) / "m.onnx"
    onnx.save(g.model(infer=False), str(path))
    r = onnx_near.score(path, approx_above=200)
    errors = {l.op: l.erank_error for l in r.layers}
    assert errors["Relu"] is not None and errors["Relu"] > 0 and r.layers[-1].erank_error is None
