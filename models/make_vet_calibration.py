"""Calibration corpus for `onnx-near vet`: small trained models and faulty copies of them.

Run from the repository root with the benchmark environment (torch, scikit-learn)::

    /work/bench/bin/python models/make_vet_calibration.py

It trains four small classifiers on scikit-learn's digits (1797 8×8 images, shipped with
scikit-learn: nothing is downloaded), upsampled bilinearly to 16×16 and standardised with
the training set's mean and standard deviation; split 80/20, stratified, seeded:

* ``cnn_bn``      Conv-BN-ReLU-MaxPool ×2, Linear-BatchNorm1d-ReLU, Linear; exported with
                  ``training=PRESERVE`` so every BatchNormalization stays in the graph (as an
                  exporter that does not fold them keeps it);
* ``cnn_se``      a MobileNetV3-like net: stem Conv-BN-HardSwish, depthwise-separable blocks
                  with squeeze-excite (global pool → 1×1 conv → ReLU → 1×1 conv →
                  HardSigmoid → Mul), 1×1 head conv, global pool, Linear; BatchNorm folded
                  into the convolutions by the exporter (its default);
* ``mlp``         Flatten, Linear(256, 48) → Tanh → Linear(48, 48) → ReLU → Linear(48, 48) →
                  ReLU → Linear(48, 10);
* ``transformer`` 4×4 patches (a strided Conv) as 16 tokens of width 32 plus a learned position
                  embedding, two pre-LN encoder blocks (4-head self-attention written out with
                  separate q/k/v/out Linear layers, an MLP with exact GELU), LayerNorm, mean
                  over tokens, Linear.

Each is exported with ``torch.onnx.export(dynamo=False, opset_version=17)``, IR version capped
at 10 (``common.cap_ir_version``), and checked against torch on the held-out set with
onnxruntime.  Faulty copies are then made by editing the healthy files' initializers (onnx
and numpy only; ``FAULTS`` below), each checked to do what it says on the held-out data:

* ``zeroed_weight``  a hidden layer's weight set to 0 (cnn_bn conv2, transformer block 1 v);
* ``dead_relu``      the bias of the layer before a ReLU set to -1000 (cnn_bn bn1's beta, mlp fc3);
* ``nan_weight`` / ``inf_weight``  one NaN (cnn_se's first depthwise conv) / +Inf (transformer
                     block 0 MLP fc1) in a weight;
* ``saturated_tanh`` the weight feeding the Tanh scaled by 100 (mlp fc1);
* ``quant_collapse`` per-tensor symmetric int8 fake-quantisation with the scale stored as
                     max|w| instead of max|w|/127 (cnn_se's second depthwise conv, folded with
                     its BatchNorm: 28 of its 48 channels round to 0; mlp fc1: 99 % zeros);
* ``transposed``     a square weight stored transposed (mlp fc2, transformer block 0 attention out);
* ``bn_zero_var``    BatchNorm running variance 0 with epsilon 1e-5 kept (cnn_bn bn2).

Writes into ``models/vet_calibration/``:

* ``NAME.onnx`` for the four healthy models and ``NAME__FAULT.onnx`` for each fault;
* ``digits.npy``   the first 256 held-out images, (256, 1, 16, 16) float32, standardised as the
                   models were trained (the models' input layout);
* ``manifest.json`` per file: ``healthy`` (with the held-out accuracy) or the fault kind, the
                   faulty layer (``node``: the ONNX node whose initializer was edited; ``tap``
                   and ``tensor``: the tap onnx-near makes of it, as ``onnx-near layers``
                   names it — for a MatMul, the bias Add after it), the edit (``description``)
                   and what it does to the predictions on the digits (``effect``).

Deterministic (one thread, seeded, deterministic algorithms: the same bytes on every run
here); about 45 s on one core.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from common import cap_ir_version
from onnx import numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

OUT = Path(__file__).resolve().parent / "vet_calibration"
SEED = 0
OPSET = 17
N_DATA = 256  # held-out samples written to digits.npy
INPUT, OUTPUT = "input", "logits"


# --------------------------------------------------------------------------- data


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits as (N, 1, 16, 16) float32, standardised with the training split's statistics."""
    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).numpy()
    y = digits.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=SEED, stratify=y)
    mean, std = float(xtr.mean()), float(xtr.std())
    return ((xtr - mean) / std).astype(np.float32), ytr, ((xte - mean) / std).astype(np.float32), yte


# --------------------------------------------------------------------------- models


class CnnBn(nn.Module):
    """Conv-BN-ReLU-MaxPool ×2 → Linear-BN1d-ReLU → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.bn3 = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.fc1(x.flatten(1))))
        return self.fc2(x)


class SqueezeExcite(nn.Module):
    """MobileNetV3's SE block: global average pool → 1×1 conv → ReLU → 1×1 conv → HardSigmoid → scale."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


def conv_bn(
    cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: nn.Module | None = None
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act)
    return nn.Sequential(*layers)


class CnnSe(nn.Module):
    """A MobileNetV3-like net: depthwise-separable blocks with squeeze-excite."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(1, 16, 3, act=nn.Hardswish())
        # block 1: depthwise (stride 2) → SE → linear pointwise projection
        self.dw1 = conv_bn(16, 16, 3, stride=2, groups=16, act=nn.ReLU())
        self.se1 = SqueezeExcite(16, 8)
        self.pw1 = conv_bn(16, 24, 1)
        # block 2: pointwise expansion → depthwise (stride 2) → SE → linear pointwise projection
        self.expand2 = conv_bn(24, 48, 1, act=nn.Hardswish())
        self.dw2 = conv_bn(48, 48, 3, stride=2, groups=48, act=nn.Hardswish())
        self.se2 = SqueezeExcite(48, 16)
        self.pw2 = conv_bn(48, 32, 1)
        self.head = nn.Conv2d(32, 64, 1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.pw1(self.se1(self.dw1(x)))
        x = self.pw2(self.se2(self.dw2(self.expand2(x))))
        x = F.hardswish(self.head(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Mlp(nn.Module):
    """Linear(256, 48) → Tanh → Linear(48, 48) → ReLU → Linear(48, 48) → ReLU → Linear(48, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(256, 48)
        self.fc2 = nn.Linear(48, 48)
        self.fc3 = nn.Linear(48, 48)
        self.fc4 = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        x = F.relu(self.fc3(x))
        return self.fc4(x)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        h, dh = self.heads, d // self.heads

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.reshape(n, t, h, dh).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
        return self.out((a @ v).transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    """A pre-LN encoder block: x + attn(LN(x)), then x + MLP(LN(x)) with exact GELU."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class Transformer(nn.Module):
    """4×4 patches → 16 tokens of width 32 (+ learned positions) → 2 blocks → LN → mean → Linear."""

    def __init__(self, dim: int = 32, heads: int = 4, hidden: int = 64, depth: int = 2) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 4, stride=4)
        self.pos = nn.Parameter(torch.zeros(1, 16, dim))
        self.blocks = nn.ModuleList([Block(dim, heads, hidden) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 10)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.fc(self.ln(x).mean(1))


@dataclass(frozen=True)
class Recipe:
    name: str
    make: Callable[[], nn.Module]
    epochs: int
    lr: float
    keep_batchnorm: bool  # export with training=PRESERVE: BatchNormalization nodes stay


RECIPES = [
    Recipe("cnn_bn", CnnBn, 15, 3e-3, keep_batchnorm=True),
    Recipe("cnn_se", CnnSe, 25, 3e-3, keep_batchnorm=False),
    Recipe("mlp", Mlp, 30, 1e-3, keep_batchnorm=False),
    Recipe("transformer", Transformer, 40, 2e-3, keep_batchnorm=False),
]


def train(recipe: Recipe, data: tuple[np.ndarray, ...]) -> tuple[nn.Module, float]:
    """Adam with cosine decay, batch 32; returns the eval-mode model and its held-out accuracy."""
    xtr, ytr, xte, yte = (torch.from_numpy(a) for a in data)
    torch.manual_seed(SEED)
    model = recipe.make()
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    steps = recipe.epochs * math.ceil(len(xtr) / 32)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(recipe.epochs):
        for idx in torch.randperm(len(xtr), generator=gen).split(32):
            opt.zero_grad()
            F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(xte).argmax(1) == yte).float().mean())
    return model, acc


def export(model: nn.Module, recipe: Recipe, x: np.ndarray, path: Path) -> onnx.ModelProto:
    """TorchScript export at opset 17 (batch axis dynamic), IR capped, checked against torch."""
    mode = torch.onnx.TrainingMode.PRESERVE if recipe.keep_batchnorm else torch.onnx.TrainingMode.EVAL
    buf = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.from_numpy(x[:2]),),
        buf,
        dynamo=False,
        opset_version=OPSET,
        training=mode,
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_axes={INPUT: {0: "N"}, OUTPUT: {0: "N"}},
    )
    path.write_bytes(buf.getvalue())
    proto = cap_ir_version(path)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run(path, x), y, rtol=0, atol=1e-4)
    return proto


def run(path: Path | onnx.ModelProto, x: np.ndarray, outputs: list[str] | None = None) -> Any:
    """The model's output (or the named tensors) on ``x``, with onnxruntime on the CPU."""
    if isinstance(path, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(path)
        if outputs:
            del model.graph.output[:]
            model.graph.output.extend(onnx.ValueInfoProto(name=o) for o in outputs)
        blob: bytes | str = model.SerializeToString()
    else:
        blob = str(path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    res = sess.run(outputs, {INPUT: x})
    return res if outputs else res[0]


# --------------------------------------------------------------------------- faults


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def weight_of(model: onnx.ModelProto, n: onnx.NodeProto, slot: int) -> str:
    """The initializer feeding input ``slot`` of node ``n`` (Identity copies of it resolved
    into an initializer of their own, so editing it touches only this node)."""
    name = n.input[slot]
    inits = {i.name: i for i in model.graph.initializer}
    if name in inits:
        return name
    src = next(m for m in model.graph.node if name in m.output)
    assert src.op_type == "Identity" and src.input[0] in inits, (name, src.op_type)
    model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[src.input[0]]), name))
    model.graph.node.remove(src)
    return name


def get(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name)).copy()


def put(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    init = next(i for i in model.graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def matmul_weight(model: onnx.ModelProto, n: onnx.NodeProto) -> tuple[str, bool]:
    """The weight of a Gemm/MatMul/Conv node and whether it is stored (out, in) — Gemm transB, Conv."""
    if n.op_type == "MatMul":
        return weight_of(model, n, 1), False
    trans_b = any(a.name == "transB" and a.i == 1 for a in n.attribute)
    return weight_of(model, n, 1), n.op_type == "Conv" or trans_b


def tap_of(model: onnx.ModelProto, n: onnx.NodeProto) -> tuple[str, str]:
    """The (name, tensor) onnx-near gives the tap of the layer ``n``: the node and its output, or
    for a MatMul the constant-bias Add right after it and its output."""
    out = n.output[0]
    if n.op_type == "MatMul":
        inits = {i.name for i in model.graph.initializer}
        users = [m for m in model.graph.node if out in m.input]
        if len(users) == 1 and users[0].op_type == "Add" and any(i in inits for i in users[0].input):
            return users[0].name, users[0].output[0]
    return n.name, out


def bias_name(model: onnx.ModelProto, n: onnx.NodeProto) -> str:
    """The bias of a Gemm/Conv (input 2), of a MatMul's following Add, or a BatchNormalization's beta."""
    if n.op_type in ("Gemm", "Conv", "BatchNormalization"):
        return weight_of(model, n, 2)
    add = next(m for m in model.graph.node if n.output[0] in m.input and m.op_type == "Add")
    inits = {i.name for i in model.graph.initializer}
    return next(i for i in add.input if i in inits)


def zeroed_weight(model: onnx.ModelProto, n: onnx.NodeProto) -> str:
    w, _ = matmul_weight(model, n)
    put(model, w, np.zeros_like(get(model, w)))
    return f"weight {w!r} set to all zeros (a bad export or a lost tensor)"


def dead_relu(model: onnx.ModelProto, n: onnx.NodeProto) -> str:
    b = bias_name(model, n)
    put(model, b, np.full_like(get(model, b), -1000.0))
    return f"bias {b!r} of the layer before a ReLU set to -1000: the ReLU outputs only zeros"


def nan_weight(model: onnx.ModelProto, n: onnx.NodeProto) -> str:
    w, _ = matmul_weight(model, n)
    a = get(model, w)
    a.flat[a.size // 3] = np.nan
    put(model, w, a)
    return f"one NaN in weight {w!r} (element {a.size // 3} of {a.size})"


def inf_weight(model: onnx.ModelProto, n: onnx.NodeProto) -> str:
    w, _ = matmul_weight(model, n)
    a = get(model, w)
    a.flat[a.size // 3] = np.inf
    put(model, w, a)
    return f"one +Inf in weight {w!r} (element {a.size // 3} of {a.size})"


def saturated_tanh(model: onnx.ModelProto, n: onnx.NodeProto) -> str:
    w, _ = matmul_weight(model, n)
    put(model, w, get(model, w) * 100.0)
    return f"weight {w!r} feeding a Tanh scaled by 100: the Tanh sits at ±1"


def quant_collapse(model: onnx.ModelProto, n: onnx.NodeProto) -> str:
    """Per-tensor symmetric int8 fake-quantisation, q = clip(round(w / s), -127, 127) · s, with
    the scale stored as max|w| instead of max|w| / 127 (127× too large): only the weights
    above max|w| / 2 survive, as ±max|w|; all others round to 0."""
    w, out_in = matmul_weight(model, n)
    a = get(model, w)
    right = float(np.abs(a).max()) / 127
    s = right * 127
    q = np.clip(np.round(a / s), -127, 127) * s
    put(model, w, q)
    m = a.reshape(a.shape[0], -1) if out_in else a.T
    mq = q.reshape(q.shape[0], -1) if out_in else q.T
    zeros = float((q == 0).mean())
    return (
        f"weight {w!r} int8-quantised per tensor with scale max|w| = {s:.3g} instead of max|w|/127: "
        f"{zeros:.0%} of it is 0 ({int((mq == 0).all(1).sum())} of {mq.shape[0]} output channels wholly), "
        f"levels {sorted({int(v) for v in np.unique(np.round(q / s))})}, "
        f"rank {np.linalg.matrix_rank(mq)} of {np.linalg.matrix_rank(m)}"
    )


def transposed(model: onnx.ModelProto, n: onnx.NodeProto) -> str:
    w, _ = matmul_weight(model, n)
    a = get(model, w)
    assert a.ndim == 2 and a.shape[0] == a.shape[1], a.shape
    put(model, w, a.T.copy())
    return f"square weight {w!r} {a.shape} stored transposed (an exporter mixing up (in, out) and (out, in))"


def bn_zero_var(model: onnx.ModelProto, n: onnx.NodeProto) -> str:
    v = weight_of(model, n, 4)
    put(model, v, np.zeros_like(get(model, v)))
    eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5)
    return (
        f"BatchNormalization running variance {v!r} set to 0 with epsilon {eps:.0e} kept: "
        f"the layer scales by 1/sqrt(eps) = {1 / math.sqrt(eps):.0f} instead of 1/std"
    )


# (healthy model, fault kind, ONNX node of the faulty layer, injector: edits the copy, describes the edit)
FAULTS: list[tuple[str, str, str, Callable[[onnx.ModelProto, onnx.NodeProto], str]]] = [
    ("cnn_bn", "zeroed_weight", "/conv2/Conv", zeroed_weight),
    ("cnn_bn", "dead_relu", "/bn1/BatchNormalization", dead_relu),
    ("cnn_bn", "bn_zero_var", "/bn2/BatchNormalization", bn_zero_var),
    ("cnn_se", "nan_weight", "/dw1/dw1.0/Conv", nan_weight),
    ("cnn_se", "quant_collapse", "/dw2/dw2.0/Conv", quant_collapse),
    ("mlp", "saturated_tanh", "/fc1/Gemm", saturated_tanh),
    ("mlp", "transposed", "/fc2/Gemm", transposed),
    ("mlp", "dead_relu", "/fc3/Gemm", dead_relu),
    ("mlp", "quant_collapse", "/fc1/Gemm", quant_collapse),
    ("transformer", "inf_weight", "/blocks.0/fc1/MatMul", inf_weight),
    ("transformer", "transposed", "/blocks.0/attn/out/MatMul", transposed),
    ("transformer", "zeroed_weight", "/blocks.1/attn/v/MatMul", zeroed_weight),
]


def check_fault(kind: str, model: onnx.ModelProto, tensor: str, x: np.ndarray, healthy: np.ndarray) -> str:
    """Confirm the fault did what it says on the held-out data; a short note of what changed."""
    y = run(model, x, [tensor, OUTPUT])
    t, logits = y
    acc_change = f"agreement with the healthy model's predictions {float((logits.argmax(1) == healthy).mean()):.0%}"
    if kind in ("nan_weight", "inf_weight"):
        assert not np.isfinite(t).all(), kind
        return f"{float((~np.isfinite(t)).mean()):.0%} of the layer's outputs non-finite"
    assert np.isfinite(logits).all(), kind
    if kind == "zeroed_weight":
        assert not t.any() or np.allclose(t, t.reshape(-1, t.shape[-1])[0]), kind
    if kind == "dead_relu":
        relu = next(m for m in model.graph.node if m.op_type == "Relu" and tensor in m.input)
        (r,) = run(model, x, [relu.output[0]])
        assert not r.any(), "the ReLU still fires"
    return acc_change


def main() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(exist_ok=True)
    data = load_data()
    xte = data[2]
    x = np.ascontiguousarray(xte[:N_DATA])
    np.save(OUT / "digits.npy", x)
    manifest: dict[str, Any] = {
        "data": "digits.npy",
        "data_description": (
            f"the first {N_DATA} of {len(xte)} held-out digits, 8×8 upsampled bilinearly to 16×16, "
            "standardised with the training split's mean and std: (N, 1, 16, 16) float32"
        ),
        "models": {},
    }
    protos: dict[str, onnx.ModelProto] = {}
    preds: dict[str, np.ndarray] = {}
    for recipe in RECIPES:
        t0 = time.perf_counter()
        model, acc = train(recipe, data)
        path = OUT / f"{recipe.name}.onnx"
        protos[recipe.name] = export(model, recipe, xte, path)
        preds[recipe.name] = run(path, x).argmax(1)
        print(f"{recipe.name:12s} test accuracy {acc:.4f}  ({time.perf_counter() - t0:.1f} s)")
        assert acc > 0.9, (recipe.name, acc)
        manifest["models"][path.name] = {
            "model": recipe.name,
            "kind": "healthy",
            "accuracy": round(acc, 4),
            "description": (recipe.make.__doc__ or "").strip().splitlines()[0],
        }
    for name, kind, node_name, inject in FAULTS:
        proto = onnx.ModelProto()
        proto.CopyFrom(protos[name])
        n = node(proto, node_name)
        tap, tensor = tap_of(proto, n)
        description = inject(proto, n)
        onnx.checker.check_model(proto)
        note = check_fault(kind, proto, tensor, x, preds[name])
        path = OUT / f"{name}__{kind}.onnx"
        onnx.save(proto, str(path))
        manifest["models"][path.name] = {
            "model": name,
            "kind": kind,
            "node": node_name,
            "op": n.op_type,
            "tap": tap,
            "tensor": tensor,
            "description": description,
            "effect": note,
        }
        print(f"{path.name:36s} {node_name} → {tensor}: {description}; {note}")
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total / 1024:.0f} KiB, into {OUT}")


if __name__ == "__main__":
    main()
