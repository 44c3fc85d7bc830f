"""A model over 2 GB with external data: scored without a second copy in memory and
without writing anything beside it.  The model is generated in a temporary folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROWS, DIM = 8_500_000, 64  # 8.5 M × 64 float32 = 2.18 GB embedding table
TABLE_BYTES = ROWS * DIM * 4


def _write_big_model(folder: Path) -> Path:
    """ids → Gather(2.2 GB table) → MatMul → Add(bias) → Relu, the table in 'table.bin'."""
    block = np.random.default_rng(0).standard_normal((4096, DIM)).astype(np.float32).tobytes()
    with open(folder / "table.bin", "wb") as f:
        written = 0
        while written < TABLE_BYTES:
            chunk = block[: TABLE_BYTES - written]
            f.write(chunk)
            written += len(chunk)
    table = TensorProto(name="table", data_type=TensorProto.FLOAT, dims=[ROWS, DIM])
    table.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "table.bin"), ("offset", "0"), ("length", str(TABLE_BYTES))):
        table.external_data.add(key=k, value=v)
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((DIM, 32)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["emb"]),
            helper.make_node("MatMul", ["emb", "w"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["z"]),
            helper.make_node("Relu", ["z"], ["y"]),
        ],
        "big",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 32])],
        [table, w, b],
    )
    path = folder / "big.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    return path


SCRIPT = """
import json, resource, sys
import onnx_near
r = onnx_near.score(sys.argv[1], seed=0)
print(json.dumps({"score": r.score, "taps": [l.op for l in r.layers],
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def test_model_over_2gb_scores_with_one_copy_in_memory(tmp_path: Path) -> None:
    """The 2.2 GB table is read by onnxruntime from the model's folder, once; the folder is left as it was."""
    folder = tmp_path / "model"
    folder.mkdir()
    path = _write_big_model(folder)
    assert path.stat().st_size < 1_000_000 and (folder / "table.bin").stat().st_size > 2**31
    before = sorted(os.listdir(folder))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path)], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["taps"] == ["MatMul+Add", "Relu"] and report["score"] > 0
    peak = report["maxrss_kb"] * 1024
    assert peak < 1.5 * TABLE_BYTES, (
        f"peak resident memory {peak / 2**30:.2f} GiB for a {TABLE_BYTES / 2**30:.2f} GiB model"
    )
    assert sorted(os.listdir(folder)) == before and os.listdir(cwd) == []
