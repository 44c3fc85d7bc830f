"""The ``onnx-near`` command line: a thin layer over the Python API.

Every command body is one call into a public function plus formatting.  Results go to
stdout (or ``--output``, written atomically); logs and errors to stderr.

Exit codes, the same for every command (:data:`EXIT_CODES`): 0 success, 1 ``vet`` failed a
check (and only that), 2 bad input (one sentence on stderr, no traceback), 3 an internal
error (one line naming the exception, asking to report it).

This module holds the group and the ``score`` command; each other command is wired in a
module of its own (:mod:`.layers`, :mod:`.rank`, :mod:`.choose` for ``activations`` and
``init``, :mod:`.width`, :mod:`.vet`), the options the commands share in :mod:`.options`,
how a command runs (logging, sandbox, errors and exit codes) in :mod:`.guard`, and where
its result goes in :mod:`.output`.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import click

from .. import __version__
from ..install import InstallError, onnxruntime_problem
from ..progress import Progress
from ..reinit import SCHEMES
from ..report import score_csv, score_table, to_json
from ..score import score
from .choose import activations_cmd, init_cmd
from .guard import EXIT_CODES, INTERNAL_ERROR, guarded, isolated
from .layers import layers_cmd
from .options import drop_logging, format_option, output_options, score_config, scoring_options, trusted_option
from .output import check_output, emit
from .rank import rank_cmd
from .vet import vet_cmd
from .width import width_cmd


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
@scoring_options(default_batchnorm="batch")
@click.option("--samples", type=int, default=None, help="Synthetic samples to use with --rows all.")
@click.option(
    "--reinit",
    type=click.Choice(SCHEMES),
    default=None,
    help="Re-draw the layer weights with this scheme before each repetition.",
)
@click.option("--timings", is_flag=True, help="Add the time spent per stage to the JSON report.")
@trusted_option
@format_option("table", "json", "csv")
@output_options
@guarded
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
    config = score_config(samples=samples, reinit=reinit, **drop_logging(opts))
    result = isolated(trusted, config, model, lambda: score(model, data=data, config=config, progress=progress))
    result = dataclasses.replace(result, show_timings=timings)
    emit({"table": score_table, "json": to_json, "csv": score_csv}[fmt](result), output)


for _command in (layers_cmd, rank_cmd, activations_cmd, init_cmd, width_cmd, vet_cmd):
    main.add_command(_command)

__all__ = ["EXIT_CODES", "INTERNAL_ERROR", "check_output", "main"]
