"""Stage 3, collect: run the window's samples through the model, batch by batch, once.

Each batch of a repetition's window goes through onnxruntime exactly once, returning every
tap that has rows in it: cut taps hand back just their block's rows (the bounds are fed as
inputs, see :func:`onnx_near.rewrite.cut_windows`), the others their whole tensor, from
which the :class:`~onnx_near.matrices.Collector` keeps the block.  When the ranks run on
the GPU the outputs are taken through I/O binding and stay in device memory.  The time
limit is checked before every batch and enforced inside onnxruntime (its terminate flag).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .inputs import Source
from .matrices import Collector
from .plan import Draw, Plan
from .run import Runner


def collect(
    plan: Plan,
    runner: Runner,
    source: Source,
    draw: Draw,
    rng: np.random.Generator,
    xp: Any = np,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Each tap's matrix (an ``xp`` array) for one repetition: the rows of its block.

    ``rng`` draws the synthetic inputs (every sample of the window is drawn, in order, so
    the data do not depend on the batch size); ``progress(done, total)`` is told the samples run.
    """
    collector = Collector(plan.geoms, draw.blocks, xp, plan.cut_taps)
    need = collector.samples_needed
    window = source.window(draw.start, need, rng)
    bound = bind_outputs(xp)
    for lo in range(0, need, plan.batch):
        hi = min(lo + plan.batch, need)
        feeds = window.batch(lo, hi, pad_to=plan.static)  # drawn even when no tap needs it
        ran = plan.static or hi - lo
        taps = collector.needed(lo, hi, ran)
        if taps:
            feeds.update(collector.feeds(lo, hi, ran))
            names = [plan.output_of(t) for t in taps]
            got = runner.run_bound(feeds, names, xp) if bound else runner.run(feeds, names)
            collector.add(lo, hi, {t: got[plan.output_of(t)] for t in taps}, ran)
        if progress is not None:
            progress(hi, need)
    return collector.matrices


def bind_outputs(xp: Any) -> bool:
    """Whether outputs are taken through I/O binding: when the ranks run on the GPU, so the
    rows never leave it (on the CPU a plain run measured as fast)."""
    return xp is not np
