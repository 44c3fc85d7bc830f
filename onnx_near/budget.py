"""Memory is a parameter: what a computation will hold, checked before it is attempted.

``ScoreConfig.max_memory`` bounds the model's weights, one batch of inputs and of tap
outputs, and the matrices kept.  A model or a request that would need more is refused with
one sentence saying what it needs and what to change — before anything is allocated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from .config import Rows
from .errors import ConfigError, InputDataError, ModelLoadError
from .inputs import InputSpec
from .matrices import Geometry, block_rows


def gib(n: float) -> str:
    """``n`` bytes, readable."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every initializer of the main graph, inline or external, from the declared shapes."""
    total = 0
    for t in model.graph.initializer:
        size = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize if t.data_type else 1
        total += int(np.prod(t.dims, dtype=np.float64)) * size
    return total


def check_weights(model: onnx.ModelProto, name: str, limit: int) -> None:
    """Refuse a model whose declared weights alone exceed the budget."""
    need = weight_bytes(model)
    if need > limit:
        raise ModelLoadError(
            f"{name!r} declares {gib(need)} of weights, more than the memory limit of {gib(limit)} (--max-memory)"
        )


def check_inputs(specs: Sequence[InputSpec], limit: int) -> None:
    """Refuse inputs whose single sample already exceeds the budget (absurd declared dims)."""
    for s in specs:
        need = float(np.prod(s.sample_shape, dtype=np.float64)) * s.dtype.itemsize * (s.static_batch or 1)
        if need > limit:
            dims = "x".join(str(d) for d in s.sample_shape)
            raise InputDataError(
                f"input {s.name!r} of shape {dims} needs {gib(need)} per batch, more than the memory limit of {gib(limit)} (--max-memory)"
            )


def check_matrices(
    geoms: Mapping[str, Geometry], rows: Rows, samples: int, itemsize: Mapping[str, int], limit: int
) -> None:
    """Refuse a request whose matrices (the rows kept for every tap) exceed the budget."""
    need = 0.0
    for name, g in geoms.items():
        count = block_rows(g, rows, samples)
        need += float(count) * g.cols * itemsize[name]
    if need > limit:
        raise ConfigError(
            f"the matrices asked for (--rows {rows}) would take {gib(need)}, more than the memory limit of {gib(limit)} "
            "(--max-memory); ask for fewer rows"
        )


def batch_limit(per_sample_bytes: float, limit: int) -> int:
    """The most samples one batch of tap outputs may hold within a quarter of the budget."""
    allowed = int(limit // 4 // max(per_sample_bytes, 1.0))
    if allowed < 1:
        raise ConfigError(
            f"one sample's tap outputs take {gib(per_sample_bytes)}, more than a quarter of the memory limit of {gib(limit)} (--max-memory)"
        )
    return allowed
