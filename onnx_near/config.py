"""How a NEAR score is computed: one frozen dataclass holding every choice."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Literal, Mapping, Union

from .errors import ConfigError

Rows = Union[int, Literal["square", "all"]]
Device = Literal["auto", "cpu", "cuda"]
TapMode = Literal["all", "activations"]
BatchNorm = Literal["batch", "running"]

PROXIES = ("near", "meco", "swap")  # what `rank --proxies` can show (near is always computed)

DEFAULT_MAX_BATCH_BYTES = 64 * 1024 * 1024  # measured: smaller batches cost no forward time


def default_max_memory() -> int:
    """Half of this machine's physical memory (4 GiB when it cannot be read)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 2
    except (ValueError, OSError, AttributeError):
        return 4 << 30


@dataclass(frozen=True)
class ScoreConfig:
    """Every option of a NEAR computation.

    Attributes:
        rows: rows per matrix. ``"square"`` (the paper's choice): as many rows as the
            matrix has columns; an int: that many rows; ``"all"``: every row of the data.
        repetitions: the score is the mean over this many repetitions, each with fresh rows.
        seed: seeds the single generator behind all randomness (synthetic inputs, windows).
        device: ``"auto"`` (CUDA when the session really gets it), ``"cuda"`` or ``"cpu"``.
        taps: ``"all"`` (the authors' choice: every weighted-layer output and every
            activation output) or ``"activations"`` (strict: only activation sites, with
            the activation's input as ``pre`` and its output as ``post``).
        shapes: per input name, the dims to use; ``None`` marks the batch dim, which
            onnx-near sets itself when the model leaves it dynamic.
        axes: per tap tensor (or tap name), the feature axis to use instead of the inferred one.
        batch_axes: per input name, the axis that holds its samples, or None for an input
            that is not a batch (a recurrent state, a sample rate): fed unchanged with every
            batch.  Inputs not named get theirs from the graph (see :func:`onnx_near.inputs.batch_axes`).
        input_values: per input name, a number every element of that input is set to
            (``--input sr=16000``), instead of data or synthetic values.
        batch_size: samples per forward pass; ``None`` picks it from ``max_batch_bytes``.
        max_batch_bytes: memory budget of one forward pass: the activations it holds live (about
            four of the largest tap tensors of a sample) and any tap returned whole; sets the batch size.
        samples: number of synthetic samples when ``rows="all"`` and no data is given.
        reinit: re-draw the layer weights with this scheme (see :mod:`onnx_near.reinit`)
            before each repetition, as the authors' code does; None keeps the model's weights.
        threads: threads for onnxruntime (intra-op) and for the effective ranks (0: all
            the CPUs this process may use).
        max_memory: bytes the model's weights, one batch of inputs and tap outputs, and the
            matrices kept may take; a model or request that needs more is refused up front.
        timeout: seconds the whole computation may run (None: no limit); onnxruntime is
            stopped mid-run when it passes.
        approx_above: matrices with at least this many rows and columns get the approximate
            effective rank (stochastic Lanczos quadrature, with an error bound) instead of
            the exact one; None: always exact.
        feeds: also measure the effective rank of each tap's feed, the tensor its layer or
            activation reads (vet judges a tap against it); never counted in the score.
        synthetic: how float inputs are synthesised when no data is given: ``"normal"``
            (N(0, 1) noise), ``"smooth"`` (smooth random images for image-shaped inputs, noise
            otherwise); None: ``score`` and the rankings use noise, ``vet`` smooth images.
        batchnorm: the statistics each BatchNormalization normalises with: ``"batch"`` (the
            default: those of the batch being fed, as PyTorch's training mode and the NEAR
            authors' code do, so scores follow the paper; see :mod:`onnx_near.batchnorm`) or
            ``"running"`` (the graph's own, as the model is deployed; what ``vet`` uses).
        bn_batch: with ``batchnorm="batch"``, the samples of every forward pass (the batch
            whose statistics each BatchNorm uses; a model whose graph fixes its batch uses
            that); also the batch of the proxies' forward pass.
        proxies: other training-free proxies to compute from the same taps, besides NEAR:
            ``"meco"`` (:mod:`onnx_near.meco`) and ``"swap"`` (:mod:`onnx_near.swap`).
    """

    rows: Rows = "square"
    repetitions: int = 1
    seed: int = 0
    device: Device = "auto"
    taps: TapMode = "all"
    shapes: Mapping[str, tuple[int | None, ...]] = field(default_factory=dict)
    axes: Mapping[str, int] = field(default_factory=dict)
    batch_axes: Mapping[str, int | None] = field(default_factory=dict)
    input_values: Mapping[str, int | float] = field(default_factory=dict)
    batch_size: int | None = None
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    samples: int | None = None
    reinit: str | None = None
    threads: int = 0
    max_memory: int = field(default_factory=default_max_memory)
    timeout: float | None = None
    approx_above: int | None = None
    feeds: bool = False
    synthetic: str | None = None
    batchnorm: BatchNorm = "batch"
    bn_batch: int = 64
    proxies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.rows, bool) or not (
            self.rows in ("square", "all") or (isinstance(self.rows, int) and self.rows >= 1)
        ):
            raise ConfigError(f"rows must be 'square', 'all' or a positive integer, not {self.rows!r}")
        if not isinstance(self.repetitions, int) or self.repetitions < 1:
            raise ConfigError(f"repetitions must be a positive integer, not {self.repetitions!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, not {self.seed!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, not {self.device!r}")
        if self.taps not in ("all", "activations"):
            raise ConfigError(f"taps must be 'all' or 'activations', not {self.taps!r}")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ConfigError(f"batch_size must be a positive integer, not {self.batch_size!r}")
        if self.samples is not None and (not isinstance(self.samples, int) or self.samples < 1):
            raise ConfigError(f"samples must be a positive integer, not {self.samples!r}")
        if self.reinit is not None:
            from .reinit import check_scheme

            check_scheme(self.reinit)
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ConfigError(f"threads must be a non-negative integer, not {self.threads!r}")
        if not isinstance(self.max_memory, int) or self.max_memory < 1:
            raise ConfigError(f"max_memory must be a positive number of bytes, not {self.max_memory!r}")
        if self.timeout is not None and not (isinstance(self.timeout, (int, float)) and self.timeout > 0):
            raise ConfigError(f"timeout must be a positive number of seconds, not {self.timeout!r}")
        if self.approx_above is not None and (not isinstance(self.approx_above, int) or self.approx_above < 64):
            raise ConfigError(f"approx_above must be an integer of at least 64, not {self.approx_above!r}")
        if not isinstance(self.max_batch_bytes, int) or self.max_batch_bytes < 1:
            raise ConfigError(f"max_batch_bytes must be a positive integer, not {self.max_batch_bytes!r}")
        if self.synthetic not in (None, "normal", "smooth"):
            raise ConfigError(f"synthetic must be 'normal' or 'smooth', not {self.synthetic!r}")
        if self.batchnorm not in ("batch", "running"):
            raise ConfigError(f"batchnorm must be 'batch' or 'running', not {self.batchnorm!r}")
        if isinstance(self.bn_batch, bool) or not isinstance(self.bn_batch, int) or self.bn_batch < 1:
            raise ConfigError(f"bn_batch (--bn-batch) must be a positive integer, not {self.bn_batch!r}")
        bad = [p for p in self.proxies if p not in PROXIES[1:]]
        if isinstance(self.proxies, str) or bad:
            raise ConfigError(f"proxies must be a tuple of {', '.join(PROXIES[1:])}, not {self.proxies!r}")
        for name, k in self.batch_axes.items():
            if k is not None and (isinstance(k, bool) or not isinstance(k, int)):
                raise ConfigError(f"the batch axis of input {name!r} must be an integer or None, not {k!r}")
        for name, v in self.input_values.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"the value of input {name!r} must be a finite number, not {v!r}")


def parse_proxies(text: str) -> tuple[str, ...]:
    """Parse ``rank --proxies``: comma-separated proxies (``near``, ``meco``, ``swap``) and
    rank-average combinations of them (``near+swap``), e.g. ``near,swap,near+swap``; the
    first one orders the models."""
    out: list[str] = []
    for entry in (e.strip().lower() for e in text.split(",")):
        parts = [p.strip() for p in entry.split("+")]
        bad = [p for p in parts if p not in PROXIES]
        if not entry or bad or len(set(parts)) != len(parts):
            raise ConfigError(
                f"--proxies: {entry or '(nothing)'!r} is not a proxy; expected a comma-separated list of "
                f"{', '.join(PROXIES)} or rank-average combinations such as near+swap, not {text!r}"
            )
        name = "+".join(parts)
        if name not in out:
            out.append(name)
    return tuple(out)


def computed_proxies(shown: tuple[str, ...]) -> tuple[str, ...]:
    """The proxies besides NEAR a score must compute (``ScoreConfig.proxies``) to show ``shown``."""
    singles = {p for entry in shown for p in entry.split("+")}
    return tuple(p for p in PROXIES[1:] if p in singles)


def parse_rows(text: str) -> Rows:
    """Parse the CLI's ``--rows`` value: ``square``, ``all`` or a positive integer."""
    text = text.strip().lower()
    if text in ("square", "all"):
        return text  # type: ignore[return-value]
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise ConfigError(f"--rows must be 'square', 'all' or a positive integer, not {text!r}")


def parse_shape(text: str) -> tuple[str, tuple[int | None, ...]]:
    """Parse ``NAME=1x3x32x32``; ``N``, ``?`` or ``-1`` marks the batch dim (usually the
    first; ``2xNx128`` for an input batched on axis 1)."""
    name, sep, dims = text.rpartition("=")
    if not sep or not name or not dims:
        raise ConfigError(f"--shape expects NAME=D1xD2x..., e.g. input=Nx3x32x32, not {text!r}")
    out: list[int | None] = []
    for d in re.split(r"[x,]", dims.strip()):
        d = d.strip()
        if d.lower() in ("n", "?", "-1", "batch") and None not in out:
            out.append(None)
        elif d.isdigit() and int(d) > 0:
            out.append(int(d))
        else:
            raise ConfigError(f"--shape {text!r}: dimension {d!r} is not a positive integer")
    return name, tuple(out)


def parse_axis(text: str) -> tuple[str, int]:
    """Parse ``TENSOR=K`` for ``--axis``."""
    name, sep, k = text.rpartition("=")
    try:
        return (name, int(k)) if sep and name else _bad_axis(text)
    except ValueError:
        return _bad_axis(text)


def _bad_axis(text: str) -> tuple[str, int]:
    raise ConfigError(f"--axis expects TENSOR=K with an integer axis K, not {text!r}")


def parse_batch_axis(text: str) -> tuple[str, int | None]:
    """Parse ``NAME=K`` for ``--batch-axis``: K an integer axis, or ``none`` (not a batch)."""
    name, sep, k = text.rpartition("=")
    k = k.strip().lower()
    if sep and name and k in ("none", "no", "-"):
        return name, None
    if sep and name and re.fullmatch(r"-?\d+", k):
        return name, int(k)
    raise ConfigError(
        f"--batch-axis expects NAME=K with an integer axis K, or NAME=none for an input that is not a batch, not {text!r}"
    )


def parse_input_value(text: str) -> tuple[str, int | float]:
    """Parse ``NAME=VALUE`` for ``--input``: a number (``16000``, ``0.5``) or ``zeros``."""
    name, sep, v = text.rpartition("=")
    v = v.strip().lower()
    if sep and name and v:
        if v == "zeros":
            return name, 0
        try:
            return name, int(v)
        except ValueError:
            try:
                value = float(v)
            except ValueError:
                value = math.nan
            if math.isfinite(value):
                return name, value
    raise ConfigError(f"--input expects NAME=VALUE with a finite number or zeros, e.g. sr=16000, not {text!r}")


def parse_size(text: str, option: str = "--max-memory") -> int:
    """Parse a memory size such as ``8G``, ``512M`` or ``1073741824`` into bytes (``option``
    names the option in the error message)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError as e:
        raise ConfigError(f"{option} expects a size such as 8G or 512M, not {text!r}") from e
    if value < 1:
        raise ConfigError(f"{option} must be positive, not {text!r}")
    return int(value)
