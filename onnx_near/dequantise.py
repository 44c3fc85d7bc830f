"""Rewrite pass for quantised graphs: their taps are the float values their integers stand for.

A quantised model computes in integers; each integer tensor stands for a float value (the
kinds of graph onnxruntime's quantiser writes, and the ReLUs it folds into a range:
:mod:`onnx_near.quantised`).  Two passes, applied by :func:`~onnx_near.rewrite.analyse`:

1. :func:`~onnx_near.float_view.float_view` (re-exported here) — the graph read as the float
   network it stands for, for the tap finder alone (it never runs), so that the tap finder's
   rules hold for quantised graphs as they are;
2. :func:`dequantise_taps`, in this module — afterwards every tap of the plan found on the
   view is a tensor of the graph that runs: a DequantizeLinear is added for each dequantised
   value that no DequantizeLinear of the graph holds yet, and the taps' ops name the
   quantised ops.
"""

from __future__ import annotations

from dataclasses import replace

import onnx
from onnx import helper

from .float_view import float_view as float_view
from .graph import GraphIndex
from .quantised import FloatView, Standin
from .taps import Tap, TapPlan, Untappable


def dequantise_taps(
    model: onnx.ModelProto, view: FloatView, index: GraphIndex, plan: TapPlan
) -> tuple[onnx.ModelProto, TapPlan]:
    """Afterwards: every tap of ``plan`` (planned on ``index``, the view's) is a tensor of the
    returned graph — a DequantizeLinear of its integer tensor, with that tensor's scale and
    zero point, is added right after it for each tap in :attr:`FloatView.standins` — and the
    plan is that graph's: taps in its order, their ops naming the quantised ops
    ("QLinearConv (dequantised)", "QGemm+Relu (folded, dequantised)"), no
    rank bound resting on rounded values (rounding breaks the weights' bound), and the ReLUs folded
    into a QOperator op's range listed as hiding their pre-activation.  Taps on values that
    exist in no tensor (those pre-activations) are left out.  ``model`` is left untouched.
    """
    taps = [t for t in plan.taps if t.tensor not in view.hidden]
    added = list(dict.fromkeys(t.tensor for t in taps if t.tensor in view.standins))
    out = _with_dequantised(model, [view.standins[t] for t in added], added) if added else model
    graph = GraphIndex(out)
    moved = [
        replace(
            t,
            op=_op_label(view, index, t),
            node=graph.producer.get(t.tensor, -1),
            rank_bound=t.rank_bound if _bound_holds(view, index, t.tensor) else None,
            elem_type=_elem_type(graph, view.standins[t.tensor]) if t.tensor in view.standins else t.elem_type,
            feed=t.feed if t.feed not in view.hidden else None,
        )
        for t in taps
    ]
    moved.sort(key=lambda t: (t.node, t.tensor))
    notes = [
        Untappable(
            index.label(index.producer[t]),
            op,
            "the quantiser folded a ReLU into its output range (the zero point is the integer type's minimum): "
            "its dequantised output is tapped as the post-activation, and the pre-activation exists in no tensor",
        )
        for t, op in view.folded.items()
        if op != "QuantizeLinear" and t in index.producer
    ]
    return out, replace(plan, taps=tuple(moved), untappable=(*plan.untappable, *notes))


def _bound_holds(view: FloatView, index: GraphIndex, tensor: str, depth: int = 4) -> bool:
    """False when the rank bound of ``tensor`` rests on a rounded value: the bound that
    :func:`~onnx_near.taps.structural_rank` reads from the weights' shapes holds for a float
    layer's output and the per-feature affine ops after it, not once the output is quantised
    (the rounding errors raise its rank)."""
    for _ in range(depth + 1):
        if tensor in view.rounded:
            return False
        n = index.node_of(tensor)
        if n is None:
            return True
        data = [x for x in n.input[:2] if x and not index.is_const(x)]
        if n.op_type in ("Add", "Mul") and len(n.input) == 2 and len(data) == 1:
            tensor = data[0]
        elif n.op_type in ("BatchNormalization", "LayerNormalization"):
            tensor = n.input[0]
        else:
            return True
    return True


def _op_label(view: FloatView, index: GraphIndex, tap: Tap) -> str:
    """The tap's op, naming the quantised op(s) whose output it stands for."""
    t = tap.tensor
    if t in view.folded:
        op = view.folded[t]
        return "Relu (folded into QuantizeLinear)" if op == "QuantizeLinear" else f"{op}+Relu (folded, dequantised)"
    node = index.node_of(t)
    origin = view.origins.get(t)
    if tap.op.endswith("+Add") and node is not None:
        inner = next((x for x in node.input if x and not index.is_const(x)), "")
        first = view.origins.get(inner)
        if first is not None:
            return f"{first} (dequantised)" if first == origin else f"{first}+{origin or 'Add'} (dequantised)"
    if origin is None:
        return tap.op
    if node is not None and tap.op == node.op_type:
        return f"{origin} (dequantised)"
    return f"{tap.op} (dequantised {origin})"


def _with_dequantised(model: onnx.ModelProto, standins: list[Standin], names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` with ``names[k]`` = DequantizeLinear(standins[k]) added after the
    last node its inputs need."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    after: dict[int, list[onnx.NodeProto]] = {}
    for s, name in zip(standins, names):
        ins = [s.integer, s.scale] + ([s.zero_point] if s.zero_point else [])
        at = max((producer[x] for x in ins if x in producer), default=-1)
        after.setdefault(at, []).append(helper.make_node("DequantizeLinear", ins, [name], name=name))
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(after.get(-1, []))
    for i, n in enumerate(nodes):
        g.node.append(n)
        g.node.extend(after.get(i, []))
    return out


def _elem_type(index: GraphIndex, s: Standin) -> int:
    """DequantizeLinear's output type: its scale's."""
    return index.elem_type(s.scale) or onnx.TensorProto.FLOAT
