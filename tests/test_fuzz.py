"""Property-based fuzzing of untrusted models: mutated bytes and mutated graphs either score
or fail with one clean sentence (exit 2) — never an internal error, a traceback, a crash
of the interpreter or a hang past the time limit."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto

from onnx_near.cli import main

MODELS = Path(__file__).resolve().parents[1] / "models"
SOURCES = [MODELS / "mlp.onnx", MODELS / "cnn.onnx", MODELS / "vet" / "healthy.onnx", MODELS / "transformer.onnx"]
LIMITS = ["--rows", "16", "--max-memory", "1G", "--timeout", "30", "--format", "json"]
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def outcome(data: bytes) -> None:
    """Score the bytes as a model; only a score (0) or a clean refusal (2) is acceptable."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzzed.onnx"
        path.write_bytes(data)
        r = CliRunner().invoke(main, ["score", str(path), *LIMITS])
        assert r.exit_code in (0, 2), r.stderr or repr(r.exception)
        assert "Traceback" not in r.stderr
        if r.exit_code == 2:  # warnings may come first; the error is one line, the last
            lines = r.stderr.strip().splitlines()
            assert [line for line in lines if "error:" in line] == lines[-1:], r.stderr
            assert lines[-1].startswith("onnx-near: error: "), r.stderr


@SETTINGS
@given(
    source=st.sampled_from(SOURCES),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_mutated_bytes(source: Path, flips: list[tuple[float, int]], cut: float | None) -> None:
    """Random byte flips and truncations of valid models."""
    data = bytearray(source.read_bytes())
    for where, value in flips:
        data[int(where * len(data))] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    outcome(bytes(data))


def _mutate(m: onnx.ModelProto, kind: str, k: int, value: int) -> None:
    g = m.graph
    node = g.node[k % len(g.node)]
    names = [o for n in g.node for o in n.output] + [i.name for i in g.initializer] + ["nowhere"]
    if kind == "drop_node":
        g.node.remove(node)
    elif kind == "rewire_input" and node.input:
        node.input[value % len(node.input)] = names[value % len(names)]
    elif kind == "op_type":
        node.op_type = ["Relu", "Conv", "MatMul", "Gemm", "Softmax", "Mystery", "If", "Reshape", "Sigmoid"][value % 9]
    elif kind == "duplicate_node":
        g.node.append(node)
    elif kind == "init_dims" and g.initializer:
        t = g.initializer[value % len(g.initializer)]
        if t.dims:
            t.dims[0] = [0, 1, 3, 10**6, 10**12][value % 5]
    elif kind == "input_dims":
        dims = g.input[0].type.tensor_type.shape.dim
        if len(dims) > 1:
            dims[value % len(dims)].dim_value = [0, 1, 7, 10**9][value % 4]
    elif kind == "input_type":
        g.input[0].type.tensor_type.elem_type = [
            TensorProto.INT8,
            TensorProto.STRING,
            TensorProto.BOOL,
            TensorProto.DOUBLE,
        ][value % 4]
    elif kind == "drop_initializer" and g.initializer:
        del g.initializer[value % len(g.initializer)]
    elif kind == "attribute" and node.attribute:
        a = node.attribute[value % len(node.attribute)]
        if a.ints:
            a.ints[0] = [-1, 0, 10**6][value % 3]
        elif a.type == onnx.AttributeProto.INT:
            a.i = [-5, 0, 10**9][value % 3]
    elif kind == "opset":
        m.opset_import[0].version = [1, 6, 30, 99][value % 4]
    elif kind == "ir_version":
        m.ir_version = [1, 3, 14, 99][value % 4]


# The structural mutations of _mutate (benchmarks/fuzz_campaign.py draws from them too).
MUTATIONS = (
    "drop_node",
    "rewire_input",
    "op_type",
    "duplicate_node",
    "init_dims",
    "input_dims",
    "input_type",
    "drop_initializer",
    "attribute",
    "opset",
    "ir_version",
)


@SETTINGS
@given(
    source=st.sampled_from(SOURCES),
    mutations=st.lists(
        st.tuples(
            st.sampled_from(MUTATIONS),
            st.integers(0, 1000),
            st.integers(0, 1000),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_mutated_graphs(source: Path, mutations: list[tuple[str, int, int]]) -> None:
    """Structural mutations: dropped/duplicated/rewired nodes, wrong ops, absurd dims, bad types and versions."""
    m = onnx.load(str(source))
    for kind, k, value in mutations:
        _mutate(m, kind, k, value)
    outcome(m.SerializeToString())
