"""Stage 3, collect: run the window's samples through the model, batch by batch, once.

Each batch of a repetition's window goes through onnxruntime exactly once, returning every
tap that has rows in it: cut taps hand back just their block's rows (the bounds are fed as
inputs, see :func:`onnx_near.rewrite.cut_windows`), the others their whole tensor, from
which the :class:`~onnx_near.matrices.Collector` keeps the block.  Outputs go through
I/O binding: onnxruntime writes each cut tap's rows straight into its matrix (host memory,
or device memory when the ranks run on the GPU), so no batch of outputs is ever buffered.  The time
limit is checked before every batch and enforced inside onnxruntime (its terminate flag).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .inputs.source import Source
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
    collector = Collector(plan.geoms, draw.blocks, xp, plan.cut_taps, plan.dtypes)
    need = collector.samples_needed
    if plan.full_batches:  # BatchNorm on batch statistics: whole batches only (the window holds them)
        need = -(-need // plan.batch) * plan.batch
    window = source.window(draw.start, need, rng)
    for lo in range(0, need, plan.batch):
        hi = min(lo + plan.batch, need)
        feeds = window.batch(lo, hi, pad_to=plan.static)  # drawn even when no tap needs it
        ran = plan.static or hi - lo
        whole = [t for t in collector.needed(lo, hi, ran) if t not in collector.cut_taps]
        into = collector.targets(lo, hi, ran)  # cut taps: written into their matrices' rows
        if into or whole:
            feeds.update(collector.feeds(lo, hi, ran))
            targets = {plan.output_of(t): rows for t, rows in into.items()}
            names = [plan.output_of(t) for t in whole]
            if targets or xp is not np:  # bound: cut rows into the matrices, the rest where it ran
                got = runner.run_into(feeds, targets, names, xp)
            else:  # only whole taps, on the CPU: a plain run (binding costs more for small models)
                got = runner.run(feeds, names)
            collector.add(lo, hi, {t: got[plan.output_of(t)] for t in whole}, ran)
        if progress is not None:
            progress(hi, need)
    return collector.matrices
