"""Where a command's result goes: stdout, or the ``-o`` file, checked first and written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click

from ..errors import ConfigError


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


def emit(text: str, output: str | None) -> None:
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
