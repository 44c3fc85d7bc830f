"""How every command runs: its logging, its model in the sandbox (or not), and each error
turned into one sentence on stderr and an exit code (:data:`EXIT_CODES`)."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..config import ScoreConfig
from ..errors import NearError
from ..sandbox import Limits
from ..sandbox import run as run_sandboxed
from .output import check_output

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

EXIT_CODES = {0: "success", 1: "vet failed a check", 2: "bad input: could not do it", 3: "internal error"}
INTERNAL_ERROR = 3


def guarded(fn: F) -> F:
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


def isolated(trusted: bool, config: ScoreConfig, model: str, call: Callable[[], T]) -> T:
    """``call()`` in a sandboxed child under the config's limits (``--max-memory``,
    ``--timeout``; a crash is one sentence), or in this process with ``--trusted``."""
    if trusted:
        return call()
    return run_sandboxed(call, Limits.of(config), repr(Path(model).name))
