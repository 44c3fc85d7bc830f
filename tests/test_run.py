"""onnxruntime sessions (onnx_near/run.py): the optimisation level, large weights handed over
as arrays, a newer IR version, and device arrays that view onnxruntime's memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from graphs import Graph, mlp, save

import onnx_near


def test_newer_ir_version_is_read(tmp_path: Path) -> None:
    """A model stamped with an IR version newer than onnxruntime's is still scored: as the same
    model stamped with the version it was built for (10), bit for bit."""
    m = mlp()
    m.ir_version = 14
    newer = onnx_near.score(save(m, tmp_path / "ir14.onnx"))
    assert newer.scores == onnx_near.score(save(mlp(), tmp_path / "ir10.onnx")).scores
    assert [l.op for l in newer.layers] == ["Gemm", "Relu", "Gemm"]


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
            return np.frombuffer(memoryview(buffer), dtype=dtype).reshape(shape)

    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    value = ort.OrtValue.ortvalue_from_numpy(a)
    view = device_array(value, FakeCupy)
    assert view.dtype == np.float32 and view.shape == (2, 3, 4) and np.array_equal(view, a)
    a[0, 0, 0] = 99.0  # a view, not a copy
    assert view[0, 0, 0] == 99.0
    assert np.array_equal(device_array(value), a)  # numpy: the host array
