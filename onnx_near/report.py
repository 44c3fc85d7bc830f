"""Stage 6, report: the result objects and their table, JSON and CSV forms.

Every report has one row per tap with fixed leading columns (index, name, op, role,
tensor, shape, erank) and says which way the score points: higher is better.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

SCHEMA_VERSION = 1
DIRECTION = "higher is better: a higher NEAR score predicts higher accuracy after training"


@dataclass(frozen=True)
class LayerScore:
    """The effective rank of one tap (mean over repetitions)."""

    index: int
    name: str
    op: str
    role: str
    tensor: str
    shape: tuple[int, int]  # matrix rows × columns
    erank: float  # NaN when invalid
    erank_std: float
    axis: int
    status: str = "ok"  # "ok" or "invalid"
    reason: str | None = None
    row_starts: tuple[int, ...] = ()  # per repetition: the block's first row in the window's rows
    saturation: float | None = None  # bounded activations: share of values within 1 % of a bound
    erank_error: float | None = None  # approximate taps only: the bound on |erank − exact|
    feed: str | None = None  # the tensor its layer or activation reads, when measured (ScoreConfig.feeds)
    feed_erank: float | None = None  # that tensor's effective rank over the same samples
    head: bool = False  # an output head (a model output follows it with no other tap between)
    rms: float | None = None  # root mean square of its matrix's values (ScoreConfig.feeds)
    feed_rms: float | None = None  # the same of its feed's matrix


@dataclass(frozen=True)
class Skipped:
    """A tap, or a part of the graph, that could not be scored, and why."""

    name: str
    op: str
    reason: str
    tensor: str | None = None


@dataclass(frozen=True)
class ScoreResult:
    """A NEAR score: the sum of the taps' effective ranks, mean and std over repetitions.

    ``score`` is NaN when a tap is invalid (its activations hold NaN or Inf): such a tap
    has no effective rank and is never counted as 0.
    """

    model: str
    score: float
    score_std: float
    scores: tuple[float, ...]  # one total per repetition
    repetitions: int
    provider: str
    seed: int
    rows: str
    tap_mode: str  # which tensors were tapped: "all" or "activations" (ScoreConfig.taps)
    params: int
    macs: int | None  # multiply-accumulates per sample (None when shapes are unknown)
    layers: tuple[LayerScore, ...]
    skipped: tuple[Skipped, ...]
    warnings: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    window_starts: tuple[int, ...] = ()  # per repetition: the window's first sample in the data
    show_timings: bool = False  # put the timings in the JSON document (which then differs run to run)
    batchnorm: str = "running"  # the statistics BatchNorms normalised with ("running" or "batch")
    bn_batch: int | None = None  # with batch statistics: the samples of every forward pass
    batchnorms: int = 0  # BatchNormalization nodes of the model (in inference form)
    proxies: dict[str, float] = field(default_factory=dict)  # other proxies (MeCo, SWAP), mean over repetitions
    proxy_batch: int | None = None  # the batch the proxies were measured on
    inputs: str = "synthetic"  # what was fed: "data", or how the inputs were synthesised

    @property
    def valid(self) -> bool:
        """True when every tap has an effective rank."""
        return all(l.status == "ok" for l in self.layers)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (``schema_version`` 1); NaN becomes null."""
        from .version import __version__

        d: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "tool": f"onnx-near {__version__}",
            "model": self.model,
            "score": num(self.score),
            "score_std": num(self.score_std),
            "scores": [num(s) for s in self.scores],
            "direction": DIRECTION,
            "repetitions": self.repetitions,
            "provider": self.provider,
            "seed": self.seed,
            "rows": self.rows,
            "taps": self.tap_mode,
            "params": self.params,
            "macs": self.macs,
            "layers": [
                {**asdict(l), "shape": list(l.shape), "erank": num(l.erank), "erank_std": num(l.erank_std)}
                for l in self.layers
            ],
            "skipped": [asdict(s) for s in self.skipped],
            "window_starts": list(self.window_starts),
            "batchnorm": self.batchnorm,
            "bn_batch": self.bn_batch,
            "batchnorms": self.batchnorms,
            "proxies": {k: num(v) for k, v in self.proxies.items()},
            "proxy_batch": self.proxy_batch,
            "inputs": self.inputs,
            "warnings": list(self.warnings),
            "timings_s": {k: round(v, 6) for k, v in self.timings.items()} if self.show_timings else None,
        }
        return d


@dataclass(frozen=True)
class TapInfo:
    """One row of the dry run: what would be tapped and how its matrix would be formed."""

    index: int
    name: str
    op: str
    role: str
    tensor: str
    shape: tuple[int | str | None, ...] | None  # declared tensor shape, when known
    axis: int
    axis_reason: str


@dataclass(frozen=True)
class LayersReport:
    """The dry run (``onnx-near layers``): the taps of a model without running it."""

    model: str
    tap_mode: str  # which tensors are tapped: "all" or "activations" (ScoreConfig.taps)
    params: int
    inputs: tuple[tuple[str, str, tuple[int | str | None, ...] | None], ...]
    layers: tuple[TapInfo, ...]
    skipped: tuple[Skipped, ...]

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of the dry run."""
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "taps": self.tap_mode,
            "params": self.params,
            "inputs": [{"name": n, "dtype": t, "shape": list(s) if s is not None else None} for n, t, s in self.inputs],
            "layers": [{**asdict(t), "shape": list(t.shape) if t.shape is not None else None} for t in self.layers],
            "skipped": [asdict(s) for s in self.skipped],
        }


def num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


class _Reportable(Protocol):
    def to_dict(self) -> Mapping[str, Any]: ...


def to_json(report: _Reportable) -> str:
    """One JSON document (NaN and infinities become null)."""
    return json.dumps(_finite(report.to_dict()), indent=2)


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Mapping):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def score_table(r: ScoreResult) -> str:
    """A human-readable table of a score."""
    head = (
        f"model {r.model}\nprovider {r.provider} · seed {r.seed} · {r.repetitions} repetition"
        f"{'s' if r.repetitions != 1 else ''} · rows {r.rows} · taps {r.tap_mode} · {r.params:,} parameters"
        + _batchnorm_words(r)
    )
    rows = [
        (
            str(l.index),
            l.name,
            l.op,
            l.role,
            l.tensor,
            f"{l.shape[0]}×{l.shape[1]}",
            fmt(l.erank) + (f" ± {l.erank_std:.3f}" if r.repetitions > 1 and l.status == "ok" else "")
            if l.status == "ok"
            else f"invalid: {l.reason}",
        )
        for l in r.layers
    ]
    lines = [head, "", grid(("#", "layer", "op", "role", "tensor", "matrix", "erank"), rows), ""]
    if r.valid:
        lines.append(
            f"NEAR score {fmt(r.score)} ± {r.score_std:.3f} (sum of {len(r.layers)} effective ranks; higher is better)"
        )
    else:
        bad = sum(l.status != "ok" for l in r.layers)
        lines.append(f"NEAR score: none — {bad} tap(s) have NaN/Inf activations and no effective rank")
    if r.proxies:
        shown = ", ".join(f"{k.upper() if k == 'swap' else 'MeCo'} {fmt(v)}" for k, v in r.proxies.items())
        lines.append(f"{shown} (batch of {r.proxy_batch}; higher is better)")
    lines += _skipped_lines(r.skipped)
    return "\n".join(lines)


def _batchnorm_words(r: ScoreResult) -> str:
    """How the score's BatchNorms normalised, for the table's head ('' for a model without)."""
    if not r.batchnorms:
        return ""
    if r.batchnorm == "batch":
        return f"\nbatchnorm: batch statistics, {r.bn_batch} samples per forward pass ({r.batchnorms} BatchNorms)"
    return f"\nbatchnorm: running statistics, as the graph holds them ({r.batchnorms} BatchNorms)"


def layers_table(r: LayersReport) -> str:
    """A human-readable table of the dry run."""
    ins = ", ".join(f"{n} {t}[{_dims(s)}]" for n, t, s in r.inputs)
    head = f"model {r.model}\ninputs {ins} · taps {r.tap_mode} · {r.params:,} parameters"
    rows = [
        (str(t.index), t.name, t.op, t.role, t.tensor, _dims(t.shape), f"{t.axis} ({t.axis_reason})") for t in r.layers
    ]
    lines = [
        head,
        "",
        grid(("#", "layer", "op", "role", "tensor", "shape", "feature axis"), rows),
        "",
        f"{len(r.layers)} taps would be scored",
    ]
    return "\n".join(lines + _skipped_lines(r.skipped))


def score_csv(r: ScoreResult) -> str:
    """One CSV row per tap."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "name", "op", "role", "tensor", "rows", "cols", "erank", "erank_std", "status", "reason"])
    for l in r.layers:
        w.writerow(
            [
                l.index,
                l.name,
                l.op,
                l.role,
                l.tensor,
                l.shape[0],
                l.shape[1],
                "" if math.isnan(l.erank) else repr(l.erank),
                "" if math.isnan(l.erank_std) else repr(l.erank_std),
                l.status,
                l.reason or "",
            ]
        )
    return buf.getvalue().rstrip("\n")


def layers_csv(r: LayersReport) -> str:
    """One CSV row per tap of the dry run."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "name", "op", "role", "tensor", "shape", "axis", "axis_reason"])
    for t in r.layers:
        w.writerow([t.index, t.name, t.op, t.role, t.tensor, _dims(t.shape), t.axis, t.axis_reason])
    return buf.getvalue().rstrip("\n")


def _skipped_lines(skipped: tuple[Skipped, ...]) -> list[str]:
    if not skipped:
        return []
    return ["", "not scored:"] + [f"  {s.name} ({s.op}): {s.reason}" for s in skipped]


def fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.4f}"


def _dims(s: tuple[int | str | None, ...] | None) -> str:
    """Declared dims for a table: sizes, short symbolic names (``N``, ``batch``, ``seq_len``);
    an unknown size or a name an exporter made up (``LayerNormalizationonnx::Gather_1426_dim_0``)
    shows as ``?``."""
    if s is None:
        return "?"
    return "×".join(str(d) if isinstance(d, int) or (isinstance(d, str) and _READABLE.fullmatch(d)) else "?" for d in s)


_READABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,15}")


def grid(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    widths = [min(w, 48) for w in widths[:-1]] + widths[-1:]  # the last column is never cut

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(clip(c, w).ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(header)] + [line(r) for r in rows])


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]
