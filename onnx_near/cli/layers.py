"""``onnx-near layers``: what would be tapped in a model, without running it."""

from __future__ import annotations

from typing import Any

import click

from ..config import ScoreConfig, parse_axis, parse_batch_axis, parse_input_value
from ..report import layers_csv, layers_table, to_json
from ..score import describe
from .guard import guarded, isolated
from .options import axis_option, format_option, input_options, output_options, strict_option, trusted_option
from .output import emit


@click.command("layers")
@click.argument("model", type=click.Path(dir_okay=False))
@strict_option
@axis_option
@input_options
@trusted_option
@format_option("table", "json", "csv")
@output_options
@guarded
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
    report = isolated(trusted, config, model, lambda: describe(model, config))
    emit({"table": layers_table, "json": to_json, "csv": layers_csv}[fmt](report), output)
