"""Stage 1, load: read an ONNX file into memory, checked, without touching its weights.

The graph is parsed with ``load_external_data=False``: weights stored in external data
files stay on disk (onnxruntime reads them later from the model's own folder), so a large
model is never held in memory twice and nothing is written anywhere.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import ModelLoadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A parsed model and where it came from.

    ``proto`` holds the graph and the inline weights; external weights are not loaded.
    """

    proto: onnx.ModelProto
    path: Path

    @property
    def base_dir(self) -> Path:
        """Folder that external data locations are relative to."""
        return self.path.parent


def load_model(path: str | os.PathLike[str]) -> LoadedModel:
    """Read and sanity-check the ONNX model at ``path``.

    Raises :class:`ModelLoadError` with one sentence when the file is missing, empty, not
    an ONNX model, truncated, or refers to external data that is missing or lies outside
    the model's folder.
    """
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model file {str(p)!r} does not exist")
    if not p.is_file():
        raise ModelLoadError(f"model path {str(p)!r} is not a file")
    if p.stat().st_size == 0:
        raise ModelLoadError(f"model file {str(p)!r} is empty, expected an ONNX model")
    try:
        proto = onnx.load_model(str(p), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(
            f"{str(p)!r} is not a readable ONNX model (the protobuf could not be parsed: "
            "the file is truncated or not ONNX)"
        ) from e
    except OSError as e:
        raise ModelLoadError(f"cannot read model file {str(p)!r}: {e.strerror or e}") from e
    if proto.ir_version <= 0 or not proto.HasField("graph") or len(proto.graph.node) == 0:
        raise ModelLoadError(f"{str(p)!r} is not an ONNX model: it parsed, but holds no IR version or no graph nodes")
    _check_external_data(proto, p)
    return LoadedModel(proto=proto, path=p.resolve())


def _check_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Every external data location must be a file inside the model's folder."""
    base = path.resolve().parent
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = (base / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(base):
            raise ModelLoadError(
                f"initializer {tensor.name!r} keeps its data at {location!r}, outside the model's "
                f"folder {str(base)!r}; external data must lie beside the model"
            )
        if not target.is_file():
            raise ModelLoadError(
                f"initializer {tensor.name!r} keeps its data in {location!r}, which is missing from {str(base)!r}"
            )
