"""The ``onnx-near`` command line: a thin layer over :func:`onnx_near.score` and
:func:`onnx_near.describe`.

Results go to stdout (or ``--output``, written atomically); logs and errors to stderr.
Exit codes: 0 success, 2 bad input (one sentence on stderr, no traceback), 1 an
unexpected internal error.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from . import __version__
from .config import ScoreConfig, parse_axis, parse_rows, parse_shape
from .errors import NearError
from .report import layers_csv, layers_table, score_csv, score_table, to_json
from .score import describe, score

F = TypeVar("F", bound=Callable[..., Any])


def _guarded(fn: F) -> F:
    """Turn every error into one sentence on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug", False)
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


def _common(fn: F) -> F:
    fn = click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")(fn)
    fn = click.option("--quiet", "-q", is_flag=True, help="Log errors only.")(fn)
    fn = click.option("--verbose", "-v", count=True, help="More log output on stderr (-vv for debug).")(fn)
    fn = click.option(
        "--output", "-o", type=click.Path(dir_okay=False), help="Write the result to this file instead of stdout."
    )(fn)
    fn = click.option(
        "--axis",
        "axes",
        multiple=True,
        metavar="TENSOR=K",
        help="Feature axis of a tap tensor (overrides the inferred one).",
    )(fn)
    fn = click.option(
        "--strict", is_flag=True, help="Tap activation sites only (pre = activation input, post = its output)."
    )(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnx-near")
def main() -> None:
    """NEAR scores for ONNX models: judge a network before it is trained.

    The score sums the effective ranks of the pre- and post-activation matrices of an
    untrained network (Husistein et al., ICLR 2025); higher is better.
    """


@main.command("score")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--data",
    type=click.Path(dir_okay=False),
    help="Input data: .npy (one input) or .npz keyed by input name. Default: synthetic inputs.",
)
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="NAME=NxD1x...",
    help="Dims of a dynamic input, e.g. input=Nx3x32x32 (N: batch).",
)
@click.option("--rows", default="square", show_default=True, help="Rows per matrix: square, all, or a number.")
@click.option(
    "--repetitions",
    "-r",
    default=1,
    show_default=True,
    type=int,
    help="Repetitions (fresh rows each); the score is their mean.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the one generator behind all randomness.")
@click.option(
    "--device",
    type=click.Choice(["auto", "cuda", "cpu"]),
    default="auto",
    show_default=True,
    help="Where onnxruntime runs the model.",
)
@click.option(
    "--batch-size", type=int, default=None, help="Samples per forward pass (default: chosen from a 256 MiB budget)."
)
@click.option("--samples", type=int, default=None, help="Synthetic samples to use with --rows all.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@_common
@_guarded
def score_cmd(
    model: str,
    data: str | None,
    shapes: tuple[str, ...],
    rows: str,
    repetitions: int,
    seed: int,
    device: str,
    batch_size: int | None,
    samples: int | None,
    fmt: str,
    strict: bool,
    axes: tuple[str, ...],
    output: str | None,
    verbose: int,
    quiet: bool,
    debug: bool,
) -> None:
    """Score MODEL (an .onnx file): per-tap effective ranks and their sum."""
    _setup_logging(verbose, quiet)
    config = ScoreConfig(
        rows=parse_rows(rows),
        repetitions=repetitions,
        seed=seed,
        device=device,  # type: ignore[arg-type]
        taps="activations" if strict else "all",
        shapes=dict(parse_shape(s) for s in shapes),
        axes=dict(parse_axis(a) for a in axes),
        batch_size=batch_size,
        samples=samples,
    )
    result = score(model, data=data, config=config)
    _emit({"table": score_table, "json": to_json, "csv": score_csv}[fmt](result), output)


@main.command("layers")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@_common
@_guarded
def layers_cmd(
    model: str,
    fmt: str,
    strict: bool,
    axes: tuple[str, ...],
    output: str | None,
    verbose: int,
    quiet: bool,
    debug: bool,
) -> None:
    """List what would be tapped in MODEL, and each tap's feature axis, without running it."""
    _setup_logging(verbose, quiet)
    report = describe(model, taps="activations" if strict else "all", axes=dict(parse_axis(a) for a in axes))
    _emit({"table": layers_table, "json": to_json, "csv": layers_csv}[fmt](report), output)


if __name__ == "__main__":  # pragma: no cover
    main()
