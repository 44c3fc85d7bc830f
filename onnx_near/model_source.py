"""What a model is given as: the path of an ``.onnx`` file, an :class:`onnx.ModelProto`, or its
serialised bytes — the last two bare, or as an :class:`InMemoryModel` with the folder its
external data lies in and a name.

Every entry point takes a :data:`ModelSource`; :func:`onnx_near.load.load_model` reads each
form with the same checks.  The helpers here name a model before it is read
(:func:`display_name`, :func:`report_name`) and tell the forms apart (:func:`file_path`,
:func:`in_memory`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Union

import onnx

from .errors import ModelLoadError

IN_MEMORY = "<in-memory model>"  # what reports and messages call an in-memory model given no name


@dataclass(frozen=True, eq=False)
class InMemoryModel:
    """A model held in memory: an :class:`onnx.ModelProto` or its serialised bytes.

    Attributes:
        model: the model; never modified (it is read from a serialised copy).
        base_dir: the folder its external data locations are relative to, as a file's are to
            the file's folder; None: the model must keep every weight inline (a model that
            refers to external data without one is refused).
        name: what reports and messages call it (None: ``<in-memory model>``).
    """

    model: onnx.ModelProto | bytes
    base_dir: str | os.PathLike[str] | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        """What reports and messages call the model."""
        return self.name or IN_MEMORY

    def as_bytes(self) -> InMemoryModel:
        """The same model with its ``model`` serialised: what a child process is sent (bytes
        pickle as they are; a message pickles through its serialisation each time)."""
        if isinstance(self.model, bytes):
            return self
        try:
            data = self.model.SerializeToString()
        except ValueError as e:  # over the 2 GiB limit: load_model says so
            raise ModelLoadError(_too_large(self.label)) from e
        return InMemoryModel(data, self.base_dir, self.name)


# What every entry point takes as a model: a file's path, a ModelProto, its bytes, or either
# of the last two with a base folder and a name (an InMemoryModel).
ModelSource = Union[str, os.PathLike[str], onnx.ModelProto, bytes, InMemoryModel]


def in_memory(model: ModelSource) -> InMemoryModel | None:
    """``model`` as an :class:`InMemoryModel` (a bare ModelProto or bytes: no base folder, no
    name); None for a path."""
    if isinstance(model, InMemoryModel):
        return model
    if isinstance(model, (onnx.ModelProto, bytes)):
        return InMemoryModel(model)
    return None


def file_path(model: ModelSource) -> str | os.PathLike[str] | None:
    """``model``'s path when it is given as a file; None when it is held in memory."""
    return None if isinstance(model, (onnx.ModelProto, bytes, InMemoryModel)) else model


def display_name(model: ModelSource) -> str:
    """What messages call ``model`` before it is read: a file's name, an in-memory model's."""
    path = file_path(model)
    return os.path.basename(os.fspath(path)) if path is not None else _held(model).label


def report_name(model: ModelSource) -> str:
    """What a report calls ``model``: a path as it was given, an in-memory model's name."""
    path = file_path(model)
    return str(path) if path is not None else _held(model).label


def _held(model: ModelSource) -> InMemoryModel:
    held = in_memory(model)
    assert held is not None
    return held


def _too_large(name: str) -> str:
    return (
        f"{name!r} is larger than the 2 GiB one protobuf message can hold; save its weights as "
        "external data (onnx.save_model(..., save_as_external_data=True))"
    )
