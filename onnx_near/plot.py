"""The plots of ``width --plot`` and ``rank --plot`` (need the optional ``plot`` extra: matplotlib)."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError
from .width import WidthEstimate

if TYPE_CHECKING:
    from .rank import RankResult


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ConfigError("--plot needs matplotlib, which is not installed: pip install 'onnx-near[plot]'") from err
    return plt


def plot_rank(r: RankResult, path: str | os.PathLike[str]) -> None:
    """What a researcher looks at first, saved to ``path``: with accuracies, NEAR against
    accuracy beside the parameter count against accuracy (Kendall's τ and Spearman's ρ in
    each title); without, a histogram of the NEAR scores."""
    plt = _pyplot()
    scored = [m for m in r.models if m.error is None and not math.isnan(m.score)]
    if not scored:
        raise ConfigError("--plot: no model was scored, so there is nothing to draw")
    if not r.correlation:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.hist([m.score for m in scored], bins=min(50, max(5, len(scored) // 5)), color="C0")
        ax.set_xlabel("NEAR score (higher is better)")
        ax.set_ylabel("models")
        ax.set_title(f"NEAR scores of {len(scored)} models")
    else:
        known = [m for m in scored if m.accuracy is not None]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
        for ax, name, label in ((axes[0], "near", "NEAR score"), (axes[1], "params", "parameters")):
            x = [m.score if name == "near" else m.params for m in known]
            ax.scatter(x, [m.accuracy for m in known], s=14, alpha=0.7, color="C0" if name == "near" else "C1")
            c = r.correlation[name]
            ax.set_title(f"{label}: Kendall τ {c.kendall_tau:.3f}, Spearman ρ {c.spearman_rho:.3f}")
            ax.set_xlabel(label)
            if name == "params" and all(v is not None and v > 0 for v in x):
                ax.set_xscale("log")
        axes[0].set_ylabel("accuracy after training")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_width(e: WidthEstimate, path: str | os.PathLike[str]) -> None:
    """Relative scores, the fitted power law and the estimated width, saved to ``path``."""
    plt = _pyplot()
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
