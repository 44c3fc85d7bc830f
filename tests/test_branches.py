"""Layers inside an If (issue #11, item 1): the branch that runs is inlined and scored.

The graphs are built here: a two-layer network whose whole body sits in the branches of an
If, picked by a constant or by a scalar sample rate ``sr`` (silero-vad's shape).  The oracle
for the scores is the same network built without the If; the oracle for the inlining is
onnxruntime running the original and the rewritten graph on the same feeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from graphs import IR_VERSION, Graph, assert_scored, loop_body, save
from onnx import TensorProto, helper, numpy_helper

import onnx_near
from onnx_near.branches import resolve_ifs
from onnx_near.cli import main
from onnx_near.errors import NoTapsError
from onnx_near.graph import GraphIndex
from onnx_near.load import load_model
from onnx_near.taps import plan_taps

D_IN, HIDDEN, D_OUT = 6, 8, 3
SR = 16000


def weights(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((D_IN, HIDDEN)).astype(np.float32),
        rng.standard_normal((HIDDEN, D_OUT)).astype(np.float32),
    )


def network(name: str, seed: int, act: str, x: str = "x", out: str = "out") -> onnx.GraphProto:
    """A branch: x (read from the outer scope) → Gemm "fc1" → act → Gemm "fc2" → out, with its
    weights as the branch's own initializers; tensor names h, a as in the plain network."""
    w1, w2 = weights(seed)
    return helper.make_graph(
        [
            helper.make_node("Gemm", [x, "w1"], ["h"], name="fc1"),
            helper.make_node(act, ["h"], ["a"], name="act"),
            helper.make_node("Gemm", ["a", "w2"], [out], name="fc2"),
        ],
        name,
        [],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", D_OUT])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )


def plain(seed: int, act: str) -> onnx.ModelProto:
    """The oracle: the same network as :func:`network`, in the main graph."""
    g = Graph()
    w1, w2 = weights(seed)
    h = g.op("Gemm", g.input("x", ["N", D_IN]), g.const(w1, "w1"), node_name="fc1", out="h")
    a = g.op(act, h, node_name="act", out="a")
    g.output(g.op("Gemm", a, g.const(w2, "w2"), node_name="fc2", out="y"), ["N", D_OUT])
    return g.model(infer=False)


def model(graph: onnx.GraphProto) -> onnx.ModelProto:
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    onnx.checker.check_model(m, full_check=True)
    return m


def sample_rate_if() -> onnx.ModelProto:
    """sr (a scalar int64) → Equal(·, 16000) → If: a Relu network when true, a Tanh one when false."""
    nodes = [
        helper.make_node("Constant", [], ["rate"], value=numpy_helper.from_array(np.array(SR, np.int64))),
        helper.make_node("Equal", ["sr", "rate"], ["is_16k"]),
        helper.make_node(
            "If",
            ["is_16k"],
            ["y"],
            name="pick",
            then_branch=network("net_16k", 1, "Relu"),
            else_branch=network("net_8k", 2, "Tanh"),
        ),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D_IN]),
        helper.make_tensor_value_info("sr", TensorProto.INT64, []),
    ]
    return model(
        helper.make_graph(nodes, "vad", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", D_OUT])])
    )


def constant_if(value: bool = True) -> onnx.ModelProto:
    """A constant condition (Constant → Not → If), the same two networks."""
    nodes = [
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array(not value))),
        helper.make_node("Not", ["c"], ["cond"]),
        helper.make_node(
            "If",
            ["cond"],
            ["y"],
            then_branch=network("net_a", 1, "Relu"),
            else_branch=network("net_b", 2, "Tanh"),
        ),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D_IN])
    return model(
        helper.make_graph(nodes, "const", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", D_OUT])])
    )


def run(m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return list(ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds))


def x_data(n: int = 40) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((n, D_IN)).astype(np.float32)


def taps_of(m: onnx.ModelProto) -> list[tuple[str, str]]:
    return [(t.op, t.tensor) for t in plan_taps(GraphIndex(m)).taps]


# --- the pass ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False])
def test_constant_condition_inlines_the_branch_that_runs(value: bool) -> None:
    """Afterwards the main graph holds the taken branch's nodes (no If), computes what the
    original computed, and the branch not taken is listed with its ops."""
    m = constant_if(value)
    out, notes = resolve_ifs(m)
    assert [n.op_type for n in out.graph.node] == ["Gemm", "Relu" if value else "Tanh", "Gemm"]
    onnx.checker.check_model(out, full_check=True)
    feeds = {"x": x_data(5)}
    np.testing.assert_array_equal(run(out, feeds)[0], run(m, feeds)[0])
    (note,) = notes
    assert note.op == "If" and ("else branch" if value else "then branch") in note.reason
    assert "constant" in note.reason and ("Tanh" if value else "Relu") in note.reason and "Gemm" in note.reason
    assert taps_of(out) == [("Gemm", "h"), ("Relu" if value else "Tanh", "a"), ("Gemm", "y")]
    assert [n.op_type for n in m.graph.node] == ["Constant", "Not", "If"]  # the input is left as it was


@pytest.mark.parametrize("sr,act", [(SR, "Relu"), (8000, "Tanh")])
def test_sample_rate_picks_the_branch(sr: int, act: str) -> None:
    """A scalar sr fed unchanged: each value inlines its own network; the outputs agree with
    the original's for that sr, and the note names the value."""
    m = sample_rate_if()
    out, notes = resolve_ifs(m, {"sr": np.array(sr, np.int64)})
    assert [n.op_type for n in out.graph.node] == ["Gemm", act, "Gemm"]
    assert [i.name for i in out.graph.input] == ["x", "sr"]  # sr is still fed (and read by nothing)
    feeds = {"x": x_data(5), "sr": np.array(sr, np.int64)}
    np.testing.assert_array_equal(run(out, feeds)[0], run(m, feeds)[0])
    (note,) = notes
    assert note.where == "pick" and f"when sr={sr}" in note.reason and "not taken" in note.reason


def test_an_input_without_a_value_leaves_the_if() -> None:
    """Without sr's value the If stays, and the note says what it waits for."""
    m = sample_rate_if()
    out, notes = resolve_ifs(m)
    assert out is m
    (note,) = notes
    assert note.where == "pick" and "'sr'" in note.reason and "--input sr=VALUE" in note.reason
    assert "Relu" in note.reason and "Tanh" in note.reason


def test_condition_on_the_data_stays_and_is_skipped(tmp_path: Path) -> None:
    """cond = ReduceSum(x) > 0 changes from batch to batch: the If stays, listed with the
    reason (once), and the main graph around it is scored."""
    g = Graph()
    x = g.input("x", ["N", D_IN])
    cond = g.op("Greater", g.op("ReduceSum", x, keepdims=0), g.const(0.0))
    g.nodes.append(
        helper.make_node(
            "If", [cond], ["y"], name="gate", then_branch=network("a", 1, "Relu"), else_branch=network("b", 2, "Tanh")
        )
    )
    g.output(g.op("Relu", "y", out="r"), ["N", D_OUT])
    m = g.model(infer=False)
    out, notes = resolve_ifs(m)
    assert out is m
    (note,) = notes
    assert note.where == "gate" and "depends on the data ('x')" in note.reason and "Gemm" in note.reason
    r = onnx_near.score(save(m, tmp_path / "gate.onnx"), data={"x": x_data()})
    assert [l.tensor for l in r.layers] == ["r"]
    (skipped,) = r.skipped
    assert skipped.name == "gate" and skipped.reason == note.reason


def test_nested_ifs_are_decided_in_turn() -> None:
    """An If inside the taken branch (on sr) becomes top-level and is decided too; the inner
    branches' names (h, a, w1…) meet the outer branch's and the main graph's: all made unique."""
    inner = helper.make_node(
        "If", ["inner_cond"], ["out"], name="inner",
        then_branch=network("in_a", 3, "Sigmoid", x="z"), else_branch=network("in_b", 4, "Elu", x="z"),
    )  # fmt: skip
    w0 = numpy_helper.from_array(np.random.default_rng(9).standard_normal((D_IN, D_IN)).astype(np.float32), "w0")
    outer_then = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w0"], ["z"], name="fc0"),
            helper.make_node("Equal", ["sr", "rate"], ["inner_cond"]),
            inner,
        ],
        "outer_then",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", D_OUT])],
        [w0],
    )
    nodes = [
        helper.make_node("Constant", [], ["rate"], value=numpy_helper.from_array(np.array(SR, np.int64))),
        helper.make_node("Constant", [], ["yes"], value=numpy_helper.from_array(np.array(True))),
        helper.make_node(
            "If", ["yes"], ["y"], name="outer", then_branch=outer_then, else_branch=network("o_b", 5, "Tanh")
        ),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D_IN]),
        helper.make_tensor_value_info("sr", TensorProto.INT64, []),
    ]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", D_OUT])
    m = model(helper.make_graph(nodes, "nested", inputs, [y]))
    for sr, act in ((SR, "Sigmoid"), (8000, "Elu")):
        out, notes = resolve_ifs(m, {"sr": np.array(sr, np.int64)})
        onnx.checker.check_model(out, full_check=True)
        assert [n.op_type for n in out.graph.node] == ["Gemm", "Gemm", act, "Gemm"]
        feeds = {"x": x_data(4), "sr": np.array(sr, np.int64)}
        np.testing.assert_array_equal(run(out, feeds)[0], run(m, feeds)[0])
        assert [u.where for u in notes] == ["outer", "inner"]
        assert len({n.name for n in out.graph.node}) == 4
    # without sr the outer If is decided and the inner one waits
    out, notes = resolve_ifs(m)
    assert [n.op_type for n in out.graph.node] == ["Constant", "Gemm", "Equal", "If"]
    assert [u.where for u in notes] == ["outer", "inner"] and "'sr'" in notes[1].reason


def test_branch_names_that_collide_with_the_main_graph() -> None:
    """Two Ifs whose branches use the same names (h, a, w1, w2; nodes fc1, act, fc2), the
    main graph's own weight named w1 too: once the first is inlined, the second's names meet
    the main graph's and are made unique.  The second also hands out a branch initializer
    (through an Identity).  The result computes what the original did."""
    g = Graph()
    x = g.input("x", ["N", D_IN])
    w1, _ = weights(8)
    g.const(w1[:, :D_IN].copy(), "w1")
    g.op("Gemm", x, "w1", node_name="fc1", out="h0")  # the main graph's own w1 and fc1
    bias = numpy_helper.from_array(np.arange(D_OUT, dtype=np.float32), "bias")
    first = [network("t1", 1, "Relu", x="h0"), network("e1", 2, "Tanh", x="h0")]
    second = [network("t2", 3, "Relu", x="y1"), network("e2", 4, "Tanh", x="y1")]
    for b in second:  # and an initializer as a second output
        b.output.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, [D_OUT]))
        b.initializer.append(bias)
    yes = g.constant_node(True, dtype=np.bool_)
    g.nodes.append(helper.make_node("If", [yes], ["y1"], name="act", then_branch=first[0], else_branch=first[1]))
    # the second network reads y1 [N, 3] as its x: its first weight is (6, 8), so feed 6 features
    second[0].node[0].input[0] = second[1].node[0].input[0] = "y1x"
    g.op("Concat", "y1", "y1", axis=1, out="y1x")
    g.nodes.append(helper.make_node("If", [yes], ["y", "b"], name="fc2", then_branch=second[0], else_branch=second[1]))
    g.output("y", ["N", D_OUT])
    g.output("b", [D_OUT])
    m = g.model(infer=False, check=False)  # the checker wants branch outputs made by nodes; onnxruntime does not
    out, notes = resolve_ifs(m)
    onnx.checker.check_model(out, full_check=True)
    assert "If" not in [n.op_type for n in out.graph.node] and [u.where for u in notes] == ["act", "fc2"]
    feeds = {"x": x_data(3)}
    for got, want in zip(run(out, feeds), run(m, feeds)):
        np.testing.assert_array_equal(got, want)
    names = [n.name for n in out.graph.node if n.name]
    assert len(names) == len(set(names)) and {"fc1", "act/fc1", "fc2/fc1"} <= set(names)
    tensors = [*(o for n in out.graph.node for o in n.output), *(t.name for t in out.graph.initializer)]
    assert len(tensors) == len(set(tensors)) and {"w1", "act/w1", "fc2/w1", "act/h", "h"} <= set(tensors)


def test_a_loop_body_keeps_its_entry_and_the_error_says_why() -> None:
    """All layers in a Loop body: NoTapsError says they are there and why they are not scored,
    never that the model has no weighted layer."""
    body = loop_body()
    g = Graph()
    g.const(np.random.default_rng(5).standard_normal((D_IN, D_IN)), "wb")
    trips = g.const(np.array(3, np.int64), "trips", dtype=np.int64)
    cond = g.const(np.array(True), "cond", dtype=np.bool_)
    g.nodes.append(helper.make_node("Loop", [trips, cond, g.input("x", ["N", D_IN])], ["y"], body=body, name="refine"))
    g.output("y", ["N", D_IN])
    from onnx_near.load import LoadedModel
    from onnx_near.rewrite import prepare

    with pytest.raises(NoTapsError) as e:
        prepare(LoadedModel(g.model(infer=False, check=False), Path("loop.onnx")))
    text = str(e.value)
    assert "no weighted layer" not in text
    assert "'loop.onnx'" in text and "Loop 'refine'" in text and "MatMul" in text and "Tanh" in text
    assert "once per iteration" in text


# --- the pipeline -------------------------------------------------------------------------------


@pytest.mark.parametrize("value,seed,act", [(True, 1, "Relu"), (False, 2, "Tanh")])
def test_constant_if_scores_as_the_plain_network(tmp_path: Path, value: bool, seed: int, act: str) -> None:
    """NEAR of the If model equals NEAR of the same network built without the If."""
    data = {"x": x_data()}
    r = onnx_near.score(save(constant_if(value), tmp_path / "if.onnx"), data=data, rows="all", seed=0)
    o = onnx_near.score(save(plain(seed, act), tmp_path / "plain.onnx"), data=data, rows="all", seed=0)
    assert r.scores == o.scores
    assert_scored(r, taps=3)
    assert [(l.op, l.shape) for l in r.layers] == [(l.op, l.shape) for l in o.layers]
    (skipped,) = r.skipped
    assert skipped.op == "If" and "not taken" in skipped.reason


@pytest.mark.parametrize("sr,seed,act", [(SR, 1, "Relu"), (8000, 2, "Tanh")])
def test_sample_rate_if_scores_as_the_plain_network(tmp_path: Path, sr: int, seed: int, act: str) -> None:
    """sr given with the data (a scalar, fed unchanged): the branch it picks is scored, and the
    score is that of the plain network; the other branch is listed as not scored."""
    path = save(sample_rate_if(), tmp_path / "vad.onnx")
    x = x_data()
    r = onnx_near.score(path, data={"x": x, "sr": np.array(sr, np.int64)}, rows="all", seed=0)
    o = onnx_near.score(save(plain(seed, act), tmp_path / "plain.onnx"), data={"x": x}, rows="all", seed=0)
    assert r.scores == o.scores
    assert_scored(r, taps=3)
    assert [l.op for l in r.layers] == ["Gemm", act, "Gemm"]
    assert any(s.name == "pick" and f"sr={sr}" in s.reason for s in r.skipped)


def test_layers_and_score_commands_list_the_taken_branch(tmp_path: Path) -> None:
    """`onnx-near layers` and `score` show the taken branch's taps and the branch not taken:
    on the constant-If model, and on the sample-rate model with --input sr=…; without it,
    `layers` says what the If waits for."""
    const = str(save(constant_if(True), tmp_path / "if.onnx"))
    vad = str(save(sample_rate_if(), tmp_path / "vad.onnx"))
    for command in ("layers", "score"):
        for args, act, other in (([const], "Relu", "Tanh"), ([vad, "--input", "sr=8000"], "Tanh", "Relu")):
            r = CliRunner().invoke(main, [command, *args])
            assert r.exit_code == 0, r.output
            assert "fc1" in r.stdout and act in r.stdout and "fc2" in r.stdout
            assert "not scored" in r.stdout and "not taken" in r.stdout and other in r.stdout
    r = CliRunner().invoke(main, ["layers", vad])
    assert r.exit_code != 0 and "no weighted layer" not in r.stderr
    assert "'pick'" in r.stderr and "--input sr=VALUE" in r.stderr


def test_describe_of_the_sample_rate_model_with_a_value(tmp_path: Path) -> None:
    """The dry run decides the If when the sample rate is given (input_values)."""
    path = save(sample_rate_if(), tmp_path / "vad.onnx")
    report = onnx_near.describe(path, input_values={"sr": 8000})
    assert [t.op for t in report.layers] == ["Gemm", "Tanh", "Gemm"]
    assert any("sr=8000" in s.reason for s in report.skipped)
    assert load_model(path).proto.graph.node[2].op_type == "If"  # the file is never touched
