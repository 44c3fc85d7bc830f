"""The ``onnx-near`` command line: a thin layer over the Python API.

Every command body is one call into a public function plus formatting.  Results go to
stdout (or ``--output``, written atomically); logs and errors to stderr.  Exit codes: 0
success, 2 bad input (one sentence on stderr, no traceback), 1 an unexpected internal error.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__
from .choose import rank_activations, rank_inits
from .config import ScoreConfig, parse_axis, parse_rows, parse_shape, parse_size
from .errors import ConfigError, NearError
from .progress import Progress
from .rank import rank_models, read_accuracies
from .reinit import SCHEMES
from .report import (
    choice_table,
    layers_csv,
    layers_table,
    rank_csv,
    rank_table,
    score_csv,
    score_table,
    to_json,
    vet_table,
    width_table,
)
from .score import describe, score
from .variants import CANDIDATES
from .vet import VetChecks, vet
from .width import estimate_from_models, estimate_width

F = TypeVar("F", bound=Callable[..., Any])


def _guarded(fn: F) -> F:
    """Turn every error into one sentence on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug", False)
        _setup_logging(kwargs.get("verbose", 0), kwargs.get("quiet", False))
        try:
            return fn(*args, **kwargs)
        except NearError as e:
            if debug:
                raise
            click.echo(f"onnx-near: error: {e}", err=True)
            sys.exit(e.exit_code)
        except (click.exceptions.Exit, click.ClickException, KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            if debug:
                raise
            msg = " ".join(str(e).split())[:300]
            click.echo(
                f"onnx-near: internal error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)", err=True
            )
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("onnx-near: %(levelname)s: %(message)s"))
    root = logging.getLogger("onnx_near")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _emit(text: str, output: str | None) -> None:
    """Print ``text``, or write it to ``output`` atomically (never half a file)."""
    if output is None:
        click.echo(text)
        return
    target = Path(output)
    fd, tmp = tempfile.mkstemp(prefix=".onnx-near-", dir=str(target.parent.resolve()))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(fn: F) -> F:
        for d in reversed(decorators):
            fn = d(fn)
        return fn

    return apply


_output = _options(
    click.option(
        "--output", "-o", type=click.Path(dir_okay=False), help="Write the result to this file instead of stdout."
    ),
    click.option("--verbose", "-v", count=True, help="More log output on stderr (-vv for debug)."),
    click.option("--quiet", "-q", is_flag=True, help="Log errors only; no progress line."),
    click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors."),
)


def _format(*choices: str) -> Callable[[F], F]:
    return click.option("--format", "fmt", type=click.Choice(list(choices)), default=choices[0], show_default=True)


def _scoring(default_repetitions: int = 1) -> Callable[[F], F]:
    """The options that shape one NEAR computation (fields of ScoreConfig)."""
    return _options(
        click.option(
            "--data",
            type=click.Path(dir_okay=False),
            help="Input data: .npy (one input) or .npz keyed by input name. Default: synthetic.",
        ),
        click.option(
            "--shape",
            "shapes",
            multiple=True,
            metavar="NAME=NxD1x...",
            help="Dims of a dynamic input, e.g. input=Nx3x32x32 (N: batch).",
        ),
        click.option("--rows", default="square", show_default=True, help="Rows per matrix: square, all, or a number."),
        click.option(
            "--repetitions",
            "-r",
            default=default_repetitions,
            show_default=True,
            type=int,
            help="Repetitions (fresh rows each); scores are their mean.",
        ),
        click.option(
            "--seed", default=0, show_default=True, type=int, help="Seed of the one generator behind all randomness."
        ),
        click.option(
            "--device",
            type=click.Choice(["auto", "cuda", "cpu"]),
            default="auto",
            show_default=True,
            help="Where onnxruntime runs the model.",
        ),
        click.option(
            "--batch-size",
            type=int,
            default=None,
            help="Samples per forward pass (default: chosen from a 64 MiB budget).",
        ),
        click.option(
            "--strict", is_flag=True, help="Tap activation sites only (pre = activation input, post = its output)."
        ),
        click.option(
            "--axis",
            "axes",
            multiple=True,
            metavar="TENSOR=K",
            help="Feature axis of a tap tensor (overrides the inferred one).",
        ),
        click.option(
            "--max-memory",
            default=None,
            metavar="SIZE",
            help="Memory limit, e.g. 8G (default: half the machine's memory).",
        ),
        click.option(
            "--batch-memory",
            default=None,
            metavar="SIZE",
            help="Budget for the activations of one forward pass, e.g. 256M (default 64M); it sets the batch size.",
        ),
        click.option(
            "--timeout", type=float, default=None, metavar="SECONDS", help="Stop a model that runs longer than this."
        ),
        click.option(
            "--approx-above",
            type=int,
            default=None,
            metavar="N",
            help="Approximate erank (Lanczos quadrature, with an error bound) for matrices of at least N×N.",
        ),
        click.option(
            "--threads",
            type=int,
            default=0,
            show_default=True,
            help="Threads for onnxruntime and the effective ranks (0: every CPU).",
        ),
    )


def _config(
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
    **extra: Any,
) -> ScoreConfig:
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
        batch_size=batch_size,
        **extra,
    )


def _names(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise ConfigError(
            f"unknown {what} {bad[0] if bad else '(none)'!r}; expected a comma-separated list of {', '.join(allowed)}"
        )
    return names


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnx-near")
def main() -> None:
    """NEAR scores for ONNX models: judge a network before it is trained.

    The score sums the effective ranks of the pre- and post-activation matrices of an
    untrained network (Husistein et al., ICLR 2025); higher is better.
    """


@main.command("score")
@click.argument("model", type=click.Path(dir_okay=False))
@_scoring()
@click.option("--samples", type=int, default=None, help="Synthetic samples to use with --rows all.")
@click.option(
    "--reinit",
    type=click.Choice(SCHEMES),
    default=None,
    help="Re-draw the layer weights with this scheme before each repetition.",
)
@click.option("--timings", is_flag=True, help="Add the time spent per stage to the JSON report.")
@_format("table", "json", "csv")
@_output
@_guarded
def score_cmd(
    model: str,
    data: str | None,
    fmt: str,
    output: str | None,
    samples: int | None,
    reinit: str | None,
    timings: bool,
    **opts: Any,
) -> None:
    """Score MODEL (an .onnx file): per-tap effective ranks and their sum."""
    progress = Progress(enabled=False) if opts.get("quiet") else Progress()  # on a terminal, past 2 s
    config = _config(samples=samples, reinit=reinit, **_drop_logging(opts))
    result = score(model, data=data, config=config, progress=progress)
    result = dataclasses.replace(result, show_timings=timings)
    _emit({"table": score_table, "json": to_json, "csv": score_csv}[fmt](result), output)


@main.command("layers")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--strict", is_flag=True, help="Tap activation sites only (pre = activation input, post = its output).")
@click.option(
    "--axis",
    "axes",
    multiple=True,
    metavar="TENSOR=K",
    help="Feature axis of a tap tensor (overrides the inferred one).",
)
@_format("table", "json", "csv")
@_output
@_guarded
def layers_cmd(model: str, strict: bool, axes: tuple[str, ...], fmt: str, output: str | None, **_: Any) -> None:
    """List what would be tapped in MODEL, and each tap's feature axis, without running it."""
    report = describe(model, taps="activations" if strict else "all", axes=dict(parse_axis(a) for a in axes))
    _emit({"table": layers_table, "json": to_json, "csv": layers_csv}[fmt](report), output)


@main.command("rank")
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option(
    "--accuracy",
    type=click.Path(dir_okay=False),
    help="CSV of model,accuracy (paths relative to the CSV) to correlate with.",
)
@click.option("--jobs", "-j", default=1, show_default=True, type=int, help="Models scored in parallel processes.")
@click.option("--top-k", type=int, default=None, help="k of the top-k precision (default: the best 10 %).")
@_scoring()
@_format("table", "json", "csv")
@_output
@_guarded
def rank_cmd(
    models: tuple[str, ...],
    accuracy: str | None,
    jobs: int,
    top_k: int | None,
    data: str | None,
    fmt: str,
    output: str | None,
    **opts: Any,
) -> None:
    """Score MODELS (files or folders) and rank them, best first, with parameters and MACs."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be a positive integer, not {jobs}")
    accuracies = read_accuracies(accuracy) if accuracy else None
    config = _config(**_drop_logging(opts))
    if not sys.stderr.isatty():  # a pipeline: no progress bar in its logs
        result = rank_models(models, data, config, accuracies, jobs, top_k)
    else:
        with click.progressbar(length=1, label="scoring", file=sys.stderr, show_pos=True) as bar:

            def progress(done: int, total: int) -> None:
                bar.length = total
                bar.update(done - bar.pos)

            result = rank_models(models, data, config, accuracies, jobs, top_k, progress)
    _emit({"table": rank_table, "json": to_json, "csv": rank_csv}[fmt](result), output)


@main.command("activations")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--candidates", required=True, help=f"Comma-separated activations, from: {', '.join(CANDIDATES)}.")
@click.option(
    "--init",
    "init",
    type=click.Choice(SCHEMES),
    default="pytorch-default",
    show_default=True,
    help="Scheme the weights are re-drawn with each repetition.",
)
@_scoring(default_repetitions=5)
@_format("table", "json")
@_output
@_guarded
def activations_cmd(
    model: str, candidates: str, init: str, data: str | None, fmt: str, output: str | None, **opts: Any
) -> None:
    """Rank activation functions for MODEL: every activation swapped for each candidate."""
    ranking = rank_activations(
        model, _names(candidates, CANDIDATES, "activation"), data, _config(**_drop_logging(opts)), init
    )
    _emit(to_json(ranking) if fmt == "json" else choice_table(ranking), output)


@main.command("init")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--schemes",
    default=",".join(SCHEMES[:6]),
    show_default=True,
    help=f"Comma-separated schemes, from: {', '.join(SCHEMES)}.",
)
@_scoring(default_repetitions=5)
@_format("table", "json")
@_output
@_guarded
def init_cmd(model: str, schemes: str, data: str | None, fmt: str, output: str | None, **opts: Any) -> None:
    """Rank weight-initialisation schemes for MODEL, re-drawing its layer weights with each."""
    ranking = rank_inits(model, _names(schemes, SCHEMES, "initialisation scheme"), data, _config(**_drop_logging(opts)))
    _emit(to_json(ranking) if fmt == "json" else choice_table(ranking), output)


@main.command("width")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Input samples (.npy), shape (N, inputs).")
@click.option("--inputs", type=int, help="Input features of the MLP.")
@click.option("--outputs", type=int, help="Outputs of the MLP.")
@click.option(
    "--hidden-layer", default=1, show_default=True, type=int, help="Which hidden layer's width to estimate (1-based)."
)
@click.option("--fixed", default="", help="Comma-separated widths of the hidden layers before it.")
@click.option(
    "--widths", default="8,16,24,32,48,64,96,128,192,256,384,512", show_default=True, help="Candidate widths."
)
@click.option("--activation", type=click.Choice(CANDIDATES), default="relu", show_default=True)
@click.option("--init", "init", type=click.Choice(SCHEMES), default="pytorch-default", show_default=True)
@click.option("--threshold", default=0.005, show_default=True, type=float, help="Slope threshold (0.005 = 0.5 %).")
@click.option(
    "--slope",
    type=click.Choice(["relative", "absolute"]),
    default="relative",
    show_default=True,
    help="Threshold relative to the initial slope, or absolute.",
)
@click.option(
    "--model",
    "user_models",
    multiple=True,
    metavar="PATH:WIDTH",
    help="Use your own models (one per width) instead of built MLPs.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    help="Save a plot of the points, the fit and the estimate (needs matplotlib).",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--repetitions", "-r", default=1, show_default=True, type=int)
@_format("table", "json")
@_output
@_guarded
def width_cmd(
    data: str,
    inputs: int | None,
    outputs: int | None,
    hidden_layer: int,
    fixed: str,
    widths: str,
    activation: str,
    init: str,
    threshold: float,
    slope: str,
    user_models: tuple[str, ...],
    plot: str | None,
    seed: int,
    repetitions: int,
    fmt: str,
    output: str | None,
    **_: Any,
) -> None:
    """Estimate the best width of an MLP layer from the decay of its relative NEAR score."""
    config = ScoreConfig(seed=seed, repetitions=repetitions)
    if user_models:
        pairs = [_model_width(m) for m in user_models]
        estimate = estimate_from_models(pairs, data, hidden_layer, threshold, slope, config)
    else:
        if inputs is None or outputs is None:
            raise ConfigError("give --inputs and --outputs of the MLP (or your own models with --model PATH:WIDTH)")
        estimate = estimate_width(
            data,
            inputs,
            outputs,
            _ints(widths, "--widths"),
            hidden_layer,
            _ints(fixed, "--fixed"),
            activation,
            threshold,
            slope,
            init,
            config,
        )
    if plot:
        from .plot import plot_width

        plot_width(estimate, plot)
    _emit(to_json(estimate) if fmt == "json" else width_table(estimate), output)


@main.command("vet")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--min-score", type=float, default=None, help="Fail when the total NEAR score is below this.")
@click.option(
    "--min-layer-ratio",
    type=float,
    default=0.05,
    show_default=True,
    help="Fail a tap whose erank / width is below this (collapsed).",
)
@click.option(
    "--max-saturation",
    type=float,
    default=0.9,
    show_default=True,
    help="Fail a bounded activation with more of its values at its bounds.",
)
@click.option(
    "--baseline",
    type=click.Path(dir_okay=False),
    help="Reference model (.onnx) or saved JSON report to compare each tap with.",
)
@click.option(
    "--max-drop",
    type=float,
    default=0.5,
    show_default=True,
    help="Fail a tap whose erank dropped by more than this share of the baseline's.",
)
@_scoring()
@_format("table", "json")
@_output
@_guarded
def vet_cmd(
    model: str,
    min_score: float | None,
    min_layer_ratio: float,
    max_saturation: float,
    baseline: str | None,
    max_drop: float,
    data: str | None,
    fmt: str,
    output: str | None,
    **opts: Any,
) -> None:
    """Vet MODEL before it ships: collapsed, broken or saturated layers, and drops against a baseline.

    Exit code 0: passed; 1: a check failed; 2: the model could not be vetted.
    """
    checks = VetChecks(min_score, min_layer_ratio, max_saturation, max_drop)
    result = vet(model, data, _config(**_drop_logging(opts)), checks, baseline)
    _emit(to_json(result) if fmt == "json" else vet_table(result), output)
    sys.exit(result.exit_code)


def _ints(text: str, option: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise ConfigError(f"{option} expects comma-separated integers, not {text!r}") from e


def _model_width(text: str) -> tuple[str, int]:
    path, sep, width = text.rpartition(":")
    if not sep or not width.isdigit():
        raise ConfigError(f"--model expects PATH:WIDTH, e.g. mlp64.onnx:64, not {text!r}")
    return path, int(width)


def _drop_logging(opts: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in opts.items() if k not in ("verbose", "quiet", "debug")}


if __name__ == "__main__":  # pragma: no cover
    main()
