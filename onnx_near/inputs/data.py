"""The user's data: ``.npy``/``.npz`` files read safely, and their arrays checked against the model's inputs.

User data comes as a ``.npy`` file (models with one input), a ``.npz`` file keyed by input
name, an array, or a dict of arrays (:data:`DataArg`).  :func:`read_data` keys the arrays by
input name; :func:`check_data` checks them against the inputs' specs: as many samples along
every batch axis, and dtypes and values the model takes.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import IO, Mapping, Sequence, Union

import numpy as np

from ..budget import array_bytes, check_data_file, gib
from ..errors import InputDataError
from .specs import InputSpec, name_listing

DataArg = Union[None, str, "os.PathLike[str]", np.ndarray, Mapping[str, np.ndarray]]


def read_data(
    data: DataArg, input_names: list[str], optional: Sequence[str] = (), limit: int | None = None
) -> dict[str, np.ndarray] | None:
    """Read the user's data into arrays keyed by input name (no checks against shapes yet).

    The inputs in ``optional`` (companions of token ids, inputs without a batch axis or
    given a value: :func:`optional_inputs`) may be missing.  The samples are counted by
    :func:`check_data`, along each input's batch axis.  A file's arrays are checked against
    ``limit`` bytes (``--max-memory``) before they are read (:func:`_read_file`)."""
    if data is None:
        return None
    if isinstance(data, np.ndarray):
        arrays: dict[str, np.ndarray] = {"": data}
    elif isinstance(data, Mapping):
        arrays = {str(k): np.asarray(v) for k, v in data.items()}
    else:
        arrays = _read_file(Path(data), limit)
    if "" in arrays:
        required = [n for n in input_names if n not in optional]
        if len(input_names) != 1 and len(required) == 1:
            arrays = {required[0]: arrays[""]}
        elif len(input_names) != 1:
            raise InputDataError(
                f"the data is a single array, but the model takes {len(required)} inputs from the data "
                f"({name_listing(required)}); give an .npz file keyed by input name, or set the others with --input NAME=VALUE"
            )
        else:
            arrays = {input_names[0]: arrays[""]}
    for k in arrays:
        if k not in input_names:
            raise InputDataError(
                f"the data holds an array named {k!r}, but the model's inputs are {name_listing(input_names)}"
            )
    for k in input_names:
        if k not in arrays and k not in optional:
            raise InputDataError(f"the data has no array for input {k!r}; it holds {name_listing(sorted(arrays))}")
    return arrays


def _read_file(path: Path, limit: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of a ``.npy`` file (key ``""``) or an ``.npz`` file, each array's header
    read and its declared size checked before any of its data is.

    A ``.npy`` file, and every array an ``.npz`` stores uncompressed (``np.savez``), is
    memory-mapped: read from disk batch by batch, never held whole.  The arrays an ``.npz``
    compresses (``np.savez_compressed``) are inflated into memory, so together they must fit
    within ``limit`` bytes (:func:`~onnx_near.budget.check_data_file`); an archive is never
    inflated beyond it.  A header that declares more data than the file holds is refused as
    truncated, an array of Python objects as needing pickle."""
    if not path.is_file():
        what = "is not a regular file (a directory, FIFO or device)" if path.exists() else "does not exist"
        raise InputDataError(f"data file {str(path)!r} {what}")
    where = f"data file {str(path)!r}"
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            return _read_npz(path, limit)
        if magic == b"\x93NUMPY":
            return {"": _read_npy(path, where)}
        raise InputDataError(f"{where} is not a readable .npy or .npz file")
    except MemoryError as e:
        raise InputDataError(f"{where} needs more memory to be read than this process may use") from e
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, RuntimeError) as e:
        raise InputDataError(f"{where} is not a readable .npy or .npz file") from e


def _read_npy(path: Path, where: str) -> np.ndarray:
    """A ``.npy`` file, memory-mapped, once its header is found to fit the file."""
    with open(path, "rb") as f:
        shape, _, dtype = _npy_header(f, where)
        start = f.tell()
    _check_fits(where, shape, dtype, path.stat().st_size - start)
    return np.load(path, allow_pickle=False, mmap_mode="r")  # type: ignore[no-any-return]


def _read_npz(path: Path, limit: int | None) -> dict[str, np.ndarray]:
    """An ``.npz`` file's arrays: the uncompressed ones memory-mapped where they lie in the
    archive, the compressed ones inflated once all their declared sizes fit ``limit``."""
    arrays: dict[str, np.ndarray] = {}
    inflate: list[tuple[zipfile.ZipInfo, str]] = []
    sizes: dict[str, float] = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if info.is_dir():
                continue
            key = info.filename.removesuffix(".npy")
            where = f"array {key!r} of data file {str(path)!r}"
            if info.flag_bits & 0x1:
                raise InputDataError(f"{where} is encrypted; give the data unencrypted")
            if info.compress_type == zipfile.ZIP_STORED:
                arrays[key] = _mapped_member(path, info, where)
                continue
            with z.open(info) as f:
                shape, _, dtype = _npy_header(f, where)
                head = f.tell()
            _check_fits(where, shape, dtype, info.file_size - head)
            sizes[key] = array_bytes(shape, dtype)
            inflate.append((info, key))
        if limit is not None and sizes:
            check_data_file(str(path), sizes, limit)
        for info, key in inflate:
            with z.open(info) as f:
                arrays[key] = np.lib.format.read_array(f, allow_pickle=False)
    return arrays


def _mapped_member(path: Path, info: zipfile.ZipInfo, where: str) -> np.ndarray:
    """An array an ``.npz`` stores uncompressed, memory-mapped where it lies in the archive."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the member's local file header; its name and extra field follow
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise InputDataError(f"{where} is not where the archive's directory says it is; the file is damaged")
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_length + extra_length)
        begin = f.tell()
        shape, fortran, dtype = _npy_header(f, where)
        start = f.tell()
    _check_fits(where, shape, dtype, info.file_size - (start - begin))
    if array_bytes(shape, dtype) == 0:
        return np.empty(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=start, shape=shape, order="F" if fortran else "C")


def _npy_header(f: IO[bytes], where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """The shape, Fortran order and dtype a ``.npy`` header declares (numpy's own reader,
    which bounds the header's length); the file is left at the start of the data."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise InputDataError(
                f"{where} is a .npy array of format {version[0]}.{version[1]}; onnx-near reads 1.0 and 2.0"
            )
    except (ValueError, EOFError) as e:
        raise InputDataError(f"{where} is not a readable .npy array") from e
    if dtype.hasobject:
        raise InputDataError(f"{where} holds Python objects, which cannot be read without pickle")
    if any(d < 0 for d in shape):
        raise InputDataError(f"{where} declares a negative dimension {shape}")
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _check_fits(where: str, shape: tuple[int, ...], dtype: np.dtype, available: int) -> None:
    """Refuse an array whose header declares more data than the file holds after it."""
    need = array_bytes(shape, dtype)
    if need > available:
        dims = "×".join(str(d) for d in shape) or "a scalar"
        raise InputDataError(
            f"{where} is truncated: its header declares {dims} {dtype} ({gib(need)}), but the file holds "
            f"{max(available, 0)} bytes of data after it"
        )


def check_data(arrays: Mapping[str, np.ndarray], specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """Check the user's data: as many samples in every input with a batch axis (counted
    along it; inputs without one are taken whole), and dtypes and values the model takes."""
    counts = [
        (s.name, s.batch_axis, int(arrays[s.name].shape[s.batch_axis]))
        for s in specs
        if s.name in arrays and s.batch_axis is not None
    ]
    if len({c for _, _, c in counts}) > 1:
        odd = next(n for n, _, c in counts if c != counts[0][2])
        listing = ", ".join(f"{n!r} {c} (axis {k})" for n, k, c in counts)
        raise InputDataError(
            f"the data's arrays hold different numbers of samples: {listing}; if {odd!r} is not a batch, say "
            f"--batch-axis {odd}=none (its array is then fed whole), else name the axis of its samples with --batch-axis {odd}=K"
        )
    empty = next(((n, k) for n, k, c in counts if c == 0), None)
    if empty is not None:
        raise InputDataError(f"the data holds no samples (input {empty[0]!r} is empty along its batch axis {empty[1]})")
    out: dict[str, np.ndarray] = {}
    for s in specs:
        if s.name not in arrays:  # a companion filled by convention
            continue
        a = arrays[s.name]
        kind, want = a.dtype.kind, s.dtype.kind
        if kind not in "biuf":
            raise InputDataError(f"input {s.name!r} expects {s.dtype} values, the data holds {a.dtype}")
        if want in "iu" and kind == "f":
            raise InputDataError(
                f"input {s.name!r} expects integer ({s.dtype}) values such as token ids, the data holds {a.dtype}"
            )
        if want == "b" and kind != "b":
            raise InputDataError(f"input {s.name!r} expects bool values, the data holds {a.dtype}")
        if kind == "f" and not _all_finite(a):
            raise InputDataError(f"input {s.name!r} holds NaN or Inf values; give finite data")
        if want in "iu" and kind in "iu":
            info = np.iinfo(s.dtype)
            if a.size and (a.min() < info.min or a.max() > info.max):
                raise InputDataError(f"input {s.name!r} holds values outside the range of {s.dtype}")
            if s.vocab is not None and a.size and (a.min() < 0 or a.max() >= s.vocab):
                raise InputDataError(
                    f"input {s.name!r} holds ids outside [0, {s.vocab}), the size of the embedding table that reads it"
                )
        out[s.name] = a
    return out


def _all_finite(a: np.ndarray, chunk: int = 1 << 22) -> bool:
    """True when ``a`` holds no NaN/Inf, checked in chunks (``a`` may be memory-mapped)."""
    flat = a.reshape(-1)
    return all(bool(np.isfinite(flat[i : i + chunk]).all()) for i in range(0, flat.size, chunk))
