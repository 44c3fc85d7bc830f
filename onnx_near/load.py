"""Stage 1, load: read an ONNX model into memory, checked, without touching its weights.

A model is given in one of three forms (:data:`~onnx_near.model_source.ModelSource`): the path of
an ``.onnx`` file, an :class:`onnx.ModelProto`, or its serialised bytes — the last two bare,
or wrapped in an :class:`~onnx_near.model_source.InMemoryModel` that names the folder its external
data lies in.  :func:`load_model` takes all three, and applies the same checks to each: a
model held in memory is serialised and parsed again exactly as a file is, so its size,
nesting, strings, initializers, graph and external data locations (relative to its base
folder) are checked alike, and the caller's ``ModelProto`` is never modified.

The graph is parsed with ``load_external_data=False``: weights stored in external data
files stay on disk (onnxruntime reads them later from the model's folder), so a large
model is never held in memory twice and nothing is written anywhere.
"""

from __future__ import annotations

import functools
import heapq
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.defs
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from onnx import numpy_helper

from .errors import ModelLoadError
from .model_source import IN_MEMORY, InMemoryModel, ModelSource, file_path, in_memory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A parsed model and where it came from.

    ``proto`` holds the graph and the inline weights; external weights are not loaded.
    ``path`` is the model's file (resolved), None for a model given in memory, which
    ``label`` and ``folder`` then name and place.
    """

    proto: onnx.ModelProto
    path: Path | None = None
    label: str | None = None  # an in-memory model's name (None: <in-memory model>)
    folder: Path | None = None  # an in-memory model's base folder

    @property
    def name(self) -> str:
        """What messages call the model: its file's name, or the in-memory model's name."""
        return self.path.name if self.path is not None else (self.label or IN_MEMORY)

    @property
    def base_dir(self) -> Path | None:
        """Folder that external data locations are relative to; None for an in-memory model
        given without one (it keeps every weight inline)."""
        return self.path.parent if self.path is not None else self.folder


def load_model(model: ModelSource) -> LoadedModel:
    """Read and sanity-check an ONNX model: the file at a path, a ModelProto, or its bytes
    (bare, or as an :class:`InMemoryModel` with a base folder and a name).

    Raises :class:`ModelLoadError` with one sentence when the file is missing, the model is
    empty (or a ModelProto too large to serialise), not an ONNX model, truncated, or refers to
    external data that is missing or lies outside the model's folder (an in-memory model's
    base folder; one given without a base folder may not refer to external data at all).
    """
    path, held = file_path(model), in_memory(model)
    if held is not None:
        return _load_in_memory(held)
    assert path is not None
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model file {str(p)!r} does not exist")
    if not p.is_file():
        raise ModelLoadError(f"model path {str(p)!r} is not a file")
    if p.stat().st_size == 0:
        raise ModelLoadError(f"model file {str(p)!r} is empty, expected an ONNX model")
    try:
        proto = _parse(lambda: onnx.load_model(str(p), load_external_data=False), repr(str(p)), "file")
    except OSError as e:
        raise ModelLoadError(f"cannot read model file {str(p)!r}: {e.strerror or e}") from e
    _check_model(proto, repr(str(p)), p.name, p.resolve().parent)
    return LoadedModel(proto=proto, path=p.resolve())


def _load_in_memory(held: InMemoryModel) -> LoadedModel:
    """An in-memory model, serialised (a ModelProto) and parsed again with every check a file gets."""
    name = held.label
    folder = None
    if held.base_dir is not None:
        folder = Path(held.base_dir).resolve()
        if not folder.is_dir():
            raise ModelLoadError(f"the base folder {str(held.base_dir)!r} given for {name!r} is not a folder")
    data = held.as_bytes().model
    assert isinstance(data, bytes)
    if not data:
        raise ModelLoadError(f"{name!r} is empty (no bytes), expected an ONNX model")
    proto = _parse(lambda: onnx.load_model_from_string(data), repr(name), "data")
    _check_model(proto, repr(name), name, folder)
    return LoadedModel(proto=proto, label=held.name, folder=folder)


def _parse(read: Callable[[], onnx.ModelProto], quoted: str, what: str) -> onnx.ModelProto:
    """``read()``, its parse errors as one sentence about the model (``quoted``: its name in
    quotes; ``what``: "file" or "data", the thing that may be truncated)."""
    try:
        return read()
    except DecodeError as e:
        if "MaxDepth" in str(e) or "recursion" in str(e).lower():
            raise ModelLoadError(
                f"{quoted} nests its messages (subgraphs within subgraphs) deeper than the protobuf parser "
                "allows (100 levels); no exporter writes such a model"
            ) from e
        raise ModelLoadError(
            f"{quoted} is not a readable ONNX model (the protobuf could not be parsed: "
            f"the {what} is truncated or not ONNX)"
        ) from e
    except (RuntimeError, ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(
            f"{quoted} is not a readable ONNX model (the protobuf could not be parsed: "
            f"the {what} is truncated or not ONNX)"
        ) from e


def _check_model(proto: onnx.ModelProto, quoted: str, name: str, base: Path | None) -> None:
    """The checks of a parsed model, whatever it was read from (``quoted``: how the first
    sentence names it; ``name``: how the others do; ``base``: its external data's folder)."""
    if proto.ir_version <= 0 or not proto.HasField("graph") or len(proto.graph.node) == 0:
        raise ModelLoadError(f"{quoted} is not an ONNX model: it parsed, but holds no IR version or no graph nodes")
    _check_external_data(proto, base, name)
    _densify_sparse(proto, name)
    _check_graph(proto, name)


# A sparse initializer is stored densely for the run: refused beyond this many bytes dense.
MAX_DENSE_BYTES = 1 << 31


def _densify_sparse(proto: onnx.ModelProto, name: str) -> None:
    """The main graph's sparse initializers become ordinary (dense) initializers of the same
    name and values, so every stage — and onnxruntime — sees them as the weights they are."""
    g = proto.graph
    if not len(g.sparse_initializer):
        return
    dense: list[onnx.TensorProto] = []
    for sp in g.sparse_initializer:
        tensor = sp.values.name
        if sp.values.data_location == onnx.TensorProto.EXTERNAL or sp.indices.data_location == onnx.TensorProto.EXTERNAL:
            raise ModelLoadError(
                f"{name!r}: sparse initializer {tensor!r} keeps its values in external data, which onnx-near "
                "does not read; store it inline or as a dense initializer"
            )
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(sp.values.data_type)
            dims = [int(d) for d in sp.dims]
            if any(d < 0 for d in dims) or math.prod(dims) * np.dtype(dtype).itemsize > MAX_DENSE_BYTES:
                raise ModelLoadError(
                    f"{name!r}: sparse initializer {tensor!r} of shape {dims} would take more than "
                    f"{MAX_DENSE_BYTES >> 30} GiB dense"
                )
            values = numpy_helper.to_array(sp.values).reshape(-1)
            indices = numpy_helper.to_array(sp.indices).astype(np.int64)
            out = np.zeros(math.prod(dims), dtype=dtype)
            flat = indices.reshape(-1) if indices.ndim == 1 else np.ravel_multi_index(tuple(indices.T), dims)
            out[flat] = values
        except ModelLoadError:
            raise
        except (KeyError, ValueError, IndexError, TypeError) as e:
            raise ModelLoadError(
                f"{name!r} is broken: sparse initializer {tensor!r} does not hold valid values and indices "
                f"for its shape {list(sp.dims)}"
            ) from e
        dense.append(numpy_helper.from_array(out.reshape(dims), tensor))
    del g.sparse_initializer[:]
    g.initializer.extend(dense)


def _check_graph(proto: onnx.ModelProto, name: str) -> None:
    """Every node reads tensors that exist, the graph has no cycle, and its ops are known.

    Nodes that are merely out of order are left so: the rewrite's first pass, ``sort_nodes``
    (:mod:`onnx_near.passes`), puts them in topological order.
    """
    g = proto.graph
    _check_text(proto, name)
    available = {v.name for v in g.input} | {t.name for t in g.initializer} | {""}
    producers = {o: n for n in g.node for o in n.output if o}
    for n in g.node:
        for x in n.input:
            if x not in available and x not in producers:
                raise ModelLoadError(
                    f"{name!r} is broken: node {n.name or n.op_type!r} reads tensor {x!r}, which no node, input or initializer provides"
                )
    order = topological_nodes(g, available)
    if len(order) < len(g.node):
        stuck = [n.name or n.op_type for n in g.node if id(n) not in {id(m) for m in order}]
        raise ModelLoadError(
            f"{name!r} is broken: its graph has a cycle through node(s) {', '.join(map(repr, stuck[:3]))}"
        )
    imported = {o.domain if o.domain != "ai.onnx" else "" for o in proto.opset_import}
    for n in order:  # in the order the rewrite sorts them into: the first unknown op is named
        domain = n.domain if n.domain != "ai.onnx" else ""
        if domain not in imported and not any(f.name == n.op_type and f.domain == n.domain for f in proto.functions):
            raise ModelLoadError(
                f"{name!r}: node {n.name or n.op_type!r} uses op {n.op_type!r} of domain {domain or 'ai.onnx'!r}, "
                "which the model does not import"
            )
        if domain in ("", "ai.onnx.ml") and not onnx.defs.has(n.op_type, domain):
            if not any(f.name == n.op_type and f.domain == n.domain for f in proto.functions):
                raise ModelLoadError(
                    f"{name!r}: node {n.name or n.op_type!r} uses op {n.op_type!r}, which domain "
                    f"{domain or 'ai.onnx'!r} does not define"
                )


def _check_text(proto: onnx.ModelProto, name: str) -> None:
    """Every string in the file must be text, and every initializer of a known type and size.

    Protobuf hands back bytes for a string that is not valid UTF-8 — a name in a subgraph, a
    graph's or a function's name, a doc string — and each stage that compares or copies it
    would fail: the first such field is named, with its path in the model."""
    found = _non_utf8(proto)
    if found is not None:
        field, value = found
        raise ModelLoadError(f"{name!r} is broken: {field} is not valid UTF-8 ({value[:40]!r})")
    g = proto.graph
    for t in g.initializer:
        try:
            onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        except (KeyError, ValueError) as e:
            raise ModelLoadError(
                f"{name!r} is broken: initializer {t.name!r} has unknown element type {t.data_type}"
            ) from e
        if any(d < 0 for d in t.dims):
            raise ModelLoadError(
                f"{name!r} is broken: initializer {t.name!r} has a negative dimension {list(t.dims)}"
            )
        held, expected = _stored_values(t)
        if held is not None and held != expected:
            raise ModelLoadError(
                f"{name!r} is broken: initializer {t.name!r} holds {held} values for its shape "
                f"{list(t.dims)} ({expected} expected)"
            )


# Element types stored a value per whole number of bytes in raw_data (the 4-bit and string
# types are left to onnxruntime).
_PACKED = {onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED} | {
    getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2") if hasattr(onnx.TensorProto, n)
}


def _stored_values(t: onnx.TensorProto) -> tuple[int | None, int]:
    """(values the inline tensor ``t`` holds, values its dims call for); None when it keeps
    its data elsewhere or in a packed form not counted here."""
    expected = math.prod(int(d) for d in t.dims)
    if t.data_location == onnx.TensorProto.EXTERNAL or t.data_type in _PACKED:
        return None, expected
    if t.HasField("raw_data"):
        size = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        return (len(t.raw_data) // size if len(t.raw_data) % size == 0 else -1), expected
    complex_pair = 2 if t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1
    held = max(len(t.float_data), len(t.int32_data), len(t.int64_data), len(t.double_data), len(t.uint64_data))
    return held // complex_pair, expected


def _non_utf8(message: Message) -> tuple[str, bytes] | None:
    """The first string field of ``message`` (searched depth first, linear in its size) that
    holds bytes that are not UTF-8: its path (``graph.node[3].attribute[0].g.name``) and value."""
    for fd, value in message.ListFields():
        if fd.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE):
            continue
        repeated = _repeated(fd)
        for k, v in enumerate(value if repeated else (value,)):
            if fd.type == FieldDescriptor.TYPE_STRING:
                if isinstance(v, bytes):
                    return (f"{fd.name}[{k}]" if repeated else fd.name), v
            elif (inner := _non_utf8(v)) is not None:
                return (f"{fd.name}[{k}]" if repeated else fd.name) + "." + inner[0], inner[1]
    return None


@functools.cache
def _repeated(fd: FieldDescriptor) -> bool:
    """Whether a field is repeated (``is_repeated`` since protobuf 5.29, ``label`` before)."""
    flag = getattr(fd, "is_repeated", None)
    return bool(flag) if flag is not None else fd.label == FieldDescriptor.LABEL_REPEATED


def topological_nodes(g: onnx.GraphProto, available: set[str]) -> list[onnx.NodeProto]:
    """The nodes in an order where each comes after the producers of its inputs (Kahn's
    algorithm, linear in nodes and edges; ties keep the file's order).  Nodes on a cycle, or
    reading a tensor nothing makes, are left out: the caller reports them."""
    nodes = list(g.node)
    waiting = [0] * len(nodes)  # inputs of each node not yet available
    readers: dict[str, list[int]] = {}
    for k, n in enumerate(nodes):
        for x in set(n.input):
            if x not in available:
                waiting[k] += 1
                readers.setdefault(x, []).append(k)
    ready = [k for k in range(len(nodes)) if waiting[k] == 0]
    heapq.heapify(ready)
    made = set(available)
    order: list[onnx.NodeProto] = []
    while ready:
        k = heapq.heappop(ready)
        order.append(nodes[k])
        for o in nodes[k].output:
            if not o or o in made:
                continue
            made.add(o)
            for r in readers.get(o, ()):
                waiting[r] -= 1
                if waiting[r] == 0:
                    heapq.heappush(ready, r)
    return order


def _stored_tensors(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Every tensor the file stores: initializers, Constant values and attributes (subgraphs
    included), and the values and indices of sparse initializers."""
    tensors = list(onnx.external_data_helper._get_all_tensors(proto))
    graphs = [proto.graph]
    while graphs:
        g = graphs.pop()
        for sp in g.sparse_initializer:
            tensors += [sp.values, sp.indices]
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.SPARSE_TENSOR:
                    tensors += [a.sparse_tensor.values, a.sparse_tensor.indices]
                graphs += [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
    return tensors


def _check_external_data(proto: onnx.ModelProto, base: Path | None, name: str) -> None:
    """Every external data location must be a regular file inside the model's folder
    (``base``: resolved; None for an in-memory model given without one, which then may not
    refer to external data)."""
    for tensor in _stored_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        if base is None:
            raise ModelLoadError(
                f"{name!r} keeps initializer {tensor.name!r} in external data ({location[:60]!r}) but was given "
                "without a base folder to read it from: pass InMemoryModel(model, base_dir=FOLDER)"
            )
        if "\x00" in location:
            raise ModelLoadError(
                f"initializer {tensor.name!r} keeps its data at a location with a NUL byte ({location[:60]!r}), "
                "which no file can have"
            )
        try:
            target = (base / location).resolve()
            target.is_file()
        except (OSError, ValueError) as e:
            raise ModelLoadError(
                f"initializer {tensor.name!r} keeps its data at {location[:60]!r}, which is not a usable path "
                f"({e.strerror if isinstance(e, OSError) and e.strerror else e})"
            ) from e
        if not location or os.path.isabs(location) or not target.is_relative_to(base):
            raise ModelLoadError(
                f"initializer {tensor.name!r} keeps its data at {location!r}, outside the model's "
                f"folder {str(base)!r}; external data must lie beside the model"
            )
        if not target.exists():
            raise ModelLoadError(
                f"initializer {tensor.name!r} keeps its data in {location!r}, which is missing from {str(base)!r}"
            )
        if not target.is_file():
            raise ModelLoadError(
                f"initializer {tensor.name!r} keeps its data in {location!r}, which is not a regular file "
                "(a directory, FIFO or device); external data must be a file beside the model"
            )
