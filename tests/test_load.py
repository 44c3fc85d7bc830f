"""Loading a model (onnx_near/load.py): external data read from the model's folder only."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest
from graphs import mlp, save

import onnx_near
from onnx_near.errors import ModelLoadError


def test_external_data_is_read_from_the_model_folder(tmp_path: Path) -> None:
    """Weights in an external file load by path; nothing is written beside the model or in the cwd."""
    folder = tmp_path / "m"
    folder.mkdir()
    onnx.save(mlp(), str(folder / "ext.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
    before = sorted(os.listdir(folder))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        r = onnx_near.score(folder / "ext.onnx")
    finally:
        os.chdir(old)
    assert sorted(os.listdir(folder)) == before and os.listdir(cwd) == []
    inline = onnx_near.score(save(mlp(), tmp_path / "inline.onnx"))
    assert r.score == inline.score


def test_external_data_outside_the_folder_is_refused(tmp_path: Path) -> None:
    """An external location that escapes the model's folder is refused."""
    m = mlp()
    onnx.save(m, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
    m2 = onnx.load(str(tmp_path / "ext.onnx"), load_external_data=False)
    for t in m2.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../w.bin"
    (tmp_path / "sub").mkdir()
    onnx.save(m2, str(tmp_path / "sub" / "escape.onnx"))
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        onnx_near.score(tmp_path / "sub" / "escape.onnx")
