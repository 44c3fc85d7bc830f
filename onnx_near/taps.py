"""Find the taps of a graph: the tensors whose effective rank NEAR sums (SPEC §2).

Two kinds of site are recognised in the main graph:

* **weighted layers** — outputs of ops that apply learned weights: Conv, ConvTranspose,
  Gemm, MatMul with a constant operand (or the ``Add`` of a constant bias right after it),
  and the affine normalisations.  Role ``pre``.
* **activations** — elementwise non-linearities, native (Relu, Gelu, …) or spelled out by
  exporters as small patterns (SiLU = x·Sigmoid(x), GELU via Erf or Tanh, Mish,
  HardSwish, Clip as ReLU6).  For a pattern, its input ``x`` is the pre-activation and
  its final output the post-activation.

In mode ``"all"`` (the authors' choice) the taps are every weighted-layer output (``pre``)
and every activation output (``post``).  In mode ``"activations"`` (strict) they are the
input (``pre``) and output (``post``) of every activation site.  A tensor is tapped once,
whatever roles it plays.  What cannot be tapped is listed, with the reason.

Each tap also gets its *feature axis* (SPEC §3): channels (axis 1) for tensors that come
from convolutions and channel-wise ops, the last axis for dense/sequence tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

import numpy as np
import onnx

from .graph import GraphIndex, attribute
from .ops import (
    CHANNEL_OPS,
    CONTRIB_ACTIVATIONS,
    CONTRIB_WEIGHTED,
    CONTROL_FLOW,
    FUSED_WITH_ACTIVATION,
    LAST_AXIS_OPS,
    MATMULS,
    MS,
    NATIVE_ACTIVATIONS,
    QUANTISED,
    SHAPE_ONLY,
    WEIGHTED,
    scorable_in_body,
)

# Ops between a pattern's input x and its non-linear core (x/√2, x + 0.044715·x³, softplus(x)…).
_INNER_OPS = {"Add", "Sub", "Mul", "Div", "Pow", "Softplus", "Exp", "Log", "Neg", "Sqrt"}
_GATE_CORES = {"Sigmoid": "SiLU", "HardSigmoid": "HardSwish", "Erf": "GELU (erf)", "Tanh": "GELU (tanh)"}


@dataclass(frozen=True)
class ActivationSite:
    """One activation: ``pre`` goes in, ``post`` comes out; ``kind`` names the form.

    ``pre`` is "" when a fused op hides it (FusedConv/FusedGemm with an activation).
    """

    pre: str
    post: str
    kind: str
    node: int  # index of the node producing ``post``
    nodes: frozenset[int]


@dataclass(frozen=True)
class LayerSite:
    """One weighted layer and the tensor holding its output."""

    tensor: str
    op: str
    node: int
    feed: str = ""  # the tensor the layer reads its data from


@dataclass(frozen=True)
class Tap:
    """A tensor to score, with the roles it plays and the feature axis of its matrix."""

    name: str  # the layer or activation it belongs to
    op: str  # recognised op or pattern
    role: str  # "pre", "post" or "pre+post"
    tensor: str
    node: int
    axis: int  # feature axis (may be negative: counted from the end)
    axis_reason: str
    declared_shape: tuple[int | str | None, ...] | None
    elem_type: int
    rank_bound: int | None = None  # the matrix's rank can be no higher, from the weights' shapes
    feed: str | None = None  # the tensor its layer or activation reads (role "feed": a tap's feed itself)
    head: bool = False  # an output head: a model output follows it with no other tap between


@dataclass(frozen=True)
class Untappable:
    """Something that looks scorable but cannot be tapped, and why."""

    where: str
    op: str
    reason: str


@dataclass(frozen=True)
class TapPlan:
    """The taps of a graph in topological order, and what could not be tapped."""

    taps: tuple[Tap, ...]
    untappable: tuple[Untappable, ...]


def find_activations(index: GraphIndex) -> list[ActivationSite]:
    """Every activation site of the main graph, exporter patterns first, then native ops."""
    sites: list[ActivationSite] = []
    claimed: set[int] = set()
    for i, n in enumerate(index.nodes):
        if n.domain in ("", "ai.onnx") and n.op_type in _GATE_CORES:
            site = _match_gated(index, i)
            if site is not None and not (site.nodes & claimed):
                sites.append(site)
                claimed |= site.nodes
    for i, n in enumerate(index.nodes):
        if i in claimed or not n.output or not n.input:
            continue
        fused = _fused_activation(n)
        if fused:  # the pre-activation is hidden inside the fused op ("" = not visible)
            sites.append(ActivationSite("", n.output[0], f"{n.op_type}+{fused} ({MS})", i, frozenset({i})))
            continue
        kind = _native_kind(index, n)
        if kind is not None:
            sites.append(_with_threshold(index, ActivationSite(n.input[0], n.output[0], kind, i, frozenset({i}))))
    return sorted(sites, key=lambda s: s.node)


def _with_threshold(index: GraphIndex, site: ActivationSite) -> ActivationSite:
    """Absorb ``Where(x > t, x, act(x))``, the threshold PyTorch's dynamo exporter puts
    around Softplus: the activation's output is then the Where's."""
    users = index.consumers.get(site.post, [])
    if len(users) != 1 or site.post in index.graph_outputs:
        return site
    j = users[0]
    w = index.nodes[j]
    if w.op_type != "Where" or len(w.input) != 3 or set(w.input[1:]) != {site.pre, site.post}:
        return site
    cond = index.nodes[index.producer[w.input[0]]] if w.input[0] in index.producer else None
    if (
        cond is None
        or cond.op_type not in ("Greater", "Less", "GreaterOrEqual", "LessOrEqual")
        or site.pre not in cond.input
    ):
        return site
    c = index.producer[w.input[0]]
    return ActivationSite(site.pre, w.output[0], site.kind, j, site.nodes | {j, c})


def _fused_activation(n: onnx.NodeProto) -> str:
    """The activation fused into a com.microsoft FusedConv/FusedGemm node ("" if none)."""
    if n.domain != MS or n.op_type not in FUSED_WITH_ACTIVATION:
        return ""
    act = attribute(n, "activation", b"")
    return act.decode() if isinstance(act, bytes) else str(act)


def _native_kind(index: GraphIndex, n: onnx.NodeProto) -> str | None:
    if n.domain in ("", "ai.onnx"):
        if n.op_type in NATIVE_ACTIVATIONS:
            if n.op_type == "Gelu" and attribute(n, "approximate", b"none") in (b"tanh", "tanh"):
                return "Gelu (tanh)"
            return n.op_type
        if n.op_type == "Clip":
            return _clip_kind(index, n)
    elif n.domain == MS and n.op_type in CONTRIB_ACTIVATIONS:
        return f"{n.op_type} ({MS})"
    return None


def _clip_kind(index: GraphIndex, n: onnx.NodeProto) -> str | None:
    """Clip(x, 0, max) is a ReLU-like activation (ReLU6 when max is 6); other clips are not."""
    if len(n.input) > 1 or not any(a.name in ("min", "max") for a in n.attribute):
        lo = _scalar(index, n.input[1]) if len(n.input) > 1 and n.input[1] else None
        hi = _scalar(index, n.input[2]) if len(n.input) > 2 and n.input[2] else None
    else:
        lo, hi = attribute(n, "min"), attribute(n, "max")
    if lo is None or float(lo) != 0.0:
        return None
    if hi is not None and float(hi) == 6.0:
        return "ReLU6 (Clip)"
    return "Clip(0, max)"


def _scalar(index: GraphIndex, name: str) -> float | None:
    v = index.const_value(name)
    if v is None or v.size != 1:
        return None
    return float(np.asarray(v).reshape(()))


def _other_input(n: onnx.NodeProto, t: str) -> str | None:
    ins: list[str] = list(n.input)
    if len(ins) != 2 or ins.count(t) != 1:
        return None
    return ins[1] if ins[0] == t else ins[0]


def _inner_closure(index: GraphIndex, start: str, depth: int = 10) -> set[str]:
    """``start`` and the tensors it is computed from through scalar-style ops (x/√2, x³…)."""
    seen = {start}
    frontier = [start]
    for _ in range(depth):
        nxt: list[str] = []
        for t in frontier:
            p = index.node_of(t)
            if p is None or p.domain not in ("", "ai.onnx") or p.op_type not in _INNER_OPS:
                continue
            for x in p.input:
                if x and not index.is_const(x) and x not in seen:
                    seen.add(x)
                    nxt.append(x)
        frontier = nxt
    return seen


def _strip_scale(index: GraphIndex, t: str, targets: set[str]) -> tuple[str, set[int]] | None:
    """Follow ``t`` back through multiplications by constants until it reaches ``targets``.

    Returns the tensor reached and the scaling nodes passed on the way.
    """
    passed: set[int] = set()
    for _ in range(4):
        if t in targets:
            return t, passed
        i = index.producer.get(t)
        p = index.nodes[i] if i is not None else None
        if p is None or p.op_type not in ("Mul", "Div") or len(p.input) != 2:
            return None
        a, b = p.input
        if index.is_const(b):
            t = a
        elif p.op_type == "Mul" and index.is_const(a):
            t = b
        else:
            return None
        passed.add(i)  # type: ignore[arg-type]
    return (t, passed) if t in targets else None


def _only_from(index: GraphIndex, start: str, x: str, depth: int = 10) -> bool:
    """True when ``start`` is computed from ``x`` and constants alone, through scalar-style ops."""
    if start == x:
        return True
    if depth == 0:
        return False
    p = index.node_of(start)
    if p is None or p.domain not in ("", "ai.onnx") or p.op_type not in _INNER_OPS:
        return False
    return all(index.is_const(i) or _only_from(index, i, x, depth - 1) for i in p.input if i)


def _match_gated(index: GraphIndex, core: int) -> ActivationSite | None:
    """Match ``x · f(g(x))`` around the core node (Sigmoid, HardSigmoid, Erf or Tanh).

    Walks forward from the core through constant shifts/scales (``1 + erf``) until a
    ``Mul`` with ``x`` (or ``c·x``) gates it, then through constant scalings (``· 0.5``).
    Returns None when no gate is found (a plain Sigmoid or Tanh stays a native activation).
    """
    n = index.nodes[core]
    if not n.input or not n.output:
        return None
    u = n.input[0]
    ancestors = _inner_closure(index, u)
    t = n.output[0]
    nodes = {core}
    x: str | None = None
    scales: set[int] = set()
    while t not in index.graph_outputs:
        users = index.consumers.get(t, [])
        if len(users) != 1:
            break
        j = users[0]
        m = index.nodes[j]
        other = _other_input(m, t)
        if m.domain not in ("", "ai.onnx") or m.op_type not in ("Add", "Sub", "Mul", "Div") or other is None:
            break
        if index.is_const(other):
            if m.op_type == "Div" and m.input[0] != t:
                break
            if x is not None and m.op_type not in ("Mul", "Div"):
                break
        elif x is None and m.op_type == "Mul":
            found = _strip_scale(index, other, ancestors)
            if found is None or not _only_from(index, u, found[0]):
                break
            x, scales = found
            nodes |= scales
        else:
            break
        nodes.add(j)
        t = m.output[0]
    if x is None:
        return None
    # The nodes computing the core's input from x belong to the pattern too.
    inner = _path_nodes(index, u, x)
    nodes |= inner
    kind = _GATE_CORES[n.op_type]
    if n.op_type == "Tanh":
        ops = {index.nodes[i].op_type for i in inner}
        kind = "Mish" if ops & {"Softplus", "Exp", "Log"} else "GELU (tanh)" if ops & {"Pow", "Mul"} else "x·Tanh(x)"
    return ActivationSite(pre=x, post=t, kind=kind, node=max(nodes), nodes=frozenset(nodes))


def _path_nodes(index: GraphIndex, start: str, stop: str) -> set[int]:
    """Producers of the tensors between ``stop`` (excluded) and ``start`` (included)."""
    out: set[int] = set()
    frontier = [start]
    while frontier:
        t = frontier.pop()
        if t == stop:
            continue
        i = index.producer.get(t)
        if i is None or i in out or index.nodes[i].op_type not in _INNER_OPS:
            continue
        out.add(i)
        frontier.extend(x for x in index.nodes[i].input if x and not index.is_const(x))
    return out


def find_layers(index: GraphIndex) -> list[LayerSite]:
    """Every weighted-layer output of the main graph."""
    sites: list[LayerSite] = []
    for i, n in enumerate(index.nodes):
        if not n.output or not n.output[0]:
            continue
        key = (n.domain if n.domain != "ai.onnx" else "", n.op_type)
        if key[0] == "" and n.op_type in WEIGHTED:
            sites.append(LayerSite(n.output[0], n.op_type, i, _data_input(index, n)))
        elif key[0] == MS and n.op_type in CONTRIB_WEIGHTED:
            sites.append(LayerSite(n.output[0], f"{n.op_type} ({MS})", i, _data_input(index, n)))
        elif key[0] == MS and n.op_type in FUSED_WITH_ACTIVATION and not _fused_activation(n):
            sites.append(LayerSite(n.output[0], f"{n.op_type} ({MS})", i, _data_input(index, n)))
        elif key in MATMULS and any(index.is_const(x) for x in n.input[:2]):
            if all(index.is_const(x) for x in n.input[:2]):
                continue
            sites.append(_with_bias(index, n.output[0], n.op_type, i, _data_input(index, n)))
        elif key == ("", "Mul"):
            site = _affine(index, n) or _rms_norm(index, n, i)
            if site is not None:
                sites.append(site)
    return sites


def _rms_norm(index: GraphIndex, n: onnx.NodeProto, i: int) -> LayerSite | None:
    """``Mul`` of a constant vector γ and x / √(mean(x²) + ε): RMSNorm as exporters decompose
    it (Llama, Mistral, T5: Pow or Mul for x², ReduceMean, Add ε, Sqrt, then Div, or
    Reciprocal and Mul; Casts around it), tapped as a normalisation like LayerNorm."""
    if len(n.input) != 2:
        return None
    gamma = next((x for x in n.input if index.is_const(x)), None)
    if gamma is None or not _is_vector(index, gamma):
        return None
    normed = _other_input(n, gamma)
    if normed is None or index.is_const(normed):
        return None
    m = _through_casts(index, normed)
    if m is None or m.domain not in ("", "ai.onnx"):
        return None
    if m.op_type == "Div" and len(m.input) == 2:
        x, root = m.input[0], index.node_of(m.input[1])
    elif m.op_type == "Mul" and len(m.input) == 2:  # x · 1/√…: Reciprocal (dynamo) or Div(1, ·) (TorchScript)
        pair = [(a, _through_casts(index, b)) for a, b in ((m.input[0], m.input[1]), (m.input[1], m.input[0]))]
        x, recip = next(((a, r) for a, r in pair if r is not None and _is_reciprocal(index, r)), ("", None))
        root = index.node_of(recip.input[-1]) if recip is not None else None
    else:
        return None
    if root is None or root.op_type != "Sqrt":
        return None
    add = index.node_of(root.input[0])
    if add is None or add.op_type != "Add":
        return None
    mean = next((index.node_of(v) for v in add.input if not index.is_const(v)), None)
    if mean is None or mean.op_type != "ReduceMean":
        return None
    square = index.node_of(mean.input[0])
    if square is None or not _squares(index, square, _source(index, x)):
        return None
    return LayerSite(n.output[0], "RMSNorm", i, _source(index, x))


def _is_reciprocal(index: GraphIndex, n: onnx.NodeProto) -> bool:
    """``Reciprocal(v)`` or ``Div(1, v)``."""
    if n.op_type == "Reciprocal":
        return True
    one = index.const_value(n.input[0]) if n.op_type == "Div" and len(n.input) == 2 else None
    return one is not None and one.size == 1 and float(one.reshape(())) == 1.0


def _through_casts(index: GraphIndex, t: str) -> onnx.NodeProto | None:
    """The node making ``t``, looking through Casts."""
    node = index.node_of(t)
    while node is not None and node.op_type == "Cast":
        node = index.node_of(node.input[0])
    return node


def _source(index: GraphIndex, t: str) -> str:
    """``t`` with the Casts that made it looked through."""
    node = index.node_of(t)
    while node is not None and node.op_type == "Cast":
        t = node.input[0]
        node = index.node_of(t)
    return t


def _squares(index: GraphIndex, node: onnx.NodeProto, x: str) -> bool:
    """True when ``node`` computes x² of the tensor ``x`` (Pow(x, 2) or Mul(x, x), Casts aside)."""
    if node.op_type == "Pow" and len(node.input) == 2:
        exponent = index.const_value(node.input[1])
        return (
            _source(index, node.input[0]) == x
            and exponent is not None
            and exponent.size == 1
            and float(exponent) == 2.0
        )
    if node.op_type == "Mul" and len(node.input) == 2:
        return _source(index, node.input[0]) == x == _source(index, node.input[1])
    return False


def _affine(index: GraphIndex, n: onnx.NodeProto) -> LayerSite | None:
    """``Mul`` by a constant vector, then ``Add`` of a constant vector: a decomposed affine
    normalisation (BatchNorm as tf2onnx writes it, LayerNorm before opset 17).  The scale
    and shift must hold more than one value, so scalar arithmetic (GELU's 0.5, +1) is not
    mistaken for a layer."""
    if len(n.input) != 2:
        return None
    scale = next((x for x in n.input if index.is_const(x)), None)
    if scale is None or all(index.is_const(x) for x in n.input) or not _is_vector(index, scale):
        return None
    out = n.output[0]
    users = index.consumers.get(out, [])
    if len(users) != 1 or out in index.graph_outputs:
        return None
    j = users[0]
    m = index.nodes[j]
    shift = _other_input(m, out)
    if m.op_type != "Add" or m.domain not in ("", "ai.onnx") or shift is None or not index.is_const(shift):
        return None
    if not _is_vector(index, shift):
        return None
    return LayerSite(m.output[0], "Mul+Add (affine)", j, _data_input(index, n))


def _is_vector(index: GraphIndex, name: str) -> bool:
    """True when the constant ``name`` has more than one element and one non-unit dim."""
    dims = _const_dims(index, name)
    return dims is not None and sum(1 for d in dims if d != 1) == 1


def _const_dims(index: GraphIndex, name: str) -> list[int] | None:
    """The dims of the constant ``name`` (declared, else from its value), if all known."""
    dims = index.dims(name)
    if dims is None:
        v = index.const_value(name)
        dims = list(v.shape) if v is not None else None
    if dims is None or not all(isinstance(d, int) for d in dims):
        return None
    return [int(d) for d in dims if d is not None]


def _data_input(index: GraphIndex, n: onnx.NodeProto) -> str:
    """The first input of ``n`` that is not a constant: what a layer reads its data from."""
    return next((x for x in n.input if x and not index.is_const(x)), "")


def _with_bias(index: GraphIndex, out: str, op: str, i: int, feed: str) -> LayerSite:
    """A MatMul followed by ``Add`` of a constant bias: the layer output is the Add's."""
    users = index.consumers.get(out, [])
    if len(users) == 1 and out not in index.graph_outputs:
        j = users[0]
        m = index.nodes[j]
        other = _other_input(m, out)
        if m.op_type == "Add" and m.domain in ("", "ai.onnx") and other is not None and index.is_const(other):
            return LayerSite(m.output[0], f"{op}+Add", j, feed)
    return LayerSite(out, op, i, feed)


def find_untappable(index: GraphIndex) -> list[Untappable]:
    """What the taps cannot see: control-flow bodies and fused pre-activations."""
    out: list[Untappable] = []
    for i, n in enumerate(index.nodes):
        if n.op_type in CONTROL_FLOW:
            inside = sorted(_scorable_ops_in_subgraphs(n))
            if inside:
                why = (
                    "tensors inside If/Loop/Scan bodies are not visible as outputs"
                    if n.op_type == "If"
                    else f"a {n.op_type} body runs once per iteration, and its tensors are not visible as outputs"
                )
                out.append(
                    Untappable(
                        index.label(i),
                        n.op_type,
                        f"{len(inside)} weighted/activation op(s) inside its body ({', '.join(sorted(set(inside)))}) "
                        f"cannot be tapped: {why}",
                    )
                )
        elif n.op_type in QUANTISED:
            out.append(
                Untappable(
                    index.label(i),
                    n.op_type,
                    "a quantised layer: its integer output is not scored (onnx-near scores float models; "
                    "score the model before quantisation)",
                )
            )
        elif n.domain == "com.microsoft.nchwc" and n.op_type == "Conv":
            out.append(
                Untappable(
                    index.label(i),
                    f"{n.op_type} (com.microsoft.nchwc)",
                    "it works in onnxruntime's blocked NCHWc layout, which ORT_ENABLE_ALL writes for this CPU only; "
                    "save the optimised model with ORT_ENABLE_EXTENDED to score its convolutions",
                )
            )
        elif _fused_activation(n):
            act = _fused_activation(n)
            out.append(
                Untappable(
                    index.label(i),
                    f"{n.op_type} ({MS})",
                    f"the pre-activation before its fused {act or 'activation'} is not exposed by the fused op; "
                    "only its output is tapped",
                )
            )
    return out


def _scorable_ops_in_subgraphs(n: onnx.NodeProto) -> list[str]:
    """The ops in the bodies of ``n`` that would be taps in the main graph."""
    found: list[str] = []
    for a in n.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            found.extend(scorable_ops(g))
    return found


def scorable_ops(graph: onnx.GraphProto) -> list[str]:
    """The ops of a control-flow body (and of the bodies nested in it) that would be taps in
    the main graph: weighted layers, activations, MatMuls."""
    found = [m.op_type for m in graph.node if scorable_in_body(m.op_type)]
    for m in graph.node:
        if m.op_type in CONTROL_FLOW:
            found.extend(_scorable_ops_in_subgraphs(m))
    return found


def feature_axes(index: GraphIndex) -> dict[str, tuple[int, str]]:
    """Feature axis of every tensor of the main graph, with the reason it was chosen.

    Propagated in topological order: channel-wise ops (Conv, BatchNorm, pooling…) put the
    features on axis 1; dense ops (Gemm, MatMul, LayerNorm, Flatten…) on the last axis;
    elementwise ops keep the axis of their first non-constant input; Transpose moves it.
    """
    axes: dict[str, tuple[int, str]] = {}
    for i, n in enumerate(index.nodes):
        if not n.output:
            continue
        label = index.label(i)
        n.output[0]
        if n.op_type in CHANNEL_OPS:
            value = (1, f"{n.op_type} output: channels on axis 1")
        elif n.op_type in LAST_AXIS_OPS:
            value = (-1, f"{n.op_type} output: features on the last axis")
        elif n.op_type == "Transpose":
            value = _through_transpose(index, n, axes, label)
        else:
            src = next((axes[x] for x in n.input if x in axes and not index.is_const(x)), None)
            if src is None:
                continue
            value = src
        for o in n.output:
            if o:
                axes[o] = value
    return axes


def _through_transpose(
    index: GraphIndex, n: onnx.NodeProto, axes: Mapping[str, tuple[int, str]], label: str
) -> tuple[int, str]:
    src = axes.get(n.input[0])
    perm = list(attribute(n, "perm") or [])
    rank = index.rank(n.input[0])
    if src is None or not perm:
        return (-1, "after a Transpose of unknown layout: last axis assumed")
    a = src[0] if src[0] >= 0 or rank is None else src[0] + rank
    if a < 0:
        a = len(perm) + a
    if a not in perm:  # a perm that does not fit the tensor: the runtime will say more
        return (-1, f"Transpose {label} has a perm that does not fit: last axis assumed")
    new = perm.index(a)
    return (new, f"Transpose {label} moved the features to axis {new}")


def plan_taps(
    index: GraphIndex, mode: str = "all", axes: Mapping[str, int] | None = None, feeds: bool = False
) -> TapPlan:
    """The taps of the graph for ``mode`` ("all" or "activations"), in topological order.

    ``axes`` overrides the inferred feature axis, keyed by tap tensor or tap name.  Every tap
    names its *feed*, the tensor its layer or activation reads; with ``feeds`` the feeds that
    are not taps themselves (a pooled vector, a residual sum, the model's input) are planned
    too, with role ``"feed"``: they are measured, never counted in the score (vet compares
    each tap with what it was given).
    """
    activations = find_activations(index)
    roles: dict[str, list[str]] = {}
    meta: dict[str, tuple[str, str, int]] = {}
    feed_of: dict[str, str] = {}
    data = data_dependent(index)

    def add(tensor: str, role: str, name: str, op: str, node: int, feed: str) -> None:
        if tensor in index.graph_inputs or tensor not in data or not tensor:
            return
        if role not in roles.setdefault(tensor, []):
            roles[tensor].append(role)
        if tensor not in meta or (role == "post"):
            meta[tensor] = (name, op, node)
            feed_of[tensor] = feed

    if mode == "all":
        for s in find_layers(index):
            add(s.tensor, "pre", index.label(s.node), s.op, s.node, s.feed)
    for a in activations:
        if mode == "activations" and a.pre:
            producer = index.producer.get(a.pre)
            add(
                a.pre,
                "pre",
                index.label(producer) if producer is not None else a.pre,
                _op_of(index, a.pre),
                producer if producer is not None else -1,
                _data_input(index, index.nodes[producer]) if producer is not None else "",
            )
        add(a.post, "post", index.label(a.node), a.kind, a.node, a.pre)
    if feeds:
        for tensor in list(roles):
            f = feed_of.get(tensor, "")
            if f and f not in roles and (f in data or f in index.graph_inputs) and _floating(index, f):
                roles[f] = ["feed"]
                producer = index.producer.get(f)
                meta[f] = (f, _op_of(index, f), producer if producer is not None else -1)
                feed_of[f] = ""
    inferred = feature_axes(index)
    overrides = dict(axes or {})
    taps: list[Tap] = []
    for tensor, rs in roles.items():
        name, op, _node = meta[tensor]
        if tensor in overrides or name in overrides:
            axis, reason = overrides.get(tensor, overrides.get(name, -1)), "set by the user"
        elif tensor in inferred:
            axis, reason = inferred[tensor]
        elif rs == ["feed"]:  # a layer reads its features on the axis it writes them (Conv: 1)
            reader = next(t for t, f in feed_of.items() if f == tensor)
            axis, reason = _feed_axis(index, reader, inferred, overrides)
        else:
            axis, reason = -1, "no layout known: last axis assumed"
        dims = index.dims(tensor)
        role = "feed" if rs == ["feed"] else "+".join(r for r in ("pre", "post") if r in rs)
        natural = tensor in inferred and reason == inferred[tensor][1]  # the feature axis the graph gives
        taps.append(
            Tap(
                name,
                op,
                role,
                tensor,
                index.producer.get(tensor, -1),
                axis,
                reason,
                tuple(dims) if dims is not None else None,
                index.elem_type(tensor),
                structural_rank(index, tensor) if natural else None,
                feed_of.get(tensor) or None,
            )
        )
    heads = output_heads(index, {t.tensor for t in taps if t.role != "feed"})
    taps = [replace(t, head=True) if t.tensor in heads else t for t in taps]
    taps.sort(key=lambda t: (t.node, t.tensor))
    return TapPlan(tuple(taps), tuple(find_untappable(index)))


def output_heads(index: GraphIndex, taps: set[str]) -> set[str]:
    """The taps from which a model output is reached without passing another tap: the last
    layers (a classifier's logits, a detector's class sigmoids), judged as heads by vet."""
    heads: set[str] = set()
    seen: set[str] = set()
    frontier = list(index.graph_outputs)
    while frontier:
        t = frontier.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in taps:
            heads.add(t)
            continue
        n = index.node_of(t)
        if n is not None:
            frontier.extend(x for x in n.input if x and not index.is_const(x))
    return heads


def _floating(index: GraphIndex, tensor: str) -> bool:
    elem = index.elem_type(tensor)
    return elem in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def _feed_axis(
    index: GraphIndex, reader: str, inferred: Mapping[str, tuple[int, str]], overrides: Mapping[str, int]
) -> tuple[int, str]:
    """The feature axis of a feed with no layout of its own: that of the tap reading it."""
    if reader in overrides:
        return overrides[reader], "the axis set for the tap that reads it"
    axis = inferred.get(reader, (-1, ""))[0]
    return axis, f"the axis of the tap that reads it ({reader})"


def data_dependent(index: GraphIndex) -> set[str]:
    """The tensors computed from the values of the model's inputs (SPEC §2: only those are
    taps).  Constants are not, and neither is what is computed from input *shapes* alone —
    a rotary embedding's table, inverse frequencies × Range(Shape(x)) positions."""
    out = set(index.graph_inputs)
    for n in index.nodes:
        if n.op_type in SHAPE_ONLY or n.op_type in CONTROL_FLOW:
            if n.op_type in CONTROL_FLOW:  # a subgraph may read anything: its outputs may be data
                out.update(o for o in n.output if o)
            continue
        if any(x in out for x in n.input if x):
            out.update(o for o in n.output if o)
    return out


def structural_rank(index: GraphIndex, tensor: str, depth: int = 4) -> int | None:
    """An upper bound on the rank of ``tensor`` as a matrix (features as columns) that the
    weights' shapes imply, or None when they imply none.

    A layer maps each row through its weight: Gemm or MatMul with a K×N constant gives rank
    ≤ K, a Conv ≤ (input channels per group)·(kernel size)·groups, plus one for a bias.  A
    per-feature affine op after it (BatchNorm, a decomposed Mul+Add) adds at most one, a
    LayerNorm at most two (centring, then the shift).  NEAR's matrices of a layer much wider
    than its input are rank-deficient for that reason alone.
    """
    n = index.node_of(tensor)
    if n is None or depth == 0 or n.domain not in ("", "ai.onnx"):
        return None
    const = [index.is_const(x) for x in n.input[:2]] if len(n.input) >= 2 else [False, False]
    if n.op_type in ("Add", "Mul") and len(n.input) == 2 and const.count(True) == 1:
        c, x = (n.input[0], n.input[1]) if const[0] else (n.input[1], n.input[0])
        if not _along_one_axis(index, c):  # a full constant tensor can raise the rank further
            return None
        inner = structural_rank(index, x, depth - 1)  # scaling rows or columns keeps the rank,
        return inner + (1 if n.op_type == "Add" else 0) if inner is not None else None  # a shift adds one
    if n.op_type == "BatchNormalization" or (n.op_type == "LayerNormalization" and _last_axis(index, n)):
        inner = structural_rank(index, n.input[0], depth - 1)
        return inner + (1 if n.op_type == "BatchNormalization" else 2) if inner is not None else None
    w = index.dims(n.input[1]) if len(n.input) > 1 and const[1] and not const[0] else None
    if w is None or not all(isinstance(d, int) for d in w):
        return None
    dims = [int(d) for d in w if d is not None]
    bias = 1 if len(n.input) > 2 and n.input[2] else 0
    if n.op_type == "MatMul" and len(dims) == 2:
        return dims[0]
    if n.op_type == "Gemm" and len(dims) == 2 and not attribute(n, "transA", 0):
        return (dims[1] if attribute(n, "transB", 0) else dims[0]) + bias
    if n.op_type == "Conv" and len(dims) >= 3:
        return int(np.prod(dims[1:])) * int(attribute(n, "group", 1) or 1) + bias
    return None


def _along_one_axis(index: GraphIndex, name: str) -> bool:
    """True when the constant ``name`` is a scalar or varies along one axis only."""
    dims = _const_dims(index, name)
    return dims is not None and sum(1 for d in dims if d != 1) <= 1


def _last_axis(index: GraphIndex, n: onnx.NodeProto) -> bool:
    """True when a LayerNormalization normalises over the last axis alone (rows stay rows)."""
    axis = int(attribute(n, "axis", -1))
    rank = index.rank(n.input[0])
    return axis == -1 or (rank is not None and axis == rank - 1)


def _op_of(index: GraphIndex, tensor: str) -> str:
    n = index.node_of(tensor)
    return n.op_type if n is not None else "input"
