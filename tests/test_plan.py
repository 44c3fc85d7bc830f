"""The sampling plan (onnx_near/plan.py): the window of whole --bn-batch forward passes."""

from __future__ import annotations

import pytest

from onnx_near.errors import InputDataError
from onnx_near.plan import bn_window


def test_window_is_a_whole_number_of_batches() -> None:
    """The window rounds up to whole --bn-batch forward passes, within the data; too little data is refused."""
    assert bn_window(10, 64, "square", None) == 64
    assert bn_window(64, 64, "square", None) == 64
    assert bn_window(65, 64, "square", 512) == 128
    assert bn_window(10, 64, "square", 100) == 64
    assert bn_window(200, 64, "square", 150) == 128  # the data holds two whole batches
    assert bn_window(100, 64, "all", 100) == 64  # rows all: the whole batches of the data
    with pytest.raises(InputDataError, match="--bn-batch 64"):
        bn_window(10, 64, "square", 40)
