"""``onnx-near rank``: many models scored and ranked, on this machine or a Ray cluster."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from ..config import parse_proxies
from ..engines import LocalEngine, RayEngine, import_ray
from ..errors import ConfigError
from ..plot import plot_rank
from ..rank import rank_csv, rank_from_results, rank_models, rank_table, read_accuracies
from ..report import to_json
from ..sandbox import score as sandbox_score
from .guard import guarded
from .options import drop_logging, format_option, output_options, score_config, scoring_options, trusted_option
from .output import emit


@click.command("rank")
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
@scoring_options(default_batchnorm="batch")
@trusted_option
@format_option("table", "json", "csv")
@output_options
@guarded
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
        config = score_config(**drop_logging(opts))
        kwargs: dict[str, Any] = {"engine": run_engine, "results": results, "resume": resume, "proxies": shown}
        if not trusted:  # each model in a limited child (on Ray, forked by its worker): one bad model is one error row
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
    emit({"table": rank_table, "json": to_json, "csv": rank_csv}[fmt](result), output)


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
