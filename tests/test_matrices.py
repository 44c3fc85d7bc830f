"""The matrices stage (onnx_near/matrices.py): row geometry, the sampling window, the blocks
drawn, and the collector that keeps exactly their rows as batches stream through."""

from __future__ import annotations

import numpy as np

from onnx_near.matrices import Collector, draw_blocks, geometry, to_rows, window_samples


def test_collector_keeps_exactly_the_block() -> None:
    """Streaming small batches through the collector gives the rows of one full pass."""
    rng = np.random.default_rng(0)
    full = rng.standard_normal((6, 3, 4, 5)).astype(np.float32)  # N, C, H, W
    g = geometry(full.shape, 1, 6)
    assert (g.cols, g.rows_per_sample, g.line) == (3, 20, 5)
    blocks = draw_blocks({"t": g}, 7, 6, np.random.default_rng(1))
    assert blocks["t"].start % 5 == 0
    c = Collector({"t": g}, blocks)
    for lo in range(0, 6, 2):
        if lo < c.samples_needed:
            c.add(lo, lo + 2, {"t": full[lo : lo + 2]})
    assert c.complete()
    b = blocks["t"]
    np.testing.assert_array_equal(c.matrices["t"], to_rows(full, 1)[b.start : b.start + b.count])


def test_window_is_as_small_as_the_taps_allow() -> None:
    """Square matrices need ceil(C / rows-per-sample) samples for the most demanding tap."""
    geoms = {"conv": geometry((1, 16, 8, 8), 1, 1), "dense": geometry((1, 10), -1, 1)}
    assert window_samples(geoms, "square", None, None) == 10
    assert window_samples(geoms, "square", 4, None) == 4
    assert window_samples(geoms, "all", 100, None) == 100


def test_collector_asks_only_for_the_taps_a_batch_holds_rows_of() -> None:
    """A batch that holds none of a tap's rows does not need that tap's output."""
    geoms = {"conv": geometry((1, 8, 4, 4), 1, 1), "dense": geometry((1, 8), -1, 1)}
    blocks = {"conv": draw_blocks({"conv": geoms["conv"]}, "square", 6, np.random.default_rng(0))["conv"]}
    blocks["dense"] = draw_blocks({"dense": geoms["dense"]}, "square", 8, np.random.default_rng(0))["dense"]
    c = Collector(geoms, blocks)
    b = blocks["conv"]
    conv_samples = range(b.start // 16, (b.start + b.count - 1) // 16 + 1)  # 16 rows per sample
    assert len(conv_samples) < c.samples_needed
    for s in range(c.samples_needed):
        want = {"dense"} | ({"conv"} if s in conv_samples else set())
        assert set(c.needed(s, s + 1)) == want
