"""Re-initialise a model's weights with a named scheme (SPEC §4).

The authors' code re-draws the weights between repetitions; for an ONNX model this is an
explicit option.  Only the weights of layers that apply learned weights are re-drawn —
Conv, ConvTranspose, Gemm and MatMul with a constant operand — with fan-in and fan-out
read from each weight's shape and role; their biases are re-drawn too (zero, except for
``pytorch-default``).  A weight is found wherever the graph holds it — an initializer or a
``Constant`` node, through Cast/Identity — and written back there, in its own dtype.  Normalisation parameters, running statistics and embedding tables
are left as they are.

Schemes (``fan_in``/``fan_out`` as in ``torch.nn.init``):

* ``pytorch-default``: what ``nn.Linear``/``nn.Conv*`` do: ``kaiming_uniform_(a=√5)``, i.e.
  U(±1/√fan_in), bias U(±1/√fan_in).
* ``kaiming-uniform``: He et al. 2015, U(±√(6/fan_in)); ``kaiming-normal``: N(0, 2/fan_in).
* ``xavier-uniform``: Glorot & Bengio 2010, U(±√(6/(fan_in+fan_out)));
  ``xavier-normal``: N(0, 2/(fan_in+fan_out)).
* ``lecun-normal``: N(0, 1/fan_in).
* ``orthogonal``: Saxe et al. 2014, the weight viewed as a (fan_out × fan_in) matrix with
  orthonormal rows or columns (QR of a Gaussian matrix).
* ``normal``: N(0, 1); ``uniform``: U(−1, 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import ConfigError, GraphError
from .graph import GraphIndex, int_attribute
from .ops import CONVOLUTIONS

SCHEMES = (
    "pytorch-default",
    "kaiming-uniform",
    "kaiming-normal",
    "xavier-uniform",
    "xavier-normal",
    "lecun-normal",
    "orthogonal",
    "normal",
    "uniform",
)


@dataclass(frozen=True)
class WeightRole:
    """One weight initializer of a layer: its fans, how its shape maps to (out, in), and its bias."""

    weight: str
    fan_in: int
    fan_out: int
    transposed: bool  # True when the weight is stored as (in, out) — MatMul, Gemm with transB=0
    bias: str | None


def weight_roles(index: GraphIndex) -> list[WeightRole]:
    """The re-initialisable weights of the graph, with fan-in/fan-out from their shapes."""
    roles: list[WeightRole] = []
    seen: set[str] = set()
    for n in index.nodes:
        role = _role(index, n)
        if role is not None and role.weight not in seen:
            seen.add(role.weight)
            roles.append(role)
    return roles


_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)


def _float_init(index: GraphIndex, name: str) -> bool:
    """True when ``name`` is a float weight, wherever the graph holds it (initializer or Constant)."""
    held = index.weight(name)
    return held is not None and held[1].data_type in _FLOATS


def _dims(index: GraphIndex, name: str) -> list[int]:
    held = index.weight(name)
    assert held is not None
    return [int(d) for d in held[1].dims]


def _role(index: GraphIndex, n: onnx.NodeProto) -> WeightRole | None:
    ins = list(n.input)
    if n.op_type in CONVOLUTIONS and len(ins) > 1 and _float_init(index, ins[1]):
        dims = _dims(index, ins[1])
        if len(dims) < 3:
            return None
        receptive = math.prod(dims[2:])
        bias = ins[2] if len(ins) > 2 and ins[2] and _float_init(index, ins[2]) else None
        if n.op_type == "Conv":  # (out, in/group, k…)
            return WeightRole(ins[1], dims[1] * receptive, dims[0] * receptive, False, bias)
        # ConvTranspose (in, out/group, k…): fans as torch computes them from dims 1 and 0
        return WeightRole(ins[1], dims[1] * receptive, dims[0] * receptive, False, bias)
    if n.op_type == "Gemm" and len(ins) > 1 and _float_init(index, ins[1]):
        dims = _dims(index, ins[1])
        if len(dims) != 2:
            return None
        trans_b = int_attribute(n, "transB", 0)
        fan_in, fan_out = (dims[1], dims[0]) if trans_b else (dims[0], dims[1])
        bias = ins[2] if len(ins) > 2 and ins[2] and _float_init(index, ins[2]) else None
        return WeightRole(ins[1], fan_in, fan_out, not trans_b, bias)
    if n.op_type == "MatMul" and len(ins) == 2:
        w = ins[1] if _float_init(index, ins[1]) else None
        if w is None or index.is_const(ins[0]):
            return None
        dims = _dims(index, w)
        if len(dims) != 2:
            return None
        bias = _bias_after(index, n.output[0])
        return WeightRole(w, dims[0], dims[1], True, bias)
    return None


def _bias_after(index: GraphIndex, out: str) -> str | None:
    users = index.users(out)
    if len(users) == 1 and users[0].op_type == "Add":
        other: list[str] = [x for x in users[0].input if x != out]
        if len(other) == 1 and _float_init(index, other[0]):
            return other[0]
    return None


def _draw(scheme: str, shape: tuple[int, ...], fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    """Weights of ``shape`` viewed as (fan_out-rows × fan_in-columns) where that matters."""
    uniform: Callable[[float], np.ndarray] = lambda b: rng.uniform(-b, b, size=shape)  # noqa: E731
    normal: Callable[[float], np.ndarray] = lambda s: rng.normal(0.0, s, size=shape)  # noqa: E731
    if scheme == "pytorch-default":
        return uniform(1.0 / math.sqrt(fan_in))
    if scheme == "kaiming-uniform":
        return uniform(math.sqrt(6.0 / fan_in))
    if scheme == "kaiming-normal":
        return normal(math.sqrt(2.0 / fan_in))
    if scheme == "xavier-uniform":
        return uniform(math.sqrt(6.0 / (fan_in + fan_out)))
    if scheme == "xavier-normal":
        return normal(math.sqrt(2.0 / (fan_in + fan_out)))
    if scheme == "lecun-normal":
        return normal(math.sqrt(1.0 / fan_in))
    if scheme == "normal":
        return normal(1.0)
    if scheme == "uniform":
        return uniform(1.0)
    check_scheme(scheme)
    raise AssertionError(f"scheme {scheme!r} has no formula")  # every listed scheme has one


def check_scheme(scheme: str) -> None:
    """Raise :class:`ConfigError` unless ``scheme`` is one of :data:`SCHEMES`."""
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown initialisation scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")


def _orthogonal(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """A rows × cols matrix with orthonormal rows (rows ≤ cols) or columns (rows > cols)."""
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))  # make the decomposition unique
    return q if rows > cols else q.T


def reinitialize(model: onnx.ModelProto, scheme: str, rng: np.random.Generator) -> onnx.ModelProto:
    """A copy of ``model`` whose layer weights (and biases) are re-drawn with ``scheme``.

    Raises :class:`GraphError` when the model has no weight onnx-near knows how to re-draw.
    """
    check_scheme(scheme)
    index = GraphIndex(model)
    roles = weight_roles(index)
    if not roles:
        raise GraphError("the model has no Conv, Gemm or MatMul weight to re-initialise")
    new: dict[str, np.ndarray] = {}  # keyed by the holder: initializer or Constant output
    for r in roles:
        holder, t = _held(index, r.weight)
        shape = tuple(int(d) for d in t.dims)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        if scheme == "orthogonal":  # as torch.nn.init.orthogonal_ on the (out, in) view
            if r.transposed:
                w = _orthogonal(shape[1], shape[0], rng).T
            else:
                w = _orthogonal(shape[0], math.prod(shape) // shape[0], rng).reshape(shape)
        else:
            w = _draw(scheme, shape, r.fan_in, r.fan_out, rng)
        new[holder] = w.astype(dtype)
        if r.bias is not None:
            bias_holder, b = _held(index, r.bias)
            bshape = tuple(int(d) for d in b.dims)
            bias = (
                rng.uniform(-1, 1, size=bshape) / math.sqrt(r.fan_in)
                if scheme == "pytorch-default"
                else np.zeros(bshape)
            )
            new[bias_holder] = bias.astype(onnx.helper.tensor_dtype_to_np_dtype(b.data_type))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for k, t in enumerate(out.graph.initializer):
        if t.name in new:
            out.graph.initializer[k].CopyFrom(numpy_helper.from_array(new[t.name], t.name))
    for node in out.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] in new:
            for a in node.attribute:
                if a.name == "value":
                    a.t.CopyFrom(numpy_helper.from_array(new[node.output[0]], a.t.name))
    return out


def _held(index: GraphIndex, name: str) -> tuple[str, onnx.TensorProto]:
    held = index.weight(name)
    assert held is not None  # weight_roles only names weights the graph holds
    return held
