"""Pass 1 for quantised graphs: the graph read as the float network it stands for, for the tap finder alone.

:func:`float_view`'s graph never runs.  Every integer tensor is replaced by a float name for
its value, each quantised op by its float op (the kinds of graph: :mod:`onnx_near.quantised`)::

    graph:  r ─ QuantizeLinear ─ r_q ─ QLinearConv(w_q, y_scale, y_zp) ─ y_q ─ QGemm ─ …
    view:   r ─ Conv(Cast(w_q)) ─ y′ ─ Gemm ─ …       (y′ stands for DequantizeLinear(y_q))

    graph:  c ─ Conv ─ y ─ QuantizeLinear ─ DequantizeLinear ─ y″ ─ BatchNormalization
    view:   c ─ Conv ─ y ─ BatchNormalization                (y″ is y rounded)

so the tap finder's rules (layers, SiLU and GELU patterns, MatMul+Add, feature axes)
hold for quantised graphs as they are.  Pass 2 is :func:`~onnx_near.dequantise.dequantise_taps`.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import onnx
from onnx import helper

from .graph import GraphIndex, attribute, without_weights
from .ops import (
    FLOAT_PRODUCTS,
    FOLDS_RELU,
    INTEGER_PRODUCTS,
    MS,
    QOPERATOR,
    QUANTISED_PASSTHROUGH,
    QLinear,
    is_default,
)
from .quantised import FloatView, Standin, is_quantised, op_key

_VIEW = "onnx_near::view::"  # names of the view alone: never tensors of the graph that runs
_DEQUANTISED = "onnx_near::dequantised::"  # the DequantizeLinear outputs dequantise_taps may add
_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def float_view(index: GraphIndex) -> FloatView | None:
    """The float network the quantised graph of ``index`` stands for, or None for a graph
    that quantises no data (weight-only DequantizeLinear chains are weights already).

    Afterwards, in the view: no QuantizeLinear or DequantizeLinear of data is left (a
    layer's QuantizeLinear→DequantizeLinear pair is the layer's output itself); every
    QOperator op is its float op on the float names of its operands, its quantised
    constants Cast to float, writing the float name of its output (the output of a
    DequantizeLinear of it with the same scale and zero point when the graph has one, else a
    name in :attr:`FloatView.standins`); a ConvInteger or MatMulInteger followed by Cast and a
    Mul by the scales is a Conv or MatMul writing that Mul's output (a ConvInteger's bias
    Add too); a layer output quantised with its range starting at the zero point goes
    through a Relu.  Large weights are shape-only stubs (:func:`~onnx_near.graph.without_weights`).
    """
    if not is_quantised(index):
        return None
    b = _Builder(index)
    for i, n in enumerate(index.nodes):
        if i not in b.skip:
            b.visit(i, n)
    return b.finish(index.model)


class _Builder:
    """Builds the view node by node, in the graph's order."""

    def __init__(self, index: GraphIndex) -> None:
        self.index = index
        self.f: dict[str, str] = {}  # graph tensor → its float name in the view (itself when absent)
        self.q: dict[str, tuple[str, str]] = {}  # integer tensor → (scale, zero point)
        self.nodes: list[onnx.NodeProto] = []
        self.op_of: dict[str, str] = {}  # view tensor → the view op writing it
        self.standins: dict[str, Standin] = {}
        self.origins: dict[str, str] = {}
        self.folded: dict[str, str] = {}
        self.rounded: set[str] = set()
        self.hidden: set[str] = set()
        self.skip: set[int] = set()  # graph nodes an earlier view node took in
        self.casts: dict[str, str] = {}  # quantised constant → its float Cast in the view
        self.flat = ""  # the [-1] shape for flattening a bias, once needed

    # --- names ---------------------------------------------------------------------------
    def name(self, t: str) -> str:
        return self.f.get(t, t)

    def operand(self, t: str) -> str:
        """A quantised op's operand in the view: its float name, or a constant Cast to float."""
        if not t:
            return ""
        if not self.index.is_const(t):
            return self.name(t)
        if t not in self.casts:
            self.casts[t] = _VIEW + t + "::float"
            self.emit("Cast", [self.name(t)], [self.casts[t]], _VIEW + t + "::Cast", {"to": onnx.TensorProto.FLOAT})
        return self.casts[t]

    def standin(self, t: str) -> str:
        """The float name of the integer tensor ``t``: a DequantizeLinear of it with its own
        scale and zero point when the graph has one, else a new name to be added if tapped."""
        params = self.q[t]
        for j in self.index.consumers.get(t, []):
            m = self.index.nodes[j]
            if m.op_type == "DequantizeLinear" and m.input[0] == t and self.same(_params(m), params):
                self.f[t] = m.output[0]
                break
        else:
            self.f[t] = _DEQUANTISED + t
            self.standins[self.f[t]] = Standin(t, *params)
        self.rounded.add(self.f[t])
        return self.f[t]

    def same(self, a: tuple[str, str], b: tuple[str, str]) -> bool:
        """True when two (scale, zero point) pairs are the same tensors or equal constants."""
        for x, y in zip(a, b):
            if x == y:
                continue
            vx = self.index.const_value(x) if x else np.zeros(1)
            vy = self.index.const_value(y) if y else np.zeros(1)
            if vx is None or vy is None or vx.shape != vy.shape or not np.array_equal(vx, vy):
                return False
        return True

    def range_starts_at_zero(self, zero_point: str, default: bool) -> bool:
        """True when the zero point is the integer type's minimum (every value ≥ 0 in float);
        ``default`` for a zero point left out."""
        if not zero_point:
            return default
        v = self.index.const_value(zero_point)
        if v is None or v.size == 0 or v.dtype.kind not in "iu":
            return False
        return bool(np.all(v == np.iinfo(v.dtype).min))

    def adds_a_vector(self, n: onnx.NodeProto | None, operands: tuple[int, ...] = (0, 1)) -> bool:
        """True for an Add of a residual (two data operands) or of a bias (a constant of more
        than one element), not of a constant scalar (the 1 in a GELU's 1 + erf(x/√2))."""
        if n is None:
            return False
        constants = [n.input[p] for p in operands if p < len(n.input) and self.index.is_const(n.input[p])]
        return all(self.size(x) > 1 for x in constants)

    def size(self, t: str) -> int:
        """Elements of the constant ``t`` (a symbolic dim counts as many; 0 when unknown)."""
        dims = self.index.dims(t)
        if dims is not None:
            return int(np.prod([d if isinstance(d, int) else 2 for d in dims]))
        value = self.index.const_value(t)
        return value.size if value is not None else 0

    # --- nodes ---------------------------------------------------------------------------
    def emit(
        self, op: str, inputs: list[str], outputs: list[str], name: str, attrs: Mapping[str, Any] | None = None
    ) -> None:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **dict(attrs or {})))
        for o in outputs:
            if o:
                self.op_of[o] = op

    def visit(self, i: int, n: onnx.NodeProto) -> None:
        key = op_key(n)
        if n.op_type == "QuantizeLinear" and key[0] == "" and not self.index.is_const(n.input[0]):
            self.quantize(i, n)
        elif n.op_type == "DequantizeLinear" and key[0] == "" and n.input[0] in self.q:
            self.dequantize(i, n)
        elif n.op_type == "DynamicQuantizeLinear" and key[0] == "":
            self.dynamic_quantize(i, n)
        elif key in QOPERATOR and not attribute(n, "channels_last", 0):
            self.qoperator(i, n, QOPERATOR[key])
        elif key == (MS, "QLinearConcat"):
            self.concat(i, n)
        elif key[0] == "" and n.op_type in INTEGER_PRODUCTS and self.integer_product(i, n):
            pass
        elif key[0] == MS and n.op_type in FLOAT_PRODUCTS:
            self.float_product(i, n)
        elif key[0] == "" and n.op_type in QUANTISED_PASSTHROUGH and n.input and n.input[0] in self.q:
            self.passthrough(i, n)
        else:
            self.copy(i, n)

    def copy(self, i: int, n: onnx.NodeProto) -> None:
        m = onnx.NodeProto()
        m.CopyFrom(n)
        m.name = self.index.label(i)
        for k, x in enumerate(n.input):
            m.input[k] = self.name(x) if x else ""
        self.nodes.append(m)
        for o in m.output:
            if o:
                self.op_of[o] = m.op_type

    def quantize(self, i: int, n: onnx.NodeProto) -> None:
        """A layer's QuantizeLinear is its output, rounded; with its range starting at the zero
        point after a layer, the ReLU the quantiser folded into it."""
        q = n.output[0]
        self.q[q] = _params(n)
        x = self.name(n.input[0])
        producer = self.index.node_of(n.input[0])
        layer = self.op_of.get(x) in FOLDS_RELU and (self.op_of[x] != "Add" or self.adds_a_vector(producer))
        unsigned = attribute(n, "output_dtype", 0) in (0, onnx.TensorProto.UINT8, onnx.TensorProto.UINT16)
        if not layer or not self.range_starts_at_zero(self.q[q][1], default=unsigned):
            self.f[q] = x
            return
        out = self.standin(q)
        self.emit("Relu", [x], [out], self.index.label(i))
        self.folded[out] = "QuantizeLinear"

    def dequantize(self, i: int, n: onnx.NodeProto) -> None:
        """A DequantizeLinear of an integer tensor is that tensor's float name (another with
        other parameters: a copy of it)."""
        t, d = n.input[0], n.output[0]
        if self.same(_params(n), self.q[n.input[0]]):
            if self.name(t) != d:
                self.f[d] = self.name(t)
            return
        self.emit("Identity", [self.name(t)], [d], self.index.label(i))

    def dynamic_quantize(self, i: int, n: onnx.NodeProto) -> None:
        """DynamicQuantizeLinear's integers stand for its input; its scale and zero point stay."""
        y = n.output[0]
        self.q[y] = (n.output[1], n.output[2]) if len(n.output) > 2 else ("", "")
        self.f[y] = self.name(n.input[0])
        self.hidden.add(_VIEW + y)
        self.emit(n.op_type, [self.name(n.input[0])], [_VIEW + y, *n.output[1:]], self.index.label(i))

    def qoperator(self, i: int, n: onnx.NodeProto, spec: QLinear) -> None:
        """A QOperator op: its float op on its operands' float names, writing its output's."""
        ins = [self.operand(n.input[p]) if p < len(n.input) else "" for p in spec.operands]
        if spec.bias is not None and len(n.input) > spec.bias and n.input[spec.bias]:
            ins.append(self.operand(n.input[spec.bias]))
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute if a.name in spec.attributes}
        y = n.output[0]
        scale, zero = (n.input[p] if len(n.input) > p else "" for p in spec.output)
        if not scale:  # QGemm without y_scale: a float output
            out = y
        else:
            self.q[y] = (scale, zero)
            out = self.standin(y)
        self.origins[out] = n.op_type
        label = self.index.label(i)
        layer = spec.float_op in FOLDS_RELU and (spec.float_op != "Add" or self.adds_a_vector(n, spec.operands))
        if scale and layer and self.range_starts_at_zero(zero, default=False):
            pre = _VIEW + y
            self.hidden.add(pre)
            self.origins[pre] = n.op_type
            self.emit(spec.float_op, ins, [pre], label, attrs)
            self.emit("Relu", [pre], [out], label)
            self.folded[out] = n.op_type
        else:
            self.emit(spec.float_op, ins, [out], label, attrs)

    def concat(self, i: int, n: onnx.NodeProto) -> None:
        """QLinearConcat(y_scale, y_zero_point, (x, scale, zero point)…): a Concat."""
        y = n.output[0]
        self.q[y] = (n.input[0], n.input[1])
        out = self.standin(y)
        self.origins[out] = n.op_type
        ins = [self.operand(n.input[k]) for k in range(2, len(n.input), 3)]
        self.emit("Concat", ins, [out], self.index.label(i), {"axis": attribute(n, "axis", 0)})

    def integer_product(self, i: int, n: onnx.NodeProto) -> bool:
        """ConvInteger/MatMulInteger → Cast → Mul by the scales (→ a ConvInteger's bias Add):
        a Conv or MatMul writing that Mul's (Add's) output.  False when the product is not
        scaled back to float so (it stays as it is: an integer layer, not scored)."""
        idx = self.index
        cast = self._only_user(n.output[0], "Cast")
        mul = self._only_user(cast.output[0], "Mul") if cast is not None else None
        if cast is None or mul is None or attribute(cast, "to") not in _FLOATS:
            return False
        self.skip |= {idx.producer[cast.output[0]], idx.producer[mul.output[0]]}
        out = mul.output[0]
        ins = [self.operand(n.input[0]), self.operand(n.input[1])]
        attrs: dict[str, Any] = {}
        if n.op_type == "ConvInteger":
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            add = self._only_user(out, "Add")
            bias = next((x for x in add.input if x != out), "") if add is not None else ""
            if add is not None and len(add.input) == 2 and idx.is_const(bias):
                self.skip.add(idx.producer[add.output[0]])
                ins.append(self.flatten(bias))
                out = add.output[0]
        self.f[n.output[0]] = _VIEW + n.output[0]
        self.emit(INTEGER_PRODUCTS[n.op_type], ins, [out], self.index.label(i), attrs)
        self.origins[out] = n.op_type
        return True

    def float_product(self, i: int, n: onnx.NodeProto) -> None:
        """MatMulIntegerToFloat, DynamicQuantizeMatMul: a MatMul (then Add of their bias)."""
        y = n.output[0]
        ins = [self.operand(n.input[0]), self.operand(n.input[1])]
        at = FLOAT_PRODUCTS[n.op_type]
        bias = n.input[at] if len(n.input) > at else ""
        label = self.index.label(i)
        self.origins[y] = n.op_type
        if not bias:
            self.emit("MatMul", ins, [y], label)
            return
        pre = _VIEW + y
        self.hidden.add(pre)
        self.origins[pre] = n.op_type
        self.emit("MatMul", ins, [pre], label)
        self.emit("Add", [pre, self.operand(bias)], [y], label)

    def passthrough(self, i: int, n: onnx.NodeProto) -> None:
        """An op run on integers as they are: the same op on the float values."""
        params = self.q[n.input[0]]
        outs = []
        for o in n.output:
            if o:
                self.q[o] = params
                outs.append(self.standin(o))
            else:
                outs.append("")
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        self.emit(n.op_type, [self.name(x) if x else "" for x in n.input], outs, self.index.label(i), attrs)

    def flatten(self, bias: str) -> str:
        """The constant ``bias`` (1×C×1×1 for a Conv's bias Add) as a vector."""
        if not self.flat:
            self.flat = _VIEW + "flat"
        out = _VIEW + bias + "::vector"
        self.emit("Reshape", [self.name(bias), self.flat], [out], out)
        return out

    def _only_user(self, t: str, op: str) -> onnx.NodeProto | None:
        users = self.index.consumers.get(t, [])
        if len(users) != 1 or t in self.index.graph_outputs:
            return None
        m = self.index.nodes[users[0]]
        return m if m.op_type == op and is_default(m.domain) else None

    # --- the model -----------------------------------------------------------------------
    def finish(self, model: onnx.ModelProto) -> FloatView:
        view = without_weights(model)
        g = view.graph
        del g.node[:]
        g.node.extend(_after_their_inputs(self.nodes, {v.name for v in g.input} | {t.name for t in g.initializer}))
        if self.flat:
            g.initializer.append(helper.make_tensor(self.flat, onnx.TensorProto.INT64, [1], [-1]))
        outputs = list(g.output)
        del g.output[:]
        seen: set[str] = set()
        for o in outputs:
            o.name = self.name(o.name)
            if o.name not in seen:
                seen.add(o.name)
                g.output.append(o)
        known = {v.name: v for v in g.value_info}
        for name, s in self.standins.items():  # shapes, should inference of the view fail
            if s.integer in known:
                vi = g.value_info.add()
                vi.CopyFrom(known[s.integer])
                vi.name = name
                vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        return FloatView(
            view,
            dict(self.standins),
            dict(self.origins),
            dict(self.folded),
            frozenset(self.rounded),
            frozenset(self.hidden),
        )


def _params(n: onnx.NodeProto) -> tuple[str, str]:
    """(scale, zero point) of a QuantizeLinear or DequantizeLinear ("" for one left out)."""
    return (n.input[1] if len(n.input) > 1 else "", n.input[2] if len(n.input) > 2 else "")


def _after_their_inputs(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` in an order where each comes after the nodes writing its inputs, otherwise
    as given (the view writes a bias's flattening where the layer is, which may come before
    the graph's node making that bias)."""
    ready = set(available)
    ready.add("")
    pending = list(nodes)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for n in pending:
            if all(x in ready for x in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # inputs no node writes (subgraph outer scope…): keep the order
            ordered.extend(rest)
            break
        pending = rest
    return ordered
