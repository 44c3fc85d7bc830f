"""The rewrite's passes (onnx_near.passes, onnx_near.rewrite), each on a graph of a few nodes.

For every pass: the invariant it states holds afterwards, ``changed`` is False when there is
nothing to do (the model is then the very one it was given) and True otherwise (a copy; the
input is untouched), and a failure inside it names it.  Then the tuple of passes itself: the
order docs/design.md gives, the record analyse and prepare keep, and reanalyse starting at
``decide_ifs`` instead of running the whole rewrite again.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.inliner
import onnx.shape_inference
import pytest
from graphs import MS, Graph, add_only, mlp
from onnx import TensorProto, helper, numpy_helper

from onnx_near import passes, rewrite
from onnx_near.batchnorm import inference_batchnorms
from onnx_near.errors import GraphError, NoTapsError
from onnx_near.graph import GraphIndex
from onnx_near.load import LoadedModel
from onnx_near.passes import (
    BATCH_STATISTICS,
    DECIDE_IFS,
    DEFUSE,
    FIND_TAPS,
    INFER_SHAPES,
    INLINE_FUNCTIONS,
    SORT_NODES,
    Options,
    Pass,
    State,
    Step,
)
from onnx_near.rewrite import CUT_WINDOWS, PASSES

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"


def apply(p: Pass, model: onnx.ModelProto, **options: Any) -> Step:
    """Apply ``p`` to ``model`` alone; the input must come out untouched."""
    before = model.SerializeToString()
    step = p(State(model), Options(**options))
    assert model.SerializeToString() == before  # every pass leaves its input as it was
    assert step.state.changes == ((p.name, step.changed),)
    assert (step.state.model is model) is not step.changed and step.state.owned is step.changed
    return step


def chain(infer: bool = False) -> onnx.ModelProto:
    """x → Gemm → Relu → y."""
    g = Graph()
    h = g.op("Gemm", g.input("x", ["N", 4]), g.weight(4, 3), out="h", node_name="fc")
    g.output(g.op("Relu", h, out="y", node_name="act"), ["N", 3])
    return g.model(infer=infer)


# --- sort_nodes ---------------------------------------------------------------------------------


def test_sort_nodes_puts_producers_first() -> None:
    m = chain()
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes[::-1])  # Relu listed before the Gemm that makes its input
    step = apply(SORT_NODES, m)
    assert step.changed and [n.name for n in step.state.model.graph.node] == ["fc", "act"]
    made = {i.name for i in step.state.model.graph.input} | {t.name for t in step.state.model.graph.initializer}
    for n in step.state.model.graph.node:  # the invariant: each node's inputs are made before it
        assert set(n.input) <= made
        made |= set(n.output)
    assert not apply(SORT_NODES, step.state.model).changed
    assert not apply(SORT_NODES, chain()).changed


# --- inline_functions ---------------------------------------------------------------------------


def with_function(body: list[onnx.NodeProto]) -> onnx.ModelProto:
    """x → local function Block(x, w, b) → y."""
    fn = helper.make_function("local", "Block", ["a", "w", "b"], ["o"], body, [helper.make_opsetid("", 17)])
    g = Graph(domains=[("local", 1)])
    g.functions.append(fn)
    g.output(g.op("Block", g.input("x", [2, 5]), g.weight(5, 3), g.weight(3), out="y", domain="local"))
    return g.model(infer=False, check=False)


def test_inline_functions_leaves_no_local_function() -> None:
    m = with_function([helper.make_node("Gemm", ["a", "w", "b"], ["h"]), helper.make_node("Relu", ["h"], ["o"])])
    step = apply(INLINE_FUNCTIONS, m)
    out = step.state.model
    assert step.changed and not out.functions
    assert [n.op_type for n in out.graph.node] == ["Gemm", "Relu"] and out.graph.node[-1].output[0] == "y"
    assert not apply(INLINE_FUNCTIONS, out).changed
    assert not apply(INLINE_FUNCTIONS, chain()).changed


def test_inline_functions_failure_names_the_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(model: onnx.ModelProto) -> onnx.ModelProto:
        raise RuntimeError("Block: unbound input\nmore detail")

    monkeypatch.setattr(onnx.inliner, "inline_local_functions", refuse)
    m = with_function([helper.make_node("Relu", ["a"], ["o"])])
    with pytest.raises(GraphError, match=r"in pass inline_functions: .*could not be inlined: Block: unbound input$"):
        INLINE_FUNCTIONS(State(m), Options())


# --- decide_ifs ---------------------------------------------------------------------------------


def branch(name: str, act: str) -> onnx.GraphProto:
    """A branch: x (from the outer scope) → act → y."""
    return helper.make_graph(
        [helper.make_node(act, ["x"], ["out"], name=act.lower())],
        name,
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])],
    )


def if_model(condition: str, name: str = "pick") -> onnx.ModelProto:
    """An If choosing Relu (then) or Tanh (else): on a constant (``"constant"``), on a scalar
    input ``sr`` (``"sr"``), or on the data x (``"data"``)."""
    nodes: list[onnx.NodeProto] = []
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])]
    if condition == "constant":
        nodes.append(helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True))))
    elif condition == "sr":
        inputs.append(helper.make_tensor_value_info("sr", TensorProto.INT64, []))
        rate = numpy_helper.from_array(np.array(16000, np.int64))
        nodes += [
            helper.make_node("Constant", [], ["rate"], value=rate),
            helper.make_node("Equal", ["sr", "rate"], ["cond"]),
        ]
    else:
        nodes += [
            helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
            helper.make_node("Cast", ["s"], ["cond"], to=9),
        ]
    nodes.append(
        helper.make_node(
            "If", ["cond"], ["y"], name=name, then_branch=branch("a", "Relu"), else_branch=branch("b", "Tanh")
        )
    )
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_decide_ifs_inlines_the_branch_a_constant_picks() -> None:
    step = apply(DECIDE_IFS, if_model("constant"))
    ops = [n.op_type for n in step.state.model.graph.node]
    assert step.changed and "If" not in ops and "Relu" in ops and "Tanh" not in ops
    assert [(u.where, u.op) for u in step.state.notes] == [("pick", "If")]  # the else branch, not taken
    assert "else branch, not taken" in step.state.notes[0].reason
    assert not apply(DECIDE_IFS, step.state.model).changed
    assert not apply(DECIDE_IFS, chain()).changed


def test_decide_ifs_with_the_inputs_fed_unchanged() -> None:
    m = if_model("sr")
    left = apply(DECIDE_IFS, m)
    assert not left.changed and "whose value is not given" in left.state.notes[0].reason
    decided = apply(DECIDE_IFS, m, fixed={"sr": np.array(16000, np.int64)})
    assert decided.changed and "If" not in [n.op_type for n in decided.state.model.graph.node]
    data = apply(DECIDE_IFS, if_model("data"))
    assert not data.changed and "depends on the data" in data.state.notes[0].reason
    assert apply(DECIDE_IFS, if_model("data", name="")).changed  # an If without a name is given one


# --- defuse -------------------------------------------------------------------------------------


def fused_gemm(activation: str | None) -> onnx.ModelProto:
    g = Graph(domains=[(MS, 1)])
    attrs = {"activation": activation} if activation else {}
    g.output(g.op("FusedGemm", g.input("x", [2, 4]), g.weight(4, 3), g.weight(3), out="y", domain=MS, **attrs), [2, 3])
    return g.model(infer=False, check=False)


def test_defuse_splits_a_fused_gemm() -> None:
    step = apply(DEFUSE, fused_gemm("Relu"))
    nodes = step.state.model.graph.node
    assert step.changed and [(n.domain, n.op_type) for n in nodes] == [("", "Gemm"), ("", "Relu")]
    assert nodes[-1].output[0] == "y"  # the fused op's output keeps its name
    assert not apply(DEFUSE, step.state.model).changed
    assert not apply(DEFUSE, chain()).changed


# --- infer_shapes -------------------------------------------------------------------------------


def test_infer_shapes_types_the_intermediate_tensors() -> None:
    m = chain(infer=False)
    assert not m.graph.value_info
    step = apply(INFER_SHAPES, m)
    (h,) = [v for v in step.state.model.graph.value_info if v.name == "h"]
    assert step.changed and h.type.tensor_type.elem_type == TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in h.type.tensor_type.shape.dim] == ["N", 3]
    assert not apply(INFER_SHAPES, step.state.model).changed  # nothing more to infer


def test_infer_shapes_is_best_effort(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> onnx.ModelProto:
        raise RuntimeError("[ShapeInferenceError] an exporter quirk")

    m = chain()
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", fail)
    assert not apply(INFER_SHAPES, m).changed


# --- find_taps ----------------------------------------------------------------------------------


def test_find_taps_plans_taps_that_are_tensors_of_the_graph() -> None:
    step = apply(FIND_TAPS, chain(infer=True))
    plan, index = step.state.plan, step.state.index
    assert not step.changed and plan is not None and index is not None and index.model is step.state.model
    assert [(t.op, t.role, t.tensor) for t in plan.taps] == [("Gemm", "pre", "h"), ("Relu", "post", "y")]
    assert all(t.tensor in index.producer for t in plan.taps)


def test_find_taps_dequantises_a_quantised_layer() -> None:
    """x → QuantizeLinear → QLinearConv → y (int8): the tap is a DequantizeLinear of y, added."""
    w = np.random.default_rng(0).integers(-100, 100, (4, 3, 3, 3), dtype=np.int8)
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
        numpy_helper.from_array(w, "w"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("QLinearConv", ["xq", "s", "z", "w", "s", "z", "s", "z"], ["y"], name="conv", pads=[1] * 4),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])
    graph = helper.make_graph(nodes, "q", [x], [helper.make_tensor_value_info("y", TensorProto.INT8, None)], inits)
    step = apply(FIND_TAPS, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert step.changed and step.state.plan is not None and step.state.index is not None
    (tap,) = step.state.plan.taps
    made_by = step.state.index.node_of(tap.tensor)
    assert made_by is not None and made_by.op_type == "DequantizeLinear" and made_by.input[0] == "y"


# --- batch_statistics ---------------------------------------------------------------------------


def conv_bn() -> onnx.ModelProto:
    g = Graph()
    c = g.op("Conv", g.input("x", ["N", 3, 5, 5]), g.weight(4, 3, 3, 3), out="c")
    params = [g.const(np.ones(4)), g.const(np.zeros(4)), g.const(np.zeros(4)), g.const(np.ones(4))]
    g.output(g.op("BatchNormalization", c, *params, out="y", node_name="bn"), ["N", 4, 3, 3])
    return g.model(infer=True)


def test_batch_statistics_leaves_no_inference_batchnorm() -> None:
    m = conv_bn()
    assert len(inference_batchnorms(GraphIndex(m))) == 1
    step = apply(BATCH_STATISTICS, m, batchnorm="batch")
    assert step.changed and inference_batchnorms(GraphIndex(step.state.model)) == []
    assert step.state.model.graph.output[0].name == "y"  # the BatchNorm's output keeps its name
    assert not apply(BATCH_STATISTICS, m, batchnorm="running").changed  # asked for nothing
    assert not apply(BATCH_STATISTICS, chain(), batchnorm="batch").changed  # no BatchNorm


# --- cut_windows --------------------------------------------------------------------------------


def test_cut_windows_gives_every_tap_an_output() -> None:
    found = FIND_TAPS(State(conv_bn()), Options()).state
    assert found.plan is not None and len(found.plan.taps) == 2
    step = CUT_WINDOWS(found, Options())
    outputs = {o.name for o in step.state.model.graph.output}
    assert step.changed and set(step.state.cuts) == {t.tensor for t in found.plan.taps}
    for cut in step.state.cuts.values():
        assert cut.cut and cut.output in outputs and cut.shape in outputs  # N×C×H×W: cut in the graph
    assert step.state.model.graph.output[0].name == "y"  # the model's own output first
    assert not CUT_WINDOWS(State(chain()), Options()).changed  # no plan: nothing to expose
    assert len(found.model.graph.output) == 1  # not owned: the input is untouched


# --- every pass names itself when it fails --------------------------------------------------------


BREAK = {  # what each pass calls, to make it fail
    "sort_nodes": (passes, "topological_nodes"),
    "inline_functions": (passes, "inline_functions"),
    "decide_ifs": (passes, "resolve_ifs"),
    "defuse": (passes, "defuse_contrib_ops"),
    "infer_shapes": (passes, "_with_value_info"),
    "find_taps": (passes, "plan_taps"),
    "batch_statistics": (passes, "batch_statistics"),
    "cut_windows": (rewrite, "cut_windows"),
}


@pytest.mark.parametrize("name", [p.name for p in PASSES])
@pytest.mark.parametrize("error", [GraphError, KeyError])
def test_a_failing_pass_names_itself(monkeypatch: pytest.MonkeyPatch, name: str, error: type[Exception]) -> None:
    """A NearError comes out of the same class, naming the pass; any other error (a bug) as a
    RuntimeError naming the pass, chained to it."""

    def broken(*args: object, **kwargs: object) -> Any:
        raise error("broken")

    module, attribute = BREAK[name]
    monkeypatch.setattr(module, attribute, broken)
    p = next(p for p in PASSES if p.name == name)
    m = {"inline_functions": with_function([helper.make_node("Relu", ["a"], ["o"])]), "infer_shapes": chain()}.get(
        name, conv_bn()
    )
    state = FIND_TAPS(State(m), Options()).state if name == "cut_windows" else State(m)
    expected = GraphError if error is GraphError else RuntimeError
    with pytest.raises(expected, match=rf"^the rewrite failed in pass {name}: ") as e:
        p(state, Options(batchnorm="batch"))
    assert isinstance(e.value.__cause__, error)


# --- the tuple of passes --------------------------------------------------------------------------


def test_the_passes_are_those_the_design_note_lists() -> None:
    """docs/design.md's section on the rewrite lists the passes in order, each with its invariant."""
    text = DESIGN.read_text()
    section = text[text.index("## The rewrite: a list of passes") :]
    section = section[: section.find("\n## ", 1) if "\n## " in section[1:] else None]
    listed = re.findall(r"^\d+\. `(\w+)`", section, flags=re.M)
    assert listed == [p.name for p in PASSES]
    assert rewrite.ANALYSIS == PASSES[:-1] and PASSES[-1] is CUT_WINDOWS
    assert len({p.name for p in PASSES}) == len(PASSES)
    for p in PASSES:
        assert p.invariant.startswith("Afterwards"), p.name
    assert re.findall(r"^\d+\. ``(\w+)``", rewrite.__doc__ or "", flags=re.M) == listed  # the module says so too


def loaded(m: onnx.ModelProto, name: str = "m.onnx") -> LoadedModel:
    return LoadedModel(m, Path(name))


def test_analyse_and_prepare_record_every_pass() -> None:
    analysed = rewrite.analyse(loaded(mlp()))
    assert [name for name, _ in analysed.changes] == [p.name for p in rewrite.ANALYSIS]
    assert dict(analysed.changes) == {
        "sort_nodes": False,
        "inline_functions": False,
        "decide_ifs": False,
        "defuse": False,
        "infer_shapes": True,
        "find_taps": False,
        "batch_statistics": False,
    }
    prepared = rewrite.prepare(loaded(mlp()), analysed=analysed)
    assert [name for name, _ in prepared.changes] == [p.name for p in PASSES] and prepared.changes[-1][1]
    with pytest.raises(NoTapsError, match=r"^'add\.onnx' has no weighted layer .*: there is nothing to score$"):
        rewrite.prepare(loaded(add_only(), "add.onnx"))


def test_reanalyse_starts_at_decide_ifs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Ifs left in place that inputs given a value decide: reanalyse gives what analyse
    gives with those values, running the passes from decide_ifs on, not those before it."""
    fixed = {"sr": np.array(16000, np.int64)}
    m = if_model("sr")
    first = rewrite.analyse(loaded(m))
    assert [t.op for t in first[2].taps] == [] and first.resumable is not None
    calls: list[onnx.ModelProto] = []
    order = passes.topological_order

    def counted(model: onnx.ModelProto) -> list[onnx.NodeProto] | None:
        calls.append(model)
        return order(model)

    monkeypatch.setattr(passes, "topological_order", counted)
    again = rewrite.reanalyse(first, fixed)
    assert calls == []  # sort_nodes did not run again
    direct = rewrite.analyse(loaded(m), fixed=fixed)
    assert len(calls) == 1
    assert again[2] == direct[2] and [t.op for t in again[2].taps] == ["Relu"]
    assert again.changes == direct.changes
    assert rewrite.reanalyse(first, {}) is first
    plain = rewrite.analyse(loaded(mlp()))
    assert plain.resumable is None and rewrite.reanalyse(plain, fixed) is plain  # no If left: nothing to decide
    prepared = rewrite.prepare(loaded(m), fixed=fixed, analysed=first)
    assert [t.op for t in prepared.plan.taps] == ["Relu"]
