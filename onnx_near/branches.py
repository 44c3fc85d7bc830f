"""Rewrite pass: an ``If`` decided before the run is replaced by the branch that runs.

Some exporters put whole networks in the branches of an ``If`` that a constant or a setting
picks: silero-vad's ``If(sr == 16000)`` chooses between its 16 kHz and its 8 kHz network,
``sr`` being a scalar input.  Tensors inside a branch are not graph tensors, so nothing
there can be tapped; once the branch that runs is part of the main graph, its layers are
found and scored like any other::

    before:   sr → Equal(·, 16000) → If ─then→ [Conv → Relu → … → t]  → y
                                        └else→ [Conv → Relu → … → e]
    after (sr = 16000):   x → Conv → Relu → … → y     (sr stays an input that nothing reads)

A condition is *decided* when it is computed from constants alone, or from constants and the
inputs in ``fixed``: the inputs that are fed unchanged with every batch (a sample rate, not
the data), whose values onnx-near knows before the run.  It is evaluated once, with
onnxruntime, on the nodes it is computed from.  A condition that reads the data (its values
change from batch to batch) is left as it is.

The If's condition is decided here; the branch that runs is inlined by
:mod:`onnx_near.branch_inline`, with the names and scopes of subgraphs from
:mod:`onnx_near.subgraphs`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .branch_inline import inline_branch, prune_condition, sort_nodes
from .subgraphs import fresh_name, tensors_read
from .taps import Untappable, scorable_ops

log = logging.getLogger(__name__)

# Ops whose output is random even when every input is constant: a condition they feed is not decided.
_RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


def resolve_ifs(
    model: onnx.ModelProto, fixed: Mapping[str, np.ndarray] | None = None
) -> tuple[onnx.ModelProto, tuple[Untappable, ...]]:
    """Afterwards: no If of the main graph has a decided condition (see the module docstring).

    Each such If is replaced by the nodes of the branch its condition picks, inlined into the
    main graph: the branch's outputs are renamed to the If's outputs (an Identity where the
    branch hands out an outer tensor, an initializer or one tensor twice), its other tensors
    keep their names unless a name is used elsewhere in the model (then ``<If>/<name>``), its
    initializers, value_info and nested subgraphs come along, and the names it reads from the
    outer scope are left as they are.  Ifs that become top-level this way are decided in turn
    (nested Ifs).  The nodes that only computed a decided condition are removed, and so are
    the initializers nothing reads any more; the graph inputs stay as declared (an input that
    decided an If is still fed, and read by nothing).

    Returns the model (``model`` itself when nothing changed; a copy otherwise) and what is not
    scored because of it: for each decided If, the branch not taken; for each If left in place,
    why its condition is not decided.  Only branches that hold weighted layers or activations
    are listed; an If without a name (or sharing one) is given its own here, which the entries use.
    """
    fixed = dict(fixed or {})
    if not any(n.op_type == "If" for n in model.graph.node):
        return model, ()
    work = onnx.ModelProto()
    work.CopyFrom(model)
    g = work.graph
    notes: list[Untappable] = []
    left: set[str] = set()  # names of the Ifs left in place
    changed = False
    seen: set[str] = set()
    for n in g.node:  # every If gets a name of its own, for the entries (and the plan's) to meet
        if _is_if(n) and (not n.name or n.name in seen):
            n.name = fresh_name(n.name or "If", {m.name for m in g.node})
            changed = True
        seen.add(n.name)
    while True:
        k = next((i for i, n in enumerate(g.node) if _is_if(n) and n.name not in left), None)
        if k is None:
            break
        node = g.node[k]
        if not node.name:  # an If that an inlined branch brought
            node.name = fresh_name("If", {n.name for n in g.node})
        branches = {a.name: a.g for a in node.attribute if a.name in _BRANCHES and a.type == onnx.AttributeProto.GRAPH}
        if len(branches) != 2 or not node.input or not node.input[0]:  # not a valid If: the runtime says so
            left.add(node.name)
            continue
        decision = _decide(work, k, fixed)
        if decision.value is None:
            left.add(node.name)
            inside = [op for b in branches.values() for op in scorable_ops(b)]
            if inside:
                notes.append(
                    Untappable(
                        node.name,
                        "If",
                        f"{len(inside)} weighted/activation op(s) in its branches ({_ops(inside)}) are not scored: "
                        f"{decision.why}",
                    )
                )
            continue
        taken, other = ("then_branch", "else_branch") if decision.value else ("else_branch", "then_branch")
        lost = scorable_ops(branches[other])
        if lost:
            notes.append(
                Untappable(
                    node.name,
                    "If",
                    f"the {other.replace('_', ' ')}, not taken {decision.why}, is not scored: "
                    f"{len(lost)} weighted/activation op(s) ({_ops(lost)})",
                )
            )
        log.info("If %r: the %s runs %s; inlined", node.name, taken.replace("_", " "), decision.why)
        condition = node.input[0]
        inline_branch(g, k, branches[taken])
        prune_condition(g, condition)
        sort_nodes(g)
        changed = True
    if changed:
        _drop_unread_initializers(g)
    return (work if changed else model), tuple(notes)


def _drop_unread_initializers(g: onnx.GraphProto) -> None:
    """Remove the initializers nothing reads any more (the weights of the branch not taken,
    when the branches read them from the main graph): onnxruntime drops them itself, and
    then refuses weights handed over by name for them."""
    read = {o.name for o in g.output}
    graphs = [g]
    while graphs:
        h = graphs.pop()
        for n in h.node:
            read.update(n.input)
            for a in n.attribute:
                graphs += [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
    kept = [t for t in g.initializer if t.name in read]
    if len(kept) < len(g.initializer):
        log.info("dropped %d initializer(s) only the branches not taken read", len(g.initializer) - len(kept))
        del g.initializer[:]
        g.initializer.extend(kept)


_BRANCHES = ("then_branch", "else_branch")


def _is_if(n: onnx.NodeProto) -> bool:
    return n.op_type == "If" and n.domain in ("", "ai.onnx")


@dataclass(frozen=True)
class _Decision:
    """The branch a condition picks (None: not decided), and the words for why."""

    value: bool | None
    why: str


def _decide(model: onnx.ModelProto, k: int, fixed: Mapping[str, np.ndarray]) -> _Decision:
    """Evaluate the condition of the If at ``g.node[k]`` when constants and ``fixed`` decide it."""
    g = model.graph
    cond = g.node[k].input[0]
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    inits = {t.name: t for t in g.initializer}
    declared = {v.name: v for v in g.input if v.name not in inits}
    nodes: set[int] = set()
    reads: set[str] = set()  # graph inputs and initializers the condition is computed from
    stack, seen = [cond], {cond}
    while stack:
        t = stack.pop()
        i = producer.get(t)
        if i is None:
            reads.add(t)
            continue
        nodes.add(i)
        for x in tensors_read(g.node[i]):
            if x and x not in seen:
                seen.add(x)
                stack.append(x)
    data = sorted(x for x in reads if x in declared and x not in fixed)
    if data:
        return _Decision(None, _undecided_by(data, declared))
    random = sorted({g.node[i].op_type for i in nodes} & _RANDOM)
    if random:
        return _Decision(None, f"its condition is drawn at random ({', '.join(random)})")
    external = sorted(x for x in reads if x in inits and inits[x].data_location == onnx.TensorProto.EXTERNAL)
    if external:
        return _Decision(None, f"its condition reads {external[0]!r}, whose data is kept outside the model file")
    used = {x: _as_declared(fixed[x], declared[x]) for x in sorted(reads) if x in declared}
    try:
        value = _evaluate(
            model, cond, [g.node[i] for i in sorted(nodes)], [inits[x] for x in reads if x in inits], used
        )
    except Exception as e:  # onnxruntime raises its own exception types
        text = str(e).strip().splitlines()
        return _Decision(None, f"its condition could not be evaluated ({text[0] if text else type(e).__name__})")
    if value.size != 1:
        return _Decision(None, f"its condition holds {value.size} values, not one")
    truth = bool(value.reshape(-1)[0])
    if not used:
        return _Decision(truth, f"(its condition is constant: {str(truth).lower()})")
    return _Decision(truth, "when " + ", ".join(_show(x, v) for x, v in used.items()))


def _undecided_by(names: list[str], declared: Mapping[str, onnx.ValueInfoProto]) -> str:
    """Why a condition that reads the inputs ``names`` (none of them fixed) is not decided."""
    scalars = [x for x in names if _rank(declared[x]) == 0]
    data = [x for x in names if x not in scalars]
    if data:
        listed = ", ".join(repr(x) for x in data)
        return f"its condition depends on the data ({listed}), whose values change from batch to batch"
    listed = ", ".join(repr(x) for x in scalars)
    given = " ".join(f"--input {x}=VALUE" for x in scalars)
    return f"its condition reads input {listed}, whose value is not given: give it with {given}"


def _rank(v: onnx.ValueInfoProto) -> int | None:
    t = v.type.tensor_type
    return len(t.shape.dim) if v.type.HasField("tensor_type") and t.HasField("shape") else None


def _as_declared(value: np.ndarray, v: onnx.ValueInfoProto) -> np.ndarray:
    """``value`` in the element type the graph declares for input ``v``."""
    elem = v.type.tensor_type.elem_type if v.type.HasField("tensor_type") else 0
    a = np.asarray(value)
    return a.astype(helper.tensor_dtype_to_np_dtype(elem), copy=False) if elem else a


def _show(name: str, value: np.ndarray) -> str:
    if value.size <= 4:
        shown = value.item() if value.size == 1 else value.tolist()
        return f"{name}={shown}"
    return f"{name} (shape {tuple(value.shape)})"


def _evaluate(
    model: onnx.ModelProto,
    cond: str,
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    feeds: Mapping[str, np.ndarray],
) -> np.ndarray:
    """The value of ``cond``, computed by ``nodes`` (in graph order) from ``inits`` and ``feeds``."""
    by_name = {t.name: t for t in inits}
    if not nodes:
        if cond in feeds:
            return np.asarray(feeds[cond])
        return numpy_helper.to_array(by_name[cond])
    import onnxruntime as ort

    inputs = [v for v in model.graph.input if v.name in feeds]
    out = helper.make_tensor_value_info(cond, onnx.TensorProto.BOOL, None)
    sub = helper.make_graph(nodes, "condition", inputs, [out], inits)
    m = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
    m.functions.extend(model.functions)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (value,) = session.run([cond], dict(feeds))
    return np.asarray(value)


def _ops(ops: list[str]) -> str:
    return ", ".join(sorted(set(ops)))


__all__ = ["resolve_ifs"]
