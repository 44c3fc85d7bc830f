"""Input data: the user's arrays, checked against the model, or synthetic samples (SPEC §5).

User data comes as a ``.npy`` file (models with one input), a ``.npz`` file keyed by input
name, an array, or a dict of arrays.  Without data, samples are synthesised from the
declared inputs: standard normal floats, token ids drawn uniformly below the size of the
embedding table that reads them.  All randomness comes from the caller's generator.

Each input has a batch axis, the axis that holds its samples (:func:`batch_axes` says how
it is found), or none: an input without one (a recurrent state, a sample rate, a flag) is
fed unchanged with every batch — the data's array whole, a ``--input NAME=VALUE``, or zeros.
Static dimensions are never changed.

The stage is in five modules, whose public names are all importable from here:

* :mod:`.specs` — one :class:`InputSpec` per model input (:func:`input_specs`), the
  companions of token ids, a decoder's past, the inputs the data may leave out;
* :mod:`.batch` — each input's batch axis (:func:`batch_axes`);
* :mod:`.data` — the user's ``.npy``/``.npz`` files read (:func:`read_data`) and checked
  against the specs (:func:`check_data`);
* :mod:`.synthetic` — synthetic samples (:func:`synthesise`);
* :mod:`.source` — where a run's samples come from, window by window (:class:`Source`).
"""

from __future__ import annotations

from .batch import batch_axes
from .data import DataArg, check_data, read_data
from .source import Source, Window
from .specs import (
    COMPANIONS,
    InputSpec,
    companion_kind,
    companions,
    elem_name,
    fill_companion,
    input_specs,
    is_past,
    np_dtype,
    optional_inputs,
)
from .synthetic import image_layout, synthesise

__all__ = [
    "COMPANIONS",
    "DataArg",
    "InputSpec",
    "Source",
    "Window",
    "batch_axes",
    "check_data",
    "companion_kind",
    "companions",
    "elem_name",
    "fill_companion",
    "image_layout",
    "input_specs",
    "is_past",
    "np_dtype",
    "optional_inputs",
    "read_data",
    "synthesise",
]
