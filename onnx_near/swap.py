"""SWAP: the number of distinct sample-wise activation patterns of a network's ReLU units.

Pure numerics: this module imports neither onnx nor onnxruntime.

Y. Peng, A. Song, H. M. Fayek, V. Ciesielski, X. Chang, "SWAP-NAS: Sample-Wise Activation
Patterns for Ultra-fast NAS", ICLR 2024 (code: github.com/pym1024/SWAP).  Feed a batch of N
samples; every post-ReLU unit u (one channel at one position of one layer's output) has a
*sample-wise pattern*, the binary vector of its signs over the N samples,

    p_u = (1[a_u(x_1) > 0], …, 1[a_u(x_N) > 0])

and SWAP is the number of distinct patterns among all the units of all the ReLU layers,
``|{p_u}|`` — at most min(units, 2^N).  (The authors' code: the ReLU outputs flattened per
sample and concatenated, ``torch.sign``, transposed to units × samples, ``torch.unique`` of
the rows.  For a ReLU output, sign ∈ {0, 1} is the same bit as ``> 0``.)  Higher is taken
to be better.

The regularised form of the paper multiplies the count by exp(−(params − μ)² / σ), a prior
on the model size whose μ and σ are set per search space; with no principled default for
them, onnx-near does not offer it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def unit_patterns(activations: Any) -> np.ndarray:
    """The distinct sample-wise patterns of one layer's units: ``activations`` is
    (samples × units), its units' values for each sample; returned as the unique rows of the
    (units × ⌈samples/8⌉) array of each unit's signs packed into bytes (bit k: sample k > 0)."""
    a = np.asarray(activations)
    if a.ndim != 2:
        raise ValueError(f"activations must be a (samples × units) matrix, not of shape {a.shape}")
    bits = np.packbits(np.ascontiguousarray((a > 0).T), axis=1)  # units × ⌈N/8⌉
    return _unique_rows(bits)


def swap(layers: Iterable[Any]) -> int:
    """SWAP of a network: the number of distinct patterns among the units of every layer,
    each item one layer's (samples × units) activations, every layer over the same samples."""
    return distinct_patterns(unit_patterns(a) for a in layers)


def distinct_patterns(patterns: Iterable[np.ndarray]) -> int:
    """The number of distinct patterns among layers' :func:`unit_patterns` (so that a
    pipeline can reduce each layer as its activations arrive)."""
    packed = list(patterns)
    if not packed:
        return 0
    if len({p.shape[1] for p in packed}) > 1:
        raise ValueError("every layer's patterns must be over the same samples")
    return int(_unique_rows(np.concatenate(packed, axis=0)).shape[0])


def _unique_rows(bits: np.ndarray) -> np.ndarray:
    if bits.shape[0] == 0:
        return bits
    row = np.dtype((np.void, bits.shape[1]))
    keys = np.unique(np.ascontiguousarray(bits).view(row).ravel())
    return keys.view(np.uint8).reshape(-1, bits.shape[1])


__all__ = ["distinct_patterns", "swap", "unit_patterns"]
