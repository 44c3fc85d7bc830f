"""The probe passes of a score: forward passes whose every row window is empty, so that only
the taps' shapes come back — what the plan is made from (:func:`onnx_near.score.set_up`).

:func:`probe_feeds` builds a probe's inputs, :func:`rows_not_per_sample` finds the taps
whose rows do not follow the samples, and :func:`tap_outputs` names every output the
runner may be asked for.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .inputs import Source
from .rewrite import Cut
from .run import Runner


def probe_feeds(source: Source, cuts: Mapping[str, Cut], batch: int) -> dict[str, np.ndarray]:
    """A probe's inputs: ``batch`` samples, and every cut's row window empty (shapes only)."""
    feeds = source.probe(batch)
    for c in cuts.values():
        for b in c.bounds or ():
            feeds[b] = np.zeros(1, dtype=np.int64)
    return feeds


def rows_not_per_sample(
    runner: Runner, source: Source, cuts: Mapping[str, Cut], probe: Mapping[str, np.ndarray]
) -> frozenset[str]:
    """The taps whose first axis does not grow with the batch — a recurrent state's output,
    [1, 1, 128] whatever the batch — found from a second probe of two samples (shapes only).
    Their rows cannot be told apart by sample: the plan runs one sample per forward pass."""
    if source.n_samples is not None and source.n_samples < 2:
        return frozenset()
    second = runner.run(probe_feeds(source, cuts, 2), [c.shape or c.output for c in cuts.values()])

    def first_axis(out: Mapping[str, np.ndarray], c: Cut) -> int | None:
        dims = tuple(int(d) for d in out[c.shape]) if c.shape is not None else out[c.output].shape
        return int(dims[0]) if len(dims) else None

    return frozenset(
        t for t, c in cuts.items() if first_axis(probe, c) is not None and first_axis(probe, c) == first_axis(second, c)
    )


def tap_outputs(cuts: Mapping[str, Cut]) -> list[str]:
    """Every output the runner may be asked for: each tap's rows, and a cut tap's shape."""
    return [n for c in cuts.values() for n in (c.shape, c.output) if n is not None]
