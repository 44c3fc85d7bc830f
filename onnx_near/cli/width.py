"""``onnx-near width``: the best width of an MLP layer, from the decay of its relative NEAR score."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import click

from ..config import ScoreConfig, parse_size
from ..errors import ConfigError
from ..reinit import SCHEMES
from ..report import to_json
from ..variants import CANDIDATES
from ..width import WidthSearch, estimate_from_models, estimate_width, width_table
from .guard import guarded, isolated
from .options import (
    device_option,
    format_option,
    max_memory_option,
    output_options,
    threads_option,
    trusted_option,
)
from .output import emit


@click.command("width")
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
@device_option
@threads_option
@max_memory_option
@trusted_option
@format_option("table", "json")
@output_options
@guarded
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
    device: str,
    threads: int,
    max_memory: str | None,
    trusted: bool,
    fmt: str,
    output: str | None,
    **_: Any,
) -> None:
    """Estimate the best width of an MLP layer from the decay of its relative NEAR score."""
    config = ScoreConfig(
        seed=seed,
        repetitions=repetitions,
        batchnorm=batchnorm,  # type: ignore[arg-type]
        bn_batch=bn_batch,
        device=device,  # type: ignore[arg-type]
        threads=threads,
    )
    if max_memory is not None:
        config = replace(config, max_memory=parse_size(max_memory))
    if user_models:
        pairs = [_model_width(m) for m in user_models]
        estimate = isolated(
            trusted,
            config,
            pairs[0][0],
            lambda: estimate_from_models(pairs, data, hidden_layer, threshold, slope, config),
        )
    else:
        if inputs is None or outputs is None:
            raise ConfigError("give --inputs and --outputs of the MLP (or your own models with --model PATH:WIDTH)")
        sizes, before = _ints(widths, "--widths"), _ints(fixed, "--fixed")
        estimate = isolated(
            trusted,
            config,
            "mlp.onnx",
            lambda: estimate_width(
                data,
                WidthSearch(
                    inputs, outputs, tuple(sizes), hidden_layer, tuple(before), activation, threshold, slope, init
                ),
                config,
            ),
        )
    if plot:
        from ..plot import plot_width

        plot_width(estimate, plot)
    emit(to_json(estimate) if fmt == "json" else width_table(estimate), output)


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
