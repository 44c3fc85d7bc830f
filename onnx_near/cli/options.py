"""The command line's shared options, and how they become a :class:`~onnx_near.config.ScoreConfig`.

Every option that more than one command takes is defined here, once: the result options
(``-o``, ``-v``, ``-q``, ``--debug``, ``--format``), ``--trusted``, the inputs that are not a
batch (``--batch-axis``, ``--input``) and the options that shape one NEAR computation
(:func:`scoring_options`).  Each scoring option is also a decorator of its own (``device_option``,
``threads_option``, ``max_memory_option``…), for a command that takes only some of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..config import (
    ScoreConfig,
    parse_axis,
    parse_batch_axis,
    parse_input_value,
    parse_rows,
    parse_shape,
    parse_size,
)

F = TypeVar("F", bound=Callable[..., Any])


def options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """One decorator applying ``decorators``: the options appear in the help in that order."""

    def apply(fn: F) -> F:
        for d in reversed(decorators):
            fn = d(fn)
        return fn

    return apply


output_options = options(
    click.option(
        "--output",
        "-o",
        type=str,  # checked by check_output: one sentence for every path it refuses
        help="Write the result to this file instead of stdout (a new file, or a regular file it replaces atomically).",
    ),
    click.option("--verbose", "-v", count=True, help="More log output on stderr (-vv for debug)."),
    click.option("--quiet", "-q", is_flag=True, help="Log errors only; no progress line."),
    click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors."),
)


def format_option(*choices: str) -> Callable[[F], F]:
    """``--format``, one of ``choices`` (the first is the default)."""
    return click.option("--format", "fmt", type=click.Choice(list(choices)), default=choices[0], show_default=True)


trusted_option = click.option(
    "--trusted",
    is_flag=True,
    help="Run the model in this process, outside the sandbox (no memory limit on what it computes, no "
    "stop at the deadline while loading, a crash takes the command down): for models you trust.",
)


# How the inputs that are not a batch are fed (a recurrent state, a sample rate): config.batch_axes, input_values.
input_options = options(
    click.option(
        "--batch-axis",
        "batch_axes",
        multiple=True,
        metavar="NAME=K",
        help="Axis of an input that holds its samples, e.g. state=1; NAME=none: not a batch "
        "(a state or scalar fed unchanged with every batch). Default: found from the graph.",
    ),
    click.option(
        "--input",
        "input_values",
        multiple=True,
        metavar="NAME=VALUE",
        help="Set an input to a number (or zeros) instead of data, e.g. sr=16000 for a sample rate.",
    ),
)

# --- the options of one NEAR computation (fields of ScoreConfig) ----------------------------------


def batchnorm_option(default: str) -> Callable[[F], F]:
    """``--batchnorm``; ``default`` is the command's (docs/score.md: which command uses which, and why)."""
    return click.option(
        "--batchnorm",
        type=click.Choice(["batch", "running"]),
        default=default,
        show_default=True,
        help="BatchNorm statistics: batch (of the batch being fed, as the NEAR authors' code runs it) "
        "or running (the graph's own, as the model is deployed).",
    )


bn_batch_option = click.option(
    "--bn-batch",
    type=int,
    default=64,
    show_default=True,
    help="With --batchnorm batch: samples in every forward pass (the batch whose statistics BatchNorm "
    "uses); also the batch of --proxies meco,swap.",
)
data_option = click.option(
    "--data",
    type=click.Path(dir_okay=False),
    help="Input data: .npy (one input) or .npz keyed by input name. Default: synthetic.",
)
shape_option = click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="NAME=NxD1x...",
    help="Dims of a dynamic input, e.g. input=Nx3x32x32 (N: batch).",
)
rows_option = click.option(
    "--rows", default="square", show_default=True, help="Rows per matrix: square, all, or a number."
)


def repetitions_option(default: int) -> Callable[[F], F]:
    """``--repetitions``/``-r`` with the command's default."""
    return click.option(
        "--repetitions",
        "-r",
        default=default,
        show_default=True,
        type=int,
        help="Repetitions (fresh rows each); scores are their mean.",
    )


seed_option = click.option(
    "--seed", default=0, show_default=True, type=int, help="Seed of the one generator behind all randomness."
)
device_option = click.option(
    "--device",
    type=click.Choice(["auto", "cuda", "cpu"]),
    default="auto",
    show_default=True,
    help="Where onnxruntime runs the model.",
)
batch_size_option = click.option(
    "--batch-size",
    type=int,
    default=None,
    help="Samples per forward pass (default: chosen from a 64 MiB budget).",
)
strict_option = click.option(
    "--strict", is_flag=True, help="Tap activation sites only (pre = activation input, post = its output)."
)
axis_option = click.option(
    "--axis",
    "axes",
    multiple=True,
    metavar="TENSOR=K",
    help="Feature axis of a tap tensor (overrides the inferred one).",
)
max_memory_option = click.option(
    "--max-memory",
    default=None,
    metavar="SIZE",
    help="Memory limit, e.g. 8G (default: half the machine's memory).",
)
batch_memory_option = click.option(
    "--batch-memory",
    default=None,
    metavar="SIZE",
    help="Budget for the activations of one forward pass, e.g. 256M (default 64M); it sets the batch size.",
)
timeout_option = click.option(
    "--timeout", type=float, default=None, metavar="SECONDS", help="Stop a model that runs longer than this."
)
approx_above_option = click.option(
    "--approx-above",
    type=int,
    default=None,
    metavar="N",
    help="Approximate erank (Lanczos quadrature, with an error bound) for matrices of at least N×N.",
)
threads_option = click.option(
    "--threads",
    type=int,
    default=0,
    show_default=True,
    help="Threads for onnxruntime and the effective ranks (0: every CPU).",
)


def scoring_options(default_repetitions: int = 1, default_batchnorm: str | None = "running") -> Callable[[F], F]:
    """The options that shape one NEAR computation (fields of ScoreConfig, built by
    :func:`score_config`); ``default_batchnorm`` is the command's default statistics (None:
    a command that fixes them, ``vet``, has neither ``--batchnorm`` nor ``--bn-batch``)."""
    return options(
        *((batchnorm_option(default_batchnorm), bn_batch_option) if default_batchnorm is not None else ()),
        data_option,
        shape_option,
        input_options,
        rows_option,
        repetitions_option(default_repetitions),
        seed_option,
        device_option,
        batch_size_option,
        strict_option,
        axis_option,
        max_memory_option,
        batch_memory_option,
        timeout_option,
        approx_above_option,
        threads_option,
    )


def score_config(
    shapes: tuple[str, ...],
    rows: str,
    repetitions: int,
    seed: int,
    device: str,
    batch_size: int | None,
    strict: bool,
    axes: tuple[str, ...],
    max_memory: str | None = None,
    timeout: float | None = None,
    batch_memory: str | None = None,
    batch_axes: tuple[str, ...] = (),
    input_values: tuple[str, ...] = (),
    **extra: Any,
) -> ScoreConfig:
    """The :class:`~onnx_near.config.ScoreConfig` that :func:`scoring_options` ask for (the
    other fields in ``extra``: batchnorm, bn_batch, approx_above, threads, samples…)."""
    if max_memory is not None:
        extra["max_memory"] = parse_size(max_memory)
    if batch_memory is not None:
        extra["max_batch_bytes"] = parse_size(batch_memory, "--batch-memory")
    return ScoreConfig(
        timeout=timeout,
        rows=parse_rows(rows),
        repetitions=repetitions,
        seed=seed,
        device=device,  # type: ignore[arg-type]
        taps="activations" if strict else "all",
        shapes=dict(parse_shape(s) for s in shapes),
        axes=dict(parse_axis(a) for a in axes),
        batch_axes=dict(parse_batch_axis(b) for b in batch_axes),
        input_values=dict(parse_input_value(v) for v in input_values),
        batch_size=batch_size,
        **extra,
    )


def drop_logging(opts: dict[str, Any]) -> dict[str, Any]:
    """``opts`` without the logging options (-v, -q, --debug), for :func:`score_config`."""
    return {k: v for k, v in opts.items() if k not in ("verbose", "quiet", "debug")}
