"""``onnx-near vet``: deployment checks on a model, with an exit code of 1 when one fails."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..report import to_json
from ..vet import VetChecks, vet, vet_table
from .guard import guarded, isolated
from .options import drop_logging, format_option, output_options, score_config, scoring_options, trusted_option
from .output import emit


@click.command("vet")
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
@click.option(
    "--max-divergence",
    type=float,
    default=0.5,
    show_default=True,
    help="Against a baseline model: fail a tap whose values differ from the baseline's (relative RMS "
    "difference on the same inputs) by more than this beyond its input's difference.",
)
@click.option(
    "--min-kept",
    type=float,
    default=0.1,
    show_default=True,
    help="A tap of low rank ratio fails as collapsed only when it kept less than this share of its input's erank.",
)
@click.option(
    "--max-gain",
    type=float,
    default=100.0,
    show_default=True,
    help="Fail a tap whose root-mean-square value is more than this many times its input's.",
)
@scoring_options(default_batchnorm=None)  # the model as deployed: BatchNorm on its running statistics
@trusted_option
@format_option("table", "json")
@output_options
@guarded
def vet_cmd(
    model: str,
    min_score: float | None,
    min_layer_ratio: float,
    max_saturation: float,
    baseline: str | None,
    max_drop: float,
    max_divergence: float,
    min_kept: float,
    max_gain: float,
    data: str | None,
    trusted: bool,
    fmt: str,
    output: str | None,
    **opts: Any,
) -> None:
    """Vet MODEL before it ships: collapsed, broken, exploded or saturated layers; against a baseline, drops and diverged layers.

    Exit code 0: passed; 1: a check failed; 2: the model could not be vetted.
    """
    checks = VetChecks(
        min_score=min_score,
        min_layer_ratio=min_layer_ratio,
        max_saturation=max_saturation,
        max_drop=max_drop,
        max_divergence=max_divergence,
        min_kept=min_kept,
        max_gain=max_gain,
    )
    config = score_config(**drop_logging(opts))
    result = isolated(trusted, config, model, lambda: vet(model, data, config, checks, baseline))
    emit(to_json(result) if fmt == "json" else vet_table(result), output)
    sys.exit(result.exit_code)
