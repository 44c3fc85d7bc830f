"""Results that survive a run: one JSON line per model, appended as each model finishes.

A results file (``onnx-near rank --results FILE.jsonl``) holds one :class:`ResultRow` per
line, in the order the models finished.  A row is keyed by the model's absolute path, the
SHA-256 of its file, the options that change its score (:func:`score_options`) and the
onnx-near version: ``--resume`` skips every model whose key already has a row, so a run that
was killed goes on where it stopped, and a model that was edited, or a change of seed, is
scored again.  A row whose error is an internal one (a bug, a worker that died) is tried
again on resume; the newer row then supersedes the older.  A line cut short by a kill is
dropped when the file is read, and cut off before the file is appended to.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import numpy as np

from .config import ScoreConfig
from .errors import InputDataError
from .inputs.data import DataArg

# ScoreConfig fields that change where or how fast a score is computed, not its value.
# Every other field (a field added later too) is part of a row's options.
NOT_SCORE_OPTIONS = frozenset({"device", "batch_size", "max_batch_bytes", "threads", "max_memory", "timeout", "feeds"})

INTERNAL_ERROR = "internal error: "  # how the message of an error that is not a NearError starts

RowKey = tuple[str, "str | None", str, str]  # path, sha256, options_key(options), onnx-near version


@dataclass(frozen=True)
class ResultRow:
    """One model's line of a results file.

    Attributes:
        model: the path as it was named or found (what tables show), or an in-memory
            model's name.
        path: its absolute path, or an in-memory model's name (with ``sha256``, what
            identifies the model).
        sha256: SHA-256 of the model file's bytes (an in-memory model's serialised bytes);
            None when the file could not be read.
        options: the options that change the score (:func:`score_options`).
        onnx_near: the version of onnx-near that scored it.
        score, score_std: the NEAR score (mean over repetitions) and its standard deviation;
            None when the model failed or a tap had NaN/Inf activations.
        params, macs: parameter count and multiply-accumulates per sample (None: unknown).
        error: None, or the one-sentence reason the model could not be scored.
        seconds: wall time spent on this model by its worker (the only field that varies
            from run to run).
    """

    model: str
    path: str
    sha256: str | None
    options: Mapping[str, Any]
    onnx_near: str
    score: float | None
    score_std: float | None
    params: int | None
    macs: int | None
    error: str | None
    seconds: float
    proxies: Mapping[str, float | None] = field(default_factory=dict)  # MeCo, SWAP; None: no value

    @property
    def key(self) -> RowKey:
        """What ``--resume`` compares: path, file hash, options and version."""
        return (self.path, self.sha256, options_key(self.options), self.onnx_near)

    @property
    def retry(self) -> bool:
        """True when ``--resume`` should score this model again (an internal error)."""
        return self.error is not None and self.error.startswith(INTERNAL_ERROR)

    def to_json(self) -> str:
        """The row as one line of JSON (no newline); NaN and Inf become null."""
        d = asdict(self)
        for k in ("score", "score_std"):
            if d[k] is not None and not math.isfinite(d[k]):
                d[k] = None
        d["proxies"] = {k: v if v is not None and math.isfinite(v) else None for k, v in self.proxies.items()}
        d["seconds"] = round(self.seconds, 6)
        return json.dumps(d, separators=(", ", ": "), allow_nan=False)

    @classmethod
    def from_json(cls, line: str, where: str = "results file") -> ResultRow:
        """Parse one line written by :meth:`to_json`."""
        try:
            d = json.loads(line)
            return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d or f.name != "proxies"})
        except (ValueError, KeyError, TypeError) as e:
            raise InputDataError(f"{where} is not a line of an onnx-near results file: {line[:80]!r}") from e


def options_key(options: Mapping[str, Any]) -> str:
    """Canonical JSON of ``options`` (sorted keys; tuples as lists), to compare two rows."""
    return json.dumps(options, sort_keys=True, separators=(",", ":"))


def score_options(config: ScoreConfig, data: DataArg) -> dict[str, Any]:
    """The options that change a model's score: every field of ``config`` except those in
    :data:`NOT_SCORE_OPTIONS`, and ``data`` as a fingerprint (None: synthetic inputs)."""
    out: dict[str, Any] = {}
    for f in fields(config):
        if f.name in NOT_SCORE_OPTIONS:
            continue
        v = getattr(config, f.name)
        out[f.name] = {k: list(x) if isinstance(x, tuple) else x for k, x in v.items()} if isinstance(v, Mapping) else v
    out["data"] = data_fingerprint(data)
    back: dict[str, Any] = json.loads(options_key(out))  # exactly what reading the line back gives
    return back


def data_fingerprint(data: DataArg) -> str | None:
    """``sha256:…`` of the data file's bytes or of the arrays (names, dtypes, shapes,
    values); None for synthetic inputs."""
    if data is None:
        return None
    if isinstance(data, (str, os.PathLike)):
        digest = file_sha256(data)
        return None if digest is None else f"sha256:{digest}"
    arrays = {"": data} if isinstance(data, np.ndarray) else dict(data)
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return f"sha256:{h.hexdigest()}"


def bytes_sha256(data: bytes) -> str:
    """SHA-256 of ``data`` (an in-memory model's serialised bytes), as :func:`file_sha256` gives it for a file."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str | None:
    """SHA-256 of a file's bytes, read 1 MiB at a time; None when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def read_rows(path: str | os.PathLike[str]) -> Iterator[ResultRow]:
    """The rows of a results file, in file order; a last line cut short by a kill is skipped."""
    p = Path(path)
    if not p.is_file():
        raise InputDataError(f"results file {str(p)!r} does not exist")
    with p.open(encoding="utf-8") as f:
        for k, line in enumerate(f):
            if not line.endswith("\n"):
                return  # the last line of an interrupted run: never complete
            if line.strip():
                yield ResultRow.from_json(line, f"{p.name}, line {k + 1}")


def latest_rows(rows: Iterable[ResultRow]) -> dict[RowKey, ResultRow]:
    """Per key, the last row (a retried model's newer row supersedes the older)."""
    out: dict[RowKey, ResultRow] = {}
    for r in rows:
        out.pop(r.key, None)  # keep file order: the superseding row takes the later place
        out[r.key] = r
    return out


def open_for_append(path: str | os.PathLike[str], resume: bool) -> IO[str]:
    """Open a results file for appending rows.

    Without ``resume`` the file must not exist yet (results are never overwritten); with it,
    a last line cut short by a kill is cut off first."""
    p = Path(path)
    if p.exists() and not resume:
        raise InputDataError(
            f"results file {str(p)!r} already exists: add --resume to go on with it, or name a new file"
        )
    if p.exists():
        _cut_partial_line(p)
    return p.open("a", encoding="utf-8")


def _cut_partial_line(p: Path) -> None:
    with p.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        pos = size
        while pos > 0:  # back to the last complete line's newline
            step = min(pos, 1 << 16)
            f.seek(pos - step)
            nl = f.read(step).rfind(b"\n")
            if nl >= 0:
                f.truncate(pos - step + nl + 1)
                return
            pos -= step
        f.truncate(0)
