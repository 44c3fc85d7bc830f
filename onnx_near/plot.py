"""The width-estimation plot (needs the optional ``plot`` extra: matplotlib)."""

from __future__ import annotations

import math
import os

import numpy as np

from .errors import ConfigError
from .width import WidthEstimate


def plot_width(e: WidthEstimate, path: str | os.PathLike[str]) -> None:
    """Relative scores, the fitted power law and the estimated width, saved to ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ConfigError("--plot needs matplotlib: pip install 'onnx-near[plot]'") from err
    s = np.geomspace(1, max(e.widths) * 1.5, 200)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([1, *e.widths], [1, *e.relative_scores], "o", label="relative NEAR score (with (1, 1))")
    f = e.fit
    ax.plot(s, f(s), "-", label=f"fit {f.alpha:.3f} + {f.beta:.3f}·s^{f.gamma:.3f}")
    if not math.isinf(e.estimate):
        ax.axvline(
            e.estimate, color="C3", ls="--", label=f"estimate {e.estimate:.0f} ({e.slope} slope {e.threshold:g})"
        )
    ax.set_xscale("log")
    ax.set_xlabel("layer width s")
    ax.set_ylabel("layer NEAR / width")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
