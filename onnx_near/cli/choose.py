"""``onnx-near activations`` and ``onnx-near init``: a design choice ranked by the scores of its candidates."""

from __future__ import annotations

from typing import Any

import click

from ..choose import choice_table, rank_activations, rank_inits
from ..reinit import SCHEMES
from ..report import to_json
from ..variants import CANDIDATES
from .guard import guarded, isolated
from .options import drop_logging, format_option, output_options, score_config, scoring_options, trusted_option
from .output import emit


@click.command("activations")
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
@scoring_options(default_repetitions=5, default_batchnorm="batch")
@trusted_option
@format_option("table", "json")
@output_options
@guarded
def activations_cmd(
    model: str, candidates: str, init: str, data: str | None, trusted: bool, fmt: str, output: str | None, **opts: Any
) -> None:
    """Rank activation functions for MODEL: every activation swapped for each candidate."""
    names, config = _names(candidates), score_config(**drop_logging(opts))
    ranking = isolated(trusted, config, model, lambda: rank_activations(model, names, data, config, init))
    emit(to_json(ranking) if fmt == "json" else choice_table(ranking), output)


@click.command("init")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--schemes",
    default=",".join(SCHEMES[:6]),
    show_default=True,
    help=f"Comma-separated schemes, from: {', '.join(SCHEMES)}.",
)
@scoring_options(default_repetitions=5, default_batchnorm="batch")
@trusted_option
@format_option("table", "json")
@output_options
@guarded
def init_cmd(
    model: str, schemes: str, data: str | None, trusted: bool, fmt: str, output: str | None, **opts: Any
) -> None:
    """Rank weight-initialisation schemes for MODEL, re-drawing its layer weights with each."""
    names, config = _names(schemes), score_config(**drop_logging(opts))
    ranking = isolated(trusted, config, model, lambda: rank_inits(model, names, data, config))
    emit(to_json(ranking) if fmt == "json" else choice_table(ranking), output)


def _names(text: str) -> list[str]:
    """The names of a comma-separated option; the API checks each (one place for the lists)."""
    return [n.strip() for n in text.split(",") if n.strip()]
