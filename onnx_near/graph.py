"""A read-only index over an ONNX graph: producers, consumers, constants and types.

The rewrite and tap stages ask the same questions of a graph many times ("who makes this
tensor?", "is it a constant?"); this index answers each in O(1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import GraphError
from .ops import QOPERATOR, WEIGHT_PASSTHROUGH

# Ops whose output is random even when every input is constant.
_NONDETERMINISTIC = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
}


@dataclass
class GraphIndex:
    """Lookups over the main graph of ``model`` (subgraphs are not indexed)."""

    model: onnx.ModelProto
    nodes: list[onnx.NodeProto] = field(init=False)
    producer: dict[str, int] = field(init=False)
    consumers: dict[str, list[int]] = field(init=False)
    initializers: dict[str, onnx.TensorProto] = field(init=False)
    constants: set[str] = field(init=False)
    graph_inputs: list[str] = field(init=False)
    graph_outputs: set[str] = field(init=False)
    value_types: dict[str, onnx.TypeProto] = field(init=False)

    def __post_init__(self) -> None:
        g = self.model.graph
        self.nodes = list(g.node)
        self.initializers = {t.name: t for t in g.initializer}
        self.producer = {}
        self.consumers = {}
        for i, n in enumerate(self.nodes):
            for o in n.output:
                if o:
                    self.producer[o] = i
            for name in n.input:
                if name:
                    self.consumers.setdefault(name, []).append(i)
        self.graph_inputs = [v.name for v in g.input if v.name not in self.initializers]
        self.graph_outputs = {v.name for v in g.output}
        self.value_types = {}
        for v in list(g.input) + list(g.value_info) + list(g.output):
            if v.type.HasField("tensor_type"):
                self.value_types[v.name] = v.type
        self.constants = set(self.initializers)
        for n in self.nodes:  # nodes of a valid graph are topologically sorted
            ins = [x for x in n.input if x]
            if n.op_type in _NONDETERMINISTIC or n.op_type in ("If", "Loop", "Scan"):
                continue
            if n.op_type == "Constant" or (ins and all(x in self.constants for x in ins)):
                self.constants.update(o for o in n.output if o)

    def is_const(self, name: str) -> bool:
        """True when ``name`` is an initializer or computed from constants only."""
        return name in self.constants

    def node_of(self, tensor: str) -> onnx.NodeProto | None:
        """The node producing ``tensor``, or None for graph inputs and initializers."""
        i = self.producer.get(tensor)
        return None if i is None else self.nodes[i]

    def users(self, tensor: str) -> list[onnx.NodeProto]:
        """Nodes of the main graph that read ``tensor``."""
        return [self.nodes[i] for i in self.consumers.get(tensor, [])]

    def label(self, i: int) -> str:
        """A stable, human-readable name for node ``i``."""
        n = self.nodes[i]
        return n.name or f"{n.op_type}_{i}"

    def elem_type(self, name: str) -> int:
        """ONNX element type of ``name`` (0 when unknown)."""
        if name in self.initializers:
            return self.initializers[name].data_type
        t = self.value_types.get(name)
        return t.tensor_type.elem_type if t is not None else 0

    def rank(self, name: str) -> int | None:
        """Declared rank of ``name``, or None when shape inference left it unknown."""
        if name in self.initializers:
            return len(self.initializers[name].dims)
        t = self.value_types.get(name)
        if t is None or not t.tensor_type.HasField("shape"):
            return None
        return len(t.tensor_type.shape.dim)

    def dims(self, name: str) -> list[int | str | None] | None:
        """Declared dims of ``name`` (int, symbolic name, or None), or None when unknown."""
        if name in self.initializers:
            return list(self.initializers[name].dims)
        t = self.value_types.get(name)
        if t is None or not t.tensor_type.HasField("shape"):
            return None
        out: list[int | str | None] = []
        for d in t.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                out.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                out.append(d.dim_param)
            else:
                out.append(None)
        return out

    def weight(self, name: str) -> tuple[str, onnx.TensorProto] | None:
        """Where the weight ``name`` is held — an initializer, or a ``Constant`` node's
        tensor, seen through Cast and Identity — as (the holder's name, its tensor); None
        when ``name`` is not such a weight.  Exporters from Paddle and OpenVINO, and
        simplified graphs, keep every weight in Constant nodes."""
        for _ in range(8):
            if name in self.initializers:
                return name, self.initializers[name]
            n = self.node_of(name)
            if n is None:
                return None
            if n.op_type == "Constant":
                t = next((a.t for a in n.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
                return (name, t) if t is not None else None
            if n.op_type not in ("Cast", "Identity") or not n.input:
                return None
            name = n.input[0]
        return None

    def const_value(self, name: str) -> np.ndarray | None:
        """Value of a small constant (initializer or Constant node), else None."""
        if name in self.initializers:
            t = self.initializers[name]
            if t.data_location == onnx.TensorProto.EXTERNAL:
                return None
            return numpy_helper.to_array(t)
        n = self.node_of(name)
        if n is not None and n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name in ("value_float", "value_int"):
                    return np.asarray(onnx.helper.get_attribute_value(a))
                if a.name in ("value_floats", "value_ints"):
                    return np.asarray(onnx.helper.get_attribute_value(a))
        return None


def attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """Value of attribute ``name`` of ``node``, or ``default`` (also for an attribute of no
    declared type, whose value onnx reads as None)."""
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return default if value is None else value
    return default


def int_attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    """Integer attribute ``name`` of ``node``, or ``default``; :class:`GraphError` when the
    file gives it a value of another type."""
    value = attribute(node, name, default)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    label = node.name or node.op_type
    raise GraphError(
        f"node {label!r} ({node.op_type}) has attribute {name!r} of type {type(value).__name__}, not an integer"
    )


def parameter_count(index: GraphIndex) -> int:
    """Learned parameters: elements of the floating-point initializers, as the framework counted them.

    Exporters deduplicate parameters whose initial values are equal (two fresh BatchNorms
    share γ = 1 and β = 0): one initializer is left, and Identity nodes name each copy.
    Every such alias an op uses counts on its own, and the initializer itself only where an
    op uses it directly (or nothing in the main graph uses it: a subgraph may).
    BatchNormalization's running mean and variance are statistics, not parameters, and are
    left out (as PyTorch counts them); integer initializers (shapes, indices) too — except
    the quantised weights a DequantizeLinear or a QOperator layer reads, which count as the
    parameters they stand for (their scales and zero points do not).

    Optimisers also merge equal-valued initializers without leaving an alias (onnxscript's
    deduplication, in PyTorch's dynamo export: BERT-base's 25 LayerNorm weights of ones
    become one tensor that 25 nodes read).  An initializer whose elements are all equal —
    a fresh fill of zeros or ones, what deduplication merges — counts once per node that
    reads it; any other initializer read by several nodes is one tied weight.  A 0-d float
    initializer is arithmetic (an attention scale, a mask's fill value), not a parameter.
    (An all-zero bias the optimiser removed outright leaves no trace: dynamo's BERT-base
    reads 768 below PyTorch's count, its pooler bias.)
    """
    source: dict[str, str] = {}  # Identity output → the initializer it names (through a quantiser's DQ/Cast)
    for n in index.nodes:
        if n.op_type == "Identity" and n.input and n.output:
            origin = source.get(n.input[0], n.input[0])
            passed = index.node_of(origin)
            while origin not in index.initializers and passed is not None and passed.op_type in WEIGHT_PASSTHROUGH:
                origin = passed.input[0] if passed.input else ""
                passed = index.node_of(origin)
            if origin in index.initializers:
                source[n.output[0]] = origin
    stats = {n.input[k] for n in index.nodes if n.op_type == "BatchNormalization" for k in (3, 4) if len(n.input) > k}
    direct = {i for n in index.nodes if n.op_type != "Identity" for i in n.input} | index.graph_outputs
    aliased = set(source.values())
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    quantised, quant_params = _quantisation(index)
    stats |= quant_params
    readers: dict[str, int] = {}
    for n in index.nodes:
        if n.op_type != "Identity":
            for x in set(n.input):
                if x in index.initializers:
                    readers[x] = readers.get(x, 0) + 1

    def size(name: str) -> int:
        origin = source.get(name, name)
        t = index.initializers[origin]
        if (t.data_type not in floats and origin not in quantised) or name in stats or origin in stats:
            return 0
        if not t.dims and t.data_type in floats:
            return 0  # a 0-d float: arithmetic, not a parameter
        return int(np.prod(t.dims, dtype=np.int64))

    def copies(name: str) -> int:
        k = readers.get(name, 1)
        return k if k > 1 and _uniform(index.initializers[name]) else 1

    total = sum(size(name) * copies(name) for name in index.initializers if name in direct or name not in aliased)
    return total + sum(size(name) for name in source if name in direct) + _constant_node_weights(index, stats)


def _uniform(t: onnx.TensorProto) -> bool:
    """True when every element of the (inline) tensor ``t`` has the same value."""
    if t.data_location == onnx.TensorProto.EXTERNAL or not t.dims:
        return False
    a = numpy_helper.to_array(t).reshape(-1)
    return a.size > 1 and bool(np.all(a == a[0]))


# Quantised ops outside the QOperator table (ops.QOPERATOR): the input positions of their
# (integer) weights, and of their scales and zero points (quantisation parameters).
_QUANTISED_WEIGHTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "DequantizeLinear": ((0,), (1, 2)),
    "QuantizeLinear": ((), (1, 2)),
    "ConvInteger": ((1,), (2, 3)),
    "MatMulInteger": ((1,), (2, 3)),
    "MatMulIntegerToFloat": ((1, 6), (2, 3, 4, 5)),
    "DynamicQuantizeMatMul": ((1, 4), (2, 3)),
}


def _quantised_inputs(n: onnx.NodeProto) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(weight positions, quantisation-parameter positions) of a quantised op's inputs."""
    q = QOPERATOR.get((n.domain if n.domain != "ai.onnx" else "", n.op_type))
    if q is None:
        return _QUANTISED_WEIGHTS.get(n.op_type, ((), ()))
    weights = (*q.operands, *((q.bias,) if q.bias is not None else ()))
    return weights, tuple(k for k in range(len(n.input)) if k not in weights)


def _quantisation(index: GraphIndex) -> tuple[set[str], set[str]]:
    """The constant tensors quantised layers read as weights (DequantizeLinear's data, a
    QLinearConv's or ConvInteger's weight and bias, a quantised embedding table…), and the
    scales and zero points of every quantised op (quantisation parameters, not weights)."""
    data: set[str] = set()
    params: set[str] = set()
    for n in index.nodes:
        weights, meta = _quantised_inputs(n)
        data.update(n.input[k] for k in weights if len(n.input) > k and n.input[k] and index.is_const(n.input[k]))
        params.update(n.input[k] for k in meta if len(n.input) > k and n.input[k])
        if weights and n.input:  # a quantised embedding read by a quantised op: Gather(table, ids)
            gather = index.node_of(n.input[0])
            if gather is not None and gather.op_type == "Gather" and index.is_const(gather.input[0]):
                data.add(gather.input[0])
    data -= params
    return data, params


def _constant_node_weights(index: GraphIndex, stats: set[str]) -> int:
    """Elements of the weights held in Constant nodes (Paddle and OpenVINO conversions,
    simplified graphs keep every weight there): float tensors of more than one element and
    the quantised weights DequantizeLinear reads, seen
    through Cast/Identity/DequantizeLinear chains; scalars (GELU's 0.5) are arithmetic, and
    BatchNorm statistics are left out as for initializers."""
    root: dict[str, str] = {}
    sizes: dict[str, int] = {}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    quantised, _ = _quantisation(index)
    for n in index.nodes:
        if n.op_type == "Constant" and n.output and n.output[0]:
            t = next((a.t for a in n.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
            if t is not None and (t.data_type in floats or n.output[0] in quantised) and n.output[0] not in stats:
                count = int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1
                if count > 1:
                    root[n.output[0]] = n.output[0]
                    sizes[n.output[0]] = count
        elif n.op_type in WEIGHT_PASSTHROUGH and n.input and n.input[0] in root and n.output:
            root[n.output[0]] = root[n.input[0]]
    excluded = {root[s] for s in stats if s in root}
    return sum(v for k, v in sizes.items() if k not in excluded)


def without_weights(model: onnx.ModelProto, keep_below: int = 4096) -> onnx.ModelProto:
    """A copy of ``model`` whose large initializers keep their name, type and dims but no data.

    Shape inference and MAC counting need the shapes only; copying and serialising the
    weights (again) would double the memory a large model takes.  Initializers of fewer than
    ``keep_below`` elements keep their data: shape tensors and axes read by Reshape, Slice…
    """

    def stub(t: onnx.TensorProto) -> onnx.TensorProto | None:
        if int(np.prod(t.dims, dtype=np.int64)) < keep_below:
            return None
        return onnx.TensorProto(name=t.name, data_type=t.data_type, dims=list(t.dims))

    return _with_initializers(model, stub)


def _with_initializers(
    model: onnx.ModelProto, replace: Callable[[onnx.TensorProto], onnx.TensorProto | None]
) -> onnx.ModelProto:
    """A copy of ``model`` in which every initializer ``replace`` gives a tensor for is that
    tensor instead; the replaced initializers' data is never copied."""
    graph = model.graph
    replacements = [replace(t) for t in graph.initializer]
    light = onnx.ModelProto()
    if all(r is None for r in replacements):
        light.CopyFrom(model)
        return light
    _copy_fields(model, light, skip="graph")  # field by field: the weights are never copied
    _copy_fields(graph, light.graph, skip="initializer")
    for t, r in zip(graph.initializer, replacements):
        light.graph.initializer.add().CopyFrom(t if r is None else r)
    return light


# Element types handed to onnxruntime as arrays; others stay in the graph as they are.
_ARRAY_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.INT64,
    onnx.TensorProto.INT32,
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8,
}
IN_MEMORY = "onnx-near:in-memory"


def split_weights(model: onnx.ModelProto, keep_below: int = 4096) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A copy of ``model`` whose large inline initializers are declared external data, and
    their values as arrays by name, for ``SessionOptions.add_external_initializers``.

    Initializers already stored in external files, small ones (fewer than ``keep_below``
    elements) and those of other element types stay as they are.
    """
    arrays: dict[str, np.ndarray] = {}

    def stub(t: onnx.TensorProto) -> onnx.TensorProto | None:
        if (
            t.data_location == onnx.TensorProto.EXTERNAL
            or t.data_type not in _ARRAY_TYPES
            or int(np.prod(t.dims, dtype=np.int64)) < keep_below
        ):
            return None
        value = _array_or_none(t)
        if value is None:  # as it is (a malformed one is then onnxruntime's to report)
            return None
        arrays[t.name] = value
        moved = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=list(t.dims))
        moved.data_location = onnx.TensorProto.EXTERNAL
        moved.external_data.add(key="location", value=IN_MEMORY)
        return moved

    return _with_initializers(model, stub), arrays


def _array_or_none(t: onnx.TensorProto) -> np.ndarray | None:
    """The initializer's value, or None when its data does not match its declared shape."""
    try:
        value = numpy_helper.to_array(t)
    except Exception:
        return None
    return value if value.shape == tuple(t.dims) else None


def _copy_fields(src: Any, dst: Any, skip: str) -> None:
    """Copy every field of the protobuf message ``src`` that is set, except ``skip``, to ``dst``."""
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
        if repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.type == fd.TYPE_MESSAGE:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)
