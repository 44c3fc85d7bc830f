"""SWAP (onnx_near/swap.py): the number of distinct activation patterns, hand-computed and
against a plain count of patterns."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_near.swap import distinct_patterns, swap, unit_patterns


def test_swap_hand_computed() -> None:
    """Two samples, four units of patterns (1,0), (0,0), (1,1), (0,1): 4; the same units again
    in a second layer add none; a layer of new patterns adds its own; at most 2^N."""
    a = np.array([[1.0, 0.0, 2.0, -1.0], [0.0, -3.0, 3.0, 1.0]])
    assert swap([a]) == 4
    assert swap([a, a]) == 4
    assert swap([a[:, :2]]) == 2
    assert swap([np.random.default_rng(0).standard_normal((3, 1000))]) == 8


def test_swap_against_a_plain_count_of_patterns() -> None:
    """Patterns over more samples than a byte holds (N = 20, bits packed in 3 bytes) counted as
    a set of tuples; per-layer reductions give the same count."""
    rng = np.random.default_rng(3)
    layers = [np.maximum(rng.standard_normal((20, u)), 0) * (rng.random((20, u)) < 0.9) for u in (50, 300, 7)]
    layers.append(layers[0][:, :10])  # units that repeat an earlier layer's patterns
    want = {tuple(col > 0) for x in layers for col in x.T}
    assert swap(layers) == len(want)
    assert distinct_patterns(unit_patterns(x) for x in layers) == len(want)
    with pytest.raises(ValueError, match="same samples"):
        distinct_patterns([unit_patterns(layers[0]), unit_patterns(layers[0][:9])])
