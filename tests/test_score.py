"""The scoring pipeline end to end: sampling, determinism, modes, inputs, external data."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import Graph, add_only, mlp, save

import onnx_near
from onnx_near.errors import InputDataError, ModelLoadError, NoTapsError
from onnx_near.matrices import Collector, draw_blocks, geometry, to_rows, window_samples

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


def test_repetitions_mean_and_std() -> None:
    """The score is the mean of the repetitions' totals, with their sample standard deviation."""
    r = onnx_near.score(MODELS / "mlp.onnx", repetitions=4, seed=0)
    assert len(r.scores) == 4 and len(set(r.scores)) == 4
    assert r.score == pytest.approx(np.mean(r.scores))
    assert r.score_std == pytest.approx(np.std(r.scores, ddof=1))
    for l in r.layers:
        assert l.erank_std >= 0


def test_rows_all_is_not_random() -> None:
    """With all rows of the user's data, the seed changes nothing."""
    data = MODELS / "cnn.inputs.npz"
    a = onnx_near.score(MODELS / "cnn.onnx", data=data, rows="all", seed=0)
    b = onnx_near.score(MODELS / "cnn.onnx", data=data, rows="all", seed=9)
    assert a.score == b.score
    assert a.layers[0].shape == (32 * 16 * 16, 8)


def test_explicit_row_count() -> None:
    """--rows N gives N×C matrices."""
    r = onnx_near.score(MODELS / "cnn.onnx", rows=40)
    assert all(l.shape[0] == 40 for l in r.layers)


def test_batch_size_does_not_change_the_score() -> None:
    """Streaming batch by batch keeps exactly the rows a single pass would."""
    a = onnx_near.score(MODELS / "cnn.onnx", seed=1, batch_size=1)
    b = onnx_near.score(MODELS / "cnn.onnx", seed=1, batch_size=64)
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


def test_external_data_is_read_from_the_model_folder(tmp_path: Path) -> None:
    """Weights in an external file load by path; nothing is written beside the model or in the cwd."""
    folder = tmp_path / "m"
    folder.mkdir()
    onnx.save(mlp(), str(folder / "ext.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
    before = sorted(os.listdir(folder))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        r = onnx_near.score(folder / "ext.onnx")
    finally:
        os.chdir(old)
    assert sorted(os.listdir(folder)) == before and os.listdir(cwd) == []
    inline = onnx_near.score(save(mlp(), tmp_path / "inline.onnx"))
    assert r.score == inline.score


def test_external_data_outside_the_folder_is_refused(tmp_path: Path) -> None:
    """An external location that escapes the model's folder is refused."""
    m = mlp()
    onnx.save(m, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
    m2 = onnx.load(str(tmp_path / "ext.onnx"), load_external_data=False)
    for t in m2.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../w.bin"
    (tmp_path / "sub").mkdir()
    onnx.save(m2, str(tmp_path / "sub" / "escape.onnx"))
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        onnx_near.score(tmp_path / "sub" / "escape.onnx")


def test_fixed_batch_model(tmp_path: Path) -> None:
    """A model whose batch dim is fixed at 4 is fed batches of 4 (the last one padded)."""
    r = onnx_near.score(save(mlp(batch=4), tmp_path / "b4.onnx"), seed=0)
    assert [l.shape for l in r.layers] == [(8, 8), (8, 8), (3, 3)]


def test_newer_ir_version_is_read(tmp_path: Path) -> None:
    """A model stamped with an IR version newer than onnxruntime's is still scored."""
    m = mlp()
    m.ir_version = 14
    assert onnx_near.score(save(m, tmp_path / "ir14.onnx")).score > 0


def test_dynamic_dimension_needs_a_shape(tmp_path: Path) -> None:
    """A dynamic non-batch dim must be given; with --shape the model scores."""
    g = Graph()
    g.output(g.op("Relu", g.op("MatMul", g.input("x", ["N", "T", 4]), g.weight(4, 5))), ["N", "T", 5])
    path = save(g.model(infer=False), tmp_path / "seq.onnx")
    with pytest.raises(InputDataError, match=r"--shape x=NxDx4"):
        onnx_near.score(path)
    r = onnx_near.score(path, shapes={"x": (None, 3, 4)})
    assert [l.shape for l in r.layers] == [(5, 5), (5, 5)]


def test_model_without_taps(tmp_path: Path) -> None:
    """A graph with no weighted layer and no activation is refused with NoTapsError."""
    with pytest.raises(NoTapsError):
        onnx_near.score(save(add_only(), tmp_path / "add.onnx"))


def test_axis_override(tmp_path: Path) -> None:
    """--axis TENSOR=K makes axis K the columns."""
    tap = "/features/features.0/Conv_output_0"
    r = onnx_near.score(MODELS / "cnn.onnx", axes={tap: 2})
    assert r.layers[0].axis == 2 and r.layers[0].shape == (16, 16)


def test_collector_keeps_exactly_the_block() -> None:
    """Streaming small batches through the collector gives the rows of one full pass."""
    rng = np.random.default_rng(0)
    full = rng.standard_normal((6, 3, 4, 5)).astype(np.float32)  # N, C, H, W
    g = geometry(full.shape, 1, 6)
    assert (g.cols, g.rows_per_sample, g.line) == (3, 20, 5)
    blocks = draw_blocks({"t": g}, 7, 6, np.random.default_rng(1))
    assert blocks["t"].start % 5 == 0
    c = Collector({"t": g}, blocks)
    for lo in range(0, 6, 2):
        if lo < c.samples_needed:
            c.add(lo, lo + 2, {"t": full[lo : lo + 2]})
    assert c.complete()
    b = blocks["t"]
    np.testing.assert_array_equal(c.matrices["t"], to_rows(full, 1)[b.start : b.start + b.count])


def test_window_is_as_small_as_the_taps_allow() -> None:
    """Square matrices need ceil(C / rows-per-sample) samples for the most demanding tap."""
    geoms = {"conv": geometry((1, 16, 8, 8), 1, 1), "dense": geometry((1, 10), -1, 1)}
    assert window_samples(geoms, "square", None, None) == 10
    assert window_samples(geoms, "square", 4, None) == 4
    assert window_samples(geoms, "all", 100, None) == 100


def test_loop_body_is_reported_and_the_rest_scored(tmp_path: Path) -> None:
    """Tensors inside a Loop body cannot be tapped: they are listed as skipped; the main graph is scored."""
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["v_in", "wb"], ["m"]),
            helper.make_node("Tanh", ["m"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
        ],
    )
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
    whole = onnx_near.score(MODELS / "cnn.onnx", seed=5, repetitions=2, batch_size=64)
    assert batches == [1, 2, 10, 10]  # two probes (1 sample, then 2 for shapes), the window (10) once a repetition
    batches.clear()
    small = onnx_near.score(MODELS / "cnn.onnx", seed=5, repetitions=2, max_batch_bytes=6000)
    window = sum(batches[2:]) // 2
    assert len(batches) - 2 == 2 * -(-window // max(batches[2:]))  # ceil(window / batch) passes a repetition
    assert max(batches[2:]) < window
    assert small.scores == whole.scores
    assert [l.erank for l in small.layers] == [l.erank for l in whole.layers]


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


def test_collector_asks_only_for_the_taps_a_batch_holds_rows_of() -> None:
    """A batch that holds none of a tap's rows does not need that tap's output."""
    geoms = {"conv": geometry((1, 8, 4, 4), 1, 1), "dense": geometry((1, 8), -1, 1)}
    blocks = {"conv": draw_blocks({"conv": geoms["conv"]}, "square", 6, np.random.default_rng(0))["conv"]}
    blocks["dense"] = draw_blocks({"dense": geoms["dense"]}, "square", 8, np.random.default_rng(0))["dense"]
    c = Collector(geoms, blocks)
    b = blocks["conv"]
    conv_samples = range(b.start // 16, (b.start + b.count - 1) // 16 + 1)  # 16 rows per sample
    assert len(conv_samples) < c.samples_needed
    for s in range(c.samples_needed):
        want = {"dense"} | ({"conv"} if s in conv_samples else set())
        assert set(c.needed(s, s + 1)) == want


def test_session_optimisation_level_follows_the_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Small weights: ORT_ENABLE_ALL (fast NCHWc convs); above the limit: EXTENDED (no reordered copy)."""
    import onnxruntime as ort

    from onnx_near import run

    model = mlp()
    levels = []
    for limit in (run.ALL_MAX_WEIGHT_BYTES, 0):
        monkeypatch.setattr(run, "ALL_MAX_WEIGHT_BYTES", limit)
        runner = run.Runner(model, tmp_path, "cpu", [model.graph.output[0].name])
        levels.append(runner.session.get_session_options().graph_optimization_level)
    assert levels == [ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED]


def test_device_array_views_onnxruntime_memory_without_a_copy() -> None:
    """The cupy branch of device_array, with a stand-in for cupy that reads host memory:
    the right address, size, shape and dtype, and the OrtValue kept alive by the view."""
    import ctypes

    import onnxruntime as ort

    from onnx_near.run import device_array

    class FakeCuda:
        class UnownedMemory:
            def __init__(self, ptr: int, size: int, owner: object) -> None:
                self.ptr, self.size, self.owner = ptr, size, owner

        class MemoryPointer:
            def __init__(self, mem: FakeCuda.UnownedMemory, offset: int) -> None:
                self.mem, self.offset = mem, offset

    class FakeCupy:
        cuda = FakeCuda

        @staticmethod
        def ndarray(shape: tuple[int, ...], dtype: np.dtype, memptr: FakeCuda.MemoryPointer) -> np.ndarray:
            buffer = (ctypes.c_char * memptr.mem.size).from_address(memptr.mem.ptr + memptr.offset)
            return np.frombuffer(buffer, dtype=dtype).reshape(shape)

    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    value = ort.OrtValue.ortvalue_from_numpy(a)
    view = device_array(value, FakeCupy)
    assert view.dtype == np.float32 and view.shape == (2, 3, 4) and np.array_equal(view, a)
    a[0, 0, 0] = 99.0  # a view, not a copy
    assert view[0, 0, 0] == 99.0
    assert np.array_equal(device_array(value), a)  # numpy: the host array


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


def test_weights_handed_over_as_arrays_give_the_same_outputs(tmp_path: Path) -> None:
    """Large weights go to onnxruntime as arrays (declared external in the graph it parses):
    the outputs are those of a session built from the whole serialised model, bit for bit."""
    import onnxruntime as ort

    from onnx_near.graph import split_weights
    from onnx_near.run import Runner

    g = Graph()
    h = g.op("Relu", g.op("Gemm", g.input("x", ["N", 100]), g.weight(100, 256)))
    g.output(g.op("Gemm", h, g.weight(256, 10), g.const(np.arange(10.0))), ["N", 10])
    model = g.model(infer=False)
    light, arrays = split_weights(model)
    assert [a.shape for a in arrays.values()] == [(100, 256)]  # the small ones stay inline
    assert light.ByteSize() < model.ByteSize() - 100 * 256 * 4 + 100  # the big weight is not in it
    x = np.random.default_rng(0).standard_normal((7, 100)).astype(np.float32)
    out = model.graph.output[0].name
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run([out], {"x": x})[0]
    got = Runner(model, tmp_path, "cpu", [out]).run({"x": x})[out]
    assert np.array_equal(got, want)


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
    data = {
        "input_ids": ids,
        "past_key_values.0.key": np.zeros((16, 1, 0, 8), np.float32),
        "attention_mask": np.ones((16, 6), np.int64),
    }
    a = onnx_near.score(path, data=data, seed=0)
    b = onnx_near.score(path, data={"input_ids": ids}, seed=0)
    assert b.score == a.score


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
