"""Rewrite pass: swap every activation of a model for a candidate activation (SPEC §6).

Used to choose an activation function without training: the same architecture, the same
weights, only the non-linearity changes.  Each activation site found by
:func:`onnx_near.taps.find_activations` — native op or exporter pattern — is replaced by
the standard ops of the candidate, reading the site's pre-activation and writing its
post-activation tensor, so the rest of the graph is untouched.

    before:  h ─ Sigmoid ─ s ─ Mul(h, s) ─ y        (SiLU as an exporter writes it)
    after:   h ─ Tanh ─ y                            (candidate "tanh")
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import ConfigError, GraphError
from .graph import GraphIndex
from .taps import find_activations

# Candidate name → the callable that writes its nodes (pre → post) at a given opset.
CANDIDATES = (
    "relu",
    "leaky_relu",
    "elu",
    "selu",
    "celu",
    "gelu",
    "gelu_tanh",
    "silu",
    "mish",
    "tanh",
    "sigmoid",
    "softplus",
    "softsign",
    "hardswish",
    "hardsigmoid",
    "relu6",
)


def check_activation(candidate: str) -> None:
    """Raise :class:`ConfigError` unless ``candidate`` is one of :data:`CANDIDATES`."""
    if candidate not in CANDIDATES:
        raise ConfigError(f"unknown activation {candidate!r}; expected one of {', '.join(CANDIDATES)}")


class _Nodes:
    """Collects the nodes and constants written for one site."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.consts: list[onnx.TensorProto] = []
        self._k = 0

    def tmp(self) -> str:
        self._k += 1
        return f"{self.prefix}/t{self._k}"

    def const(self, value: float) -> str:
        self._k += 1
        name = f"{self.prefix}/c{self._k}"
        self.consts.append(numpy_helper.from_array(np.array(value, dtype=np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
        out = out or self.tmp()
        self.nodes.append(
            helper.make_node(op_type, inputs, [out], name=f"{self.prefix}/{op_type}_{len(self.nodes)}", **attrs)
        )
        return out


def _write(b: _Nodes, candidate: str, x: str, y: str, opset: int) -> None:
    """Nodes computing ``y = candidate(x)`` in the default domain at ``opset``."""
    simple = {
        "relu": "Relu",
        "tanh": "Tanh",
        "sigmoid": "Sigmoid",
        "softplus": "Softplus",
        "softsign": "Softsign",
        "selu": "Selu",
    }
    if candidate in simple:
        b.op(simple[candidate], [x], y)
    elif candidate == "leaky_relu":
        b.op("LeakyRelu", [x], y, alpha=0.01)
    elif candidate == "elu":
        b.op("Elu", [x], y, alpha=1.0)
    elif candidate == "celu":
        b.op("Celu", [x], y, alpha=1.0) if opset >= 12 else b.op("Elu", [x], y, alpha=1.0)
    elif candidate == "hardsigmoid":
        b.op("HardSigmoid", [x], y, alpha=1.0 / 6.0, beta=0.5)
    elif candidate == "hardswish":
        if opset >= 14:
            b.op("HardSwish", [x], y)
        else:
            b.op("Mul", [x, b.op("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)], y)
    elif candidate == "relu6":
        b.op("Clip", [x, b.const(0.0), b.const(6.0)], y)
    elif candidate == "silu":
        b.op("Mul", [x, b.op("Sigmoid", [x])], y)
    elif candidate == "mish":
        b.op("Mish", [x], y) if opset >= 18 else b.op("Mul", [x, b.op("Tanh", [b.op("Softplus", [x])])], y)
    elif candidate == "gelu":
        if opset >= 20:
            b.op("Gelu", [x], y)
        else:
            erf = b.op("Erf", [b.op("Div", [x, b.const(math.sqrt(2.0))])])
            b.op("Mul", [b.op("Mul", [x, b.op("Add", [erf, b.const(1.0)])]), b.const(0.5)], y)
    elif candidate == "gelu_tanh":
        if opset >= 20:
            b.op("Gelu", [x], y, approximate="tanh")
        else:
            cube = b.op("Mul", [x, b.op("Mul", [x, x])])
            inner = b.op(
                "Mul", [b.op("Add", [x, b.op("Mul", [cube, b.const(0.044715)])]), b.const(math.sqrt(2.0 / math.pi))]
            )
            half_x = b.op("Mul", [x, b.const(0.5)])
            b.op("Mul", [half_x, b.op("Add", [b.op("Tanh", [inner]), b.const(1.0)])], y)
    else:
        check_activation(candidate)


def swap_activations(model: onnx.ModelProto, candidate: str) -> onnx.ModelProto:
    """A copy of ``model`` in which every activation site computes ``candidate`` instead.

    Raises :class:`GraphError` when the model has no activation whose input is visible.
    ``model`` itself is left as it is.
    """
    check_activation(candidate)
    index = GraphIndex(model)
    sites = [s for s in find_activations(index) if s.pre]
    if not sites:
        raise GraphError("the model has no activation to swap")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    replaced: dict[int, list[onnx.NodeProto]] = {}
    removed: set[int] = set()
    consts: list[onnx.TensorProto] = []
    for k, site in enumerate(sites):
        b = _Nodes(f"onnx_near_swap/{k}")
        _write(b, candidate, site.pre, site.post, opset)
        removable = _removable(index, site.nodes, site.post)
        removed |= removable
        replaced[site.node] = b.nodes
        consts += b.consts
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes: list[onnx.NodeProto] = []
    for i, n in enumerate(index.nodes):
        if i in replaced:
            nodes.extend(replaced[i])
        elif i not in removed:
            nodes.append(n)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(consts)
    return out


def _removable(index: GraphIndex, nodes: frozenset[int], post: str) -> set[int]:
    """The site's nodes none of whose outputs (but ``post``) is read outside the site."""
    out: set[int] = set()
    for i in nodes:
        external = [
            o
            for o in index.nodes[i].output
            if o and o != post and (o in index.graph_outputs or any(c not in nodes for c in index.consumers.get(o, [])))
        ]
        if not external:
            out.add(i)
    return out
