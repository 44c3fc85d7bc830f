"""The ``onnx-near`` command line: a thin layer over the Python API.

Every command body is one call into a public function plus formatting.  Results go to
stdout (or ``--output``, written atomically); logs and errors to stderr.

Exit codes, the same for every command (:data:`EXIT_CODES`): 0 success, 1 ``vet`` failed a
check (and only that), 2 bad input (one sentence on stderr, no traceback), 3 an internal
error (one line naming the exception, asking to report it).
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
from .choose import choice_table, rank_activations, rank_inits
from .config import (
    ScoreConfig,
    parse_axis,
    parse_batch_axis,
    parse_input_value,
    parse_proxies,
    parse_rows,
    parse_shape,
    parse_size,
)
from .engines import LocalEngine, RayEngine, import_ray
from .errors import ConfigError, NearError
from .install import InstallError, onnxruntime_problem
from .plot import plot_rank
from .progress import Progress
from .rank import rank_csv, rank_from_results, rank_models, rank_table, read_accuracies
from .reinit import SCHEMES
from .report import layers_csv, layers_table, score_csv, score_table, to_json
from .sandbox import Limits
from .sandbox import run as run_sandboxed
from .sandbox import score as sandbox_score
from .score import describe, score
from .variants import CANDIDATES
from .vet import VetChecks, vet, vet_table
from .width import estimate_from_models, estimate_width, width_table

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

EXIT_CODES = {0: "success", 1: "vet failed a check", 2: "bad input: could not do it", 3: "internal error"}
INTERNAL_ERROR = 3


def _guarded(fn: F) -> F:
    """Turn every error into one sentence on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug", False)
        _setup_logging(kwargs.get("verbose", 0), kwargs.get("quiet", False))
        try:
            if kwargs.get("output") is not None:
                check_output(kwargs["output"], _given_paths(kwargs))
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
                f"onnx-near: internal error: {type(e).__name__}: {msg} — a bug in onnx-near: please report it "
                "with the traceback that --debug shows",
                err=True,
            )
            sys.exit(INTERNAL_ERROR)

    return wrapper  # type: ignore[return-value]


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("onnx-near: %(levelname)s: %(message)s"))
    root = logging.getLogger("onnx_near")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _given_paths(kwargs: dict[str, Any]) -> list[str]:
    """The files a command reads (model, data, baseline…): ``-o`` must not replace them."""
    paths: list[str] = []
    for key in ("model", "models", "data", "baseline", "accuracy"):
        v = kwargs.get(key)
        paths += [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)] if v else []
    return paths


def check_output(output: str, inputs: list[str]) -> Path:
    """The file ``-o`` will write: refused (:class:`ConfigError`) unless it is a new path or
    a regular file in an existing folder, and none of the command's own input files.  A
    symbolic link is followed: the file it points to is written."""
    if not output:
        raise ConfigError("-o/--output is empty; give the path of the file to write")
    target = Path(os.path.realpath(output))
    if any(os.path.exists(p) and os.path.exists(target) and os.path.samefile(p, target) for p in inputs):
        raise ConfigError(f"-o {output!r} is one of the command's own input files; write the report elsewhere")
    if os.path.lexists(target) and not target.is_file():
        raise ConfigError(f"-o {output!r} is not a regular file (a directory, FIFO or device); give a file path")
    if not target.parent.is_dir():
        raise ConfigError(f"-o {output!r}: the folder {str(target.parent)!r} does not exist")
    if not os.access(target.parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise ConfigError(f"-o {output!r} cannot be written here (permission denied)")
    return target


def _emit(text: str, output: str | None) -> None:
    """Print ``text``, or write it to ``output`` atomically (never half a file): the file is
    written beside its target and renamed over it, with the mode the umask gives a new file
    (or the mode of the file it replaces)."""
    if output is None:
        click.echo(text)
        return
    target = check_output(output, [])
    try:
        fd, tmp = tempfile.mkstemp(prefix=".onnx-near-", dir=str(target.parent))
    except OSError as e:
        raise ConfigError(f"-o {output!r} cannot be written: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        os.chmod(tmp, target.stat().st_mode & 0o7777 if target.exists() else 0o666 & ~_umask())
        os.replace(tmp, target)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"-o {output!r} cannot be written: {e.strerror or e}") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(fn: F) -> F:
        for d in reversed(decorators):
            fn = d(fn)
        return fn

    return apply


_output = _options(
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


def _format(*choices: str) -> Callable[[F], F]:
    return click.option("--format", "fmt", type=click.Choice(list(choices)), default=choices[0], show_default=True)


_trusted = click.option(
    "--trusted",
    is_flag=True,
    help="Run the model in this process, outside the sandbox (no memory limit on what it computes, no "
    "stop at the deadline while loading, a crash takes the command down): for models you trust.",
)


def _isolated(trusted: bool, config: ScoreConfig, model: str, call: Callable[[], T]) -> T:
    """``call()`` in a sandboxed child under the config's limits (``--max-memory``,
    ``--timeout``; a crash is one sentence), or in this process with ``--trusted``."""
    if trusted:
        return call()
    return run_sandboxed(call, Limits.of(config), repr(Path(model).name))


# How the inputs that are not a batch are fed (a recurrent state, a sample rate): config.batch_axes, input_values.
_input_options = _options(
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


def _scoring(default_repetitions: int = 1, batchnorm: str = "running") -> Callable[[F], F]:
    """The options that shape one NEAR computation (fields of ScoreConfig); ``batchnorm`` is
    the command's default statistics (docs/score.md: which command uses which, and why)."""
    return _options(
        click.option(
            "--batchnorm",
            type=click.Choice(["batch", "running"]),
            default=batchnorm,
            show_default=True,
            help="BatchNorm statistics: batch (of the batch being fed, as the NEAR authors' code runs it) "
            "or running (the graph's own, as the model is deployed).",
        ),
        click.option(
            "--bn-batch",
            type=int,
            default=64,
            show_default=True,
            help="With --batchnorm batch: samples in every forward pass (the batch whose statistics BatchNorm "
            "uses); also the batch of --proxies meco,swap.",
        ),
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
        _input_options,
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
    batch_axes: tuple[str, ...] = (),
    input_values: tuple[str, ...] = (),
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
        batch_axes=dict(parse_batch_axis(b) for b in batch_axes),
        input_values=dict(parse_input_value(v) for v in input_values),
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
    problem = onnxruntime_problem()  # a doubled or half-removed onnxruntime: say how to repair it
    if problem is not None:
        click.echo(f"onnx-near: error: {problem}", err=True)
        sys.exit(InstallError.exit_code)


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
@_trusted
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
    trusted: bool,
    **opts: Any,
) -> None:
    """Score MODEL (an .onnx file): per-tap effective ranks and their sum."""
    progress = Progress(enabled=False) if opts.get("quiet") else Progress()  # on a terminal, past 2 s
    config = _config(samples=samples, reinit=reinit, **_drop_logging(opts))
    result = _isolated(trusted, config, model, lambda: score(model, data=data, config=config, progress=progress))
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
@_input_options
@_trusted
@_format("table", "json", "csv")
@_output
@_guarded
def layers_cmd(
    model: str,
    strict: bool,
    axes: tuple[str, ...],
    batch_axes: tuple[str, ...],
    input_values: tuple[str, ...],
    trusted: bool,
    fmt: str,
    output: str | None,
    **_: Any,
) -> None:
    """List what would be tapped in MODEL, and each tap's feature axis, without running it."""
    config = ScoreConfig(
        taps="activations" if strict else "all",
        axes=dict(parse_axis(a) for a in axes),
        batch_axes=dict(parse_batch_axis(b) for b in batch_axes),
        input_values=dict(parse_input_value(v) for v in input_values),
    )
    report = _isolated(trusted, config, model, lambda: describe(model, config))
    _emit({"table": layers_table, "json": to_json, "csv": layers_csv}[fmt](report), output)


@main.command("rank")
@click.argument("models", nargs=-1, type=click.Path())
@click.option(
    "--accuracy",
    type=click.Path(dir_okay=False),
    help="CSV of model,accuracy (paths relative to the CSV) to correlate with.",
)
@click.option("--top-k", type=int, default=None, help="k of the top-k precision (default: the best 10 %).")
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: a process pool on this machine (--jobs); ray: tasks on a Ray cluster (pip install 'onnx-near[ray]').",
)
@click.option(
    "--jobs", "-j", default=1, show_default=True, type=int, help="Local engine: models scored in parallel processes."
)
@click.option(
    "--address",
    default=None,
    metavar="auto|HOST:PORT|ray://HOST:PORT",
    help="Ray engine: the cluster (default: RAY_ADDRESS, else a local Ray started and stopped for the run).",
)
@click.option("--cpus-per-model", type=float, default=None, help="Ray engine: CPUs each task reserves [1].")
@click.option("--gpus-per-model", type=float, default=None, help="Ray engine: GPUs each task reserves, e.g. 0.25 [0].")
@click.option("--chunk", type=int, default=None, help="Ray engine: models per task (default: about 0.5 s of work).")
@click.option(
    "--results",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE.jsonl",
    help="Append one JSON line per model to FILE as it finishes; the ranking is read back from it.",
)
@click.option("--resume", is_flag=True, help="Go on with --results FILE: skip the models it holds for these options.")
@click.option(
    "--from",
    "from_results",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE.jsonl",
    help="Rank the rows of a results file instead of scoring (with --accuracy: the correlations).",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE.png",
    help="Draw NEAR and params against accuracy (a histogram of scores without --accuracy); needs matplotlib.",
)
@click.option(
    "--proxies",
    default="near",
    show_default=True,
    help="Proxies to show, each with its column and correlations: near, meco, swap, and rank averages "
    "such as near+swap (e.g. near,meco,swap,near+swap); the first orders the models.",
)
@_scoring(batchnorm="batch")
@_trusted
@_format("table", "json", "csv")
@_output
@_guarded
def rank_cmd(
    models: tuple[str, ...],
    accuracy: str | None,
    top_k: int | None,
    engine: str,
    jobs: int,
    address: str | None,
    cpus_per_model: float | None,
    gpus_per_model: float | None,
    chunk: int | None,
    results: str | None,
    resume: bool,
    from_results: str | None,
    plot: str | None,
    proxies: str,
    data: str | None,
    trusted: bool,
    fmt: str,
    output: str | None,
    **opts: Any,
) -> None:
    """Score MODELS (files or folders) and rank them, best first, with parameters and MACs.

    With --results FILE.jsonl each model's row is kept in FILE as soon as it is scored, and
    --resume goes on with a run that was stopped; --from FILE.jsonl ranks such a file again.
    """
    _rank_files_apart(output, results, from_results, plot)
    shown = parse_proxies(proxies)
    accuracies = read_accuracies(accuracy) if accuracy else None
    if from_results is not None:
        if models or results or resume:
            raise ConfigError("--from ranks a results file: give it without MODELS, --results or --resume")
        result = rank_from_results(from_results, accuracies, top_k, shown)
    else:
        if not models:
            raise ConfigError("rank needs MODELS (.onnx files or folders), or --from FILE.jsonl")
        if resume and results is None:
            raise ConfigError("--resume goes on with a results file: give it with --results FILE.jsonl")
        run_engine = _rank_engine(engine, jobs, address, cpus_per_model, gpus_per_model, chunk)
        config = _config(**_drop_logging(opts))
        kwargs: dict[str, Any] = {"engine": run_engine, "results": results, "resume": resume, "proxies": shown}
        if not trusted and engine == "local":  # each model in a limited child: one bad model is one error row
            kwargs["scorer"] = sandbox_score
        if not sys.stderr.isatty():  # a pipeline: no progress bar in its logs
            result = rank_models(models, data, config, accuracies, top_k=top_k, **kwargs)
        else:
            with click.progressbar(length=1, label="scoring", file=sys.stderr, show_pos=True) as bar:

                def progress(done: int, total: int) -> None:
                    bar.length = total
                    bar.update(done - bar.pos)

                result = rank_models(models, data, config, accuracies, top_k=top_k, progress=progress, **kwargs)
    if plot is not None:
        plot_rank(result, plot)
    _emit({"table": rank_table, "json": to_json, "csv": rank_csv}[fmt](result), output)


def _rank_engine(
    engine: str,
    jobs: int,
    address: str | None,
    cpus_per_model: float | None,
    gpus_per_model: float | None,
    chunk: int | None,
) -> LocalEngine | RayEngine:
    """The engine the rank options ask for; an option of the other engine is refused."""
    ray_options = {
        "--address": address,
        "--cpus-per-model": cpus_per_model,
        "--gpus-per-model": gpus_per_model,
        "--chunk": chunk,
    }
    if engine == "local":
        given = [k for k, v in ray_options.items() if v is not None]
        if given:
            raise ConfigError(f"{given[0]} is an option of --engine ray; the local engine takes --jobs")
        return LocalEngine(jobs)
    if jobs != 1:
        raise ConfigError("--jobs is an option of --engine local; Ray runs as many models at once as its CPUs allow")
    import_ray()  # installed? said before any model is read
    return RayEngine(address, cpus_per_model or 1.0, gpus_per_model or 0.0, chunk)


def _rank_files_apart(output: str | None, *files: str | None) -> None:
    """-o must not replace the results file, nor --plot either of them."""
    named = [os.path.realpath(f) for f in (output, *files) if f]
    if len(set(named)) < len(named):
        raise ConfigError("-o, --results, --from and --plot must name different files")


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
@_scoring(default_repetitions=5, batchnorm="batch")
@_trusted
@_format("table", "json")
@_output
@_guarded
def activations_cmd(
    model: str, candidates: str, init: str, data: str | None, trusted: bool, fmt: str, output: str | None, **opts: Any
) -> None:
    """Rank activation functions for MODEL: every activation swapped for each candidate."""
    names, config = _names(candidates, CANDIDATES, "activation"), _config(**_drop_logging(opts))
    ranking = _isolated(trusted, config, model, lambda: rank_activations(model, names, data, config, init))
    _emit(to_json(ranking) if fmt == "json" else choice_table(ranking), output)


@main.command("init")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--schemes",
    default=",".join(SCHEMES[:6]),
    show_default=True,
    help=f"Comma-separated schemes, from: {', '.join(SCHEMES)}.",
)
@_scoring(default_repetitions=5, batchnorm="batch")
@_trusted
@_format("table", "json")
@_output
@_guarded
def init_cmd(
    model: str, schemes: str, data: str | None, trusted: bool, fmt: str, output: str | None, **opts: Any
) -> None:
    """Rank weight-initialisation schemes for MODEL, re-drawing its layer weights with each."""
    names, config = _names(schemes, SCHEMES, "initialisation scheme"), _config(**_drop_logging(opts))
    ranking = _isolated(trusted, config, model, lambda: rank_inits(model, names, data, config))
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
@click.option(
    "--batchnorm",
    type=click.Choice(["batch", "running"]),
    default="batch",
    show_default=True,
    help="BatchNorm statistics of your own models (--model): batch (as the NEAR authors) or running.",
)
@click.option(
    "--bn-batch", type=int, default=64, show_default=True, help="With --batchnorm batch: samples per forward."
)
@_trusted
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
    batchnorm: str,
    bn_batch: int,
    trusted: bool,
    fmt: str,
    output: str | None,
    **_: Any,
) -> None:
    """Estimate the best width of an MLP layer from the decay of its relative NEAR score."""
    config = ScoreConfig(seed=seed, repetitions=repetitions, batchnorm=batchnorm, bn_batch=bn_batch)  # type: ignore[arg-type]
    if user_models:
        pairs = [_model_width(m) for m in user_models]
        estimate = _isolated(
            trusted,
            config,
            pairs[0][0],
            lambda: estimate_from_models(pairs, data, hidden_layer, threshold, slope, config),
        )
    else:
        if inputs is None or outputs is None:
            raise ConfigError("give --inputs and --outputs of the MLP (or your own models with --model PATH:WIDTH)")
        sizes, before = _ints(widths, "--widths"), _ints(fixed, "--fixed")
        estimate = _isolated(
            trusted,
            config,
            "mlp.onnx",
            lambda: estimate_width(
                data, inputs, outputs, sizes, hidden_layer, before, activation, threshold, slope, init, config
            ),
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
@_trusted
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
    trusted: bool,
    fmt: str,
    output: str | None,
    **opts: Any,
) -> None:
    """Vet MODEL before it ships: collapsed, broken or saturated layers, and drops against a baseline.

    Exit code 0: passed; 1: a check failed; 2: the model could not be vetted.
    """
    checks = VetChecks(min_score, min_layer_ratio, max_saturation, max_drop)
    config = _config(**_drop_logging(opts))
    result = _isolated(trusted, config, model, lambda: vet(model, data, config, checks, baseline))
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
