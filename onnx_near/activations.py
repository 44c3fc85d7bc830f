"""Activation sites: elementwise non-linearities, native (Relu, Gelu, …) or spelled out by
exporters as small patterns (SiLU = x·Sigmoid(x), GELU via Erf or Tanh, Mish, HardSwish,
Clip as ReLU6, dynamo's thresholded Softplus).  For a pattern, its input ``x`` is the
pre-activation and its final output the post-activation (SPEC §2).  Read by
:mod:`onnx_near.taps`, which makes the taps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .graph import GraphIndex, attribute
from .ops import CONTRIB_ACTIVATIONS, FUSED_WITH_ACTIVATION, MS, NATIVE_ACTIVATIONS

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
        fused = fused_activation(n)
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


def fused_activation(n: onnx.NodeProto) -> str:
    """The activation fused into a com.microsoft FusedConv/FusedGemm node ("" if none)."""
    if n.domain != MS or n.op_type not in FUSED_WITH_ACTIVATION:
        return ""
    act = attribute(n, "activation", b"")
    return act.decode(errors="replace") if isinstance(act, bytes) else str(act)


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


def other_input(n: onnx.NodeProto, t: str) -> str | None:
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
        other = other_input(m, t)
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
