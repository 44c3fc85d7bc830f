"""What the trained search spaces (``benchmarks/digits`` and ``benchmarks/digits_hard``) share:
how a network is seeded, fingerprinted, exported untrained and checked, and trained.

Imported by both ``make_search_space.py`` scripts (from the benchmark environment: torch,
onnx, onnxruntime); each keeps its own data, grid and training recipe.
"""

from __future__ import annotations

import hashlib
import warnings
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

OPSET = 17
MAX_IR_VERSION = 10  # what onnxruntime-gpu reads (onnx writes a newer one by default)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def base_seed(name: str) -> int:
    """The seed a network of this name is built with (seed k of its training: base + k)."""
    return zlib.crc32(name.encode()) % 1_000_000


def digest(model: nn.Module) -> str:
    """SHA-256 of the weights: a rebuilt network must have the exported network's."""
    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.detach().numpy().tobytes())
    return h.hexdigest()


def export(model: nn.Module, path: Path, x_check: torch.Tensor, max_bytes: int | None = None) -> int:
    """``model``, untrained and in eval mode, written to ``path`` (TorchScript exporter, opset 17,
    no constant folding so every BatchNorm stays a node, dynamic batch, IR capped), checked by
    onnx and against torch with onnxruntime on ``x_check``; returns the file's size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x_check[:2],),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            do_constant_folding=False,
        )
    proto = onnx.load(str(path))
    if proto.ir_version > MAX_IR_VERSION:
        proto.ir_version = MAX_IR_VERSION
        onnx.save(proto, str(path))
    onnx.checker.check_model(proto, full_check=True)
    size = path.stat().st_size
    assert max_bytes is None or size <= max_bytes, f"{path.name}: {size} bytes"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for xb in (x_check, x_check[:3]):
        got = sess.run(None, {"input": xb.numpy()})[0]
        with torch.no_grad():
            want = model(xb).numpy()
        assert np.allclose(got, want, atol=1e-4, rtol=1e-4), f"{path.name}: onnxruntime != torch"
    return size


def train_eval(
    model: nn.Module, seed: int, data: tuple[torch.Tensor, ...], *, epochs: int, batch: int, lr: float
) -> float:
    """Train with Adam on shuffled mini-batches (the order seeded), then the test accuracy."""
    x_tr, y_tr, x_te, y_te = data
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    n = len(x_tr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch):
            idx = perm[i : i + batch]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x_tr[idx]), y_tr[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(x_te).argmax(1)
    return float((pred == y_te).double().mean())
