"""onnx-near against the PyTorch way of computing NEAR, on the same inputs and the same rows.

For each case a seeded PyTorch model (eval mode) is exported to ONNX (TorchScript exporter,
opset 17, constant folding off so BatchNorm stays its own op, dynamic batch dim, IR <= 10)
and scored three ways:

* **baseline, the PyTorch way**: forward hooks on the weighted modules (Conv, Linear,
  BatchNorm, LayerNorm) and the activation modules; the window's samples run in batches
  (several batch sizes are tried, the fastest is kept); each hook keeps only the rows of the
  block onnx-near used (row starts taken from one onnx-near result beforehand); then
  ``torch.linalg.svdvals`` (float32 or float64: the faster one that still agrees with
  onnx-near to 1e-4 relative), entropy in float64, sum;
* **onnx-near in-process**: ``onnx_near.score(path, data=X, seed=0, batchnorm="running")``, session creation
  included, with its own split from ``result.timings``;
* **whole process**: ``onnx-near score MODEL --data X.npy --format json`` against a
  standalone script doing the PyTorch way (imports and model construction included),
  each in a fresh subprocess; their peak resident sets come from ``wait4``.

The two sides are interleaved and medians are reported; the ratios (onnx-near / baseline)
measured in the same run are what count on a noisy machine.  By default both sides get one
thread (torch, onnxruntime's intra-op pool and the BLAS under numpy) and the measured
processes are pinned to one CPU: on a small shared machine, multi-threaded BLAS with a
busy neighbour turns a 0.5 s SVD into several seconds, and the timings into noise.
``--threads 0`` leaves every library at its default instead.

    python benchmarks/vs_pytorch.py [--quick] [--cases mlp,cnn,transformer,resnet18] [--runs N]
                                    [--proc-runs N] [--threads N] [--device cpu|cuda] [--json FILE]
    python benchmarks/vs_pytorch.py --real-size [--samples N] ...   # = --cases resnet50,bert,vit_b_16,convnext_tiny

``--device cuda`` runs both sides on the GPU: the PyTorch model and its ``svdvals`` on CUDA
(timings synchronised), onnx-near with onnxruntime-gpu and cupy (it stops if the session
did not get the CUDA provider).

**Real-size cases** (not run by default; docs/benchmark_env.md says how to install their
libraries): torchvision's ``resnet50()``, ``vit_b_16()`` and ``convnext_tiny()`` at
3×224×224, and Hugging Face's ``BertModel(BertConfig())`` (bert-base defaults) on 128
sequences of 32 tokens (inputs ``input_ids`` and ``attention_mask``, with a realistic
padding mask: lengths uniform in 8..32, [PAD] after; ``token_type_ids`` are BertModel's
default zeros and not an input), each built from its library with random weights
(``torch.manual_seed(0)``; ResNet-50's BatchNorm statistics randomised as ResNet-18's),
nothing downloaded.  The data holds the window and no more (so it starts at sample 0):
BERT 128 sequences, the image models the square window of every tap with more than one
row per sample (ResNet-50 42 images, ConvNeXt-T 63, ViT-B/16 16), so their classifier
heads (one row per image, 1000 columns) have fewer rows than columns, as BERT's pooler
(128×768); ``--samples N`` sets it.  Their taps are matched module ↔ ONNX tap one to one,
or the case stops and says which differ:

* a module called several times in one forward pass (torchvision's Bottleneck calls its
  one ``relu`` three times) is keyed ``name``, ``name_1``, ``name_2`` by its call, as the
  TorchScript exporter names the scopes (``/layer1/layer1.0/relu_2/Relu``);
* ``nn.MultiheadAttention`` (ViT) calls its projections functionally, so no module hook
  sees them; the baseline hooks the attention module itself: its output is out_proj's
  (onnx-near: the Gemm), and its in-projection (onnx-near: MatMul + bias Add, 3·768
  columns) is ``F.linear(query, in_proj_weight, in_proj_bias)``, computed for the kept rows;
* feature axes: channels (1) for convolutions and BatchNorm, the last axis for Linear and
  LayerNorm (ConvNeXt's block LayerNorm and Linear work on N×H×W×C), except a LayerNorm
  subclass normalising the channels of N×C×H×W (torchvision's LayerNorm2d: onnx-near taps
  its LayerNormalization between the two Transposes, the same rows); an activation takes
  the axis of the tap whose output it takes;
* activations: torch's (ReLU, GELU, Tanh, …) and Hugging Face's own classes
  (``transformers.activations.ACT2CLS``, e.g. ``GELUActivation``; onnx-near sees the Erf
  pattern), less its identity ``LinearActivation``.

They try fewer batch sizes (64, 16, 4, once each, forward pass only) and float32 ``svdvals``
first (float64 only if float32 does not agree); that run is also their first in-process
baseline run.  After the table each real-size case gets notes: how its taps matched, which
matrices are not square, any tap whose effective rank differs by more than 1e-4, and the
SVD tries.  ``--proc-runs 0`` skips the whole-process runs.  The script exits 1 when a case
fails or a score differs by more than 1e-4.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import onnx_near

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # then only the subprocesses' BLAS threads are limited (by environment)

    def threadpool_limits(limits: int | None = None) -> contextlib.nullcontext[None]:  # type: ignore[misc]
        return contextlib.nullcontext()


MAX_IR_VERSION = 10
OPSET = 17
RTOL = 1e-4

# ============================================================================ models
# Everything between here and "end of the standalone part" is also copied, verbatim, into the
# standalone baseline script that the whole-process comparison runs.


def randomize_batchnorm(model: nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm running statistics, so that BN is not a near-identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 1.5 + 0.25)


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)).eval()


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class NatsCNN(nn.Module):
    """NATS-Bench-sized CNN: 10 Conv-BN-ReLU at 64 channels (32→16→8), global pool, Linear."""

    def __init__(self, width: int = 64, classes: int = 10) -> None:
        super().__init__()
        strides = [1, 1, 1, 2, 1, 1, 2, 1, 1, 1]
        layers = [conv_bn_relu(3 if i == 0 else width, width, s) for i, s in enumerate(strides)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def make_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = NatsCNN()
    randomize_batchnorm(model, 1)
    return model.eval()


class SelfAttention(nn.Module):
    """Multi-head self-attention from plain Linear modules, so that hooks see q, k, v and out."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        n, seq, _ = t.shape
        return t.reshape(n, seq, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, seq, dim = x.shape
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        return self.out((att @ v).transpose(1, 2).reshape(n, seq, dim))


class EncoderLayer(nn.Module):
    """Post-LN encoder layer, as nn.TransformerEncoderLayer (norm_first=False, GELU)."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.attn = SelfAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.ff1, self.act, self.ff2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.ff2(self.act(self.ff1(x))))


class Encoder(nn.Module):
    """4 layers, d=256, 4 heads, FFN 1024; input: float token embeddings (N, 256, 256)."""

    def __init__(self, depth: int = 4, dim: int = 256, heads: int = 4, hidden: int = 1024) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[EncoderLayer(dim, heads, hidden) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def make_transformer() -> nn.Module:
    torch.manual_seed(0)
    return Encoder().eval()


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + skip)


class ResNet18(nn.Module):
    """ResNet-18 (basic blocks [2, 2, 2, 2], 64-512 channels) for 3×224×224 inputs."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        widths, cin, stages = [64, 128, 256, 512], 64, []
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def make_resnet18() -> nn.Module:
    torch.manual_seed(0)
    model = ResNet18()
    randomize_batchnorm(model, 1)
    return model.eval()


# Real-size cases: each library's own model, random weights (seeded), nothing downloaded.
# The libraries are imported here, not at the top, so that the small cases' standalone
# script (whose run is timed) imports torch alone, as before.


def make_resnet50() -> nn.Module:
    """torchvision's ResNet-50 (1000 classes), randomised BatchNorm statistics as for ResNet-18."""
    import torchvision

    torch.manual_seed(0)
    model: nn.Module = torchvision.models.resnet50()  # weights=None: random initialisation
    randomize_batchnorm(model, 1)
    return model.eval()


def make_vit_b_16() -> nn.Module:
    """torchvision's ViT-B/16 at 224² (its own initialisation: the head is all zeros)."""
    import torchvision

    torch.manual_seed(0)
    model: nn.Module = torchvision.models.vit_b_16()
    return model.eval()


def make_convnext_tiny() -> nn.Module:
    """torchvision's ConvNeXt-Tiny at 224²."""
    import torchvision

    torch.manual_seed(0)
    model: nn.Module = torchvision.models.convnext_tiny()
    return model.eval()


class Bert(nn.Module):
    """Hugging Face's ``BertModel(BertConfig())`` (bert-base defaults, random weights), called
    with keyword inputs; returns (last_hidden_state, pooler_output).

    The wrapper is needed because the TorchScript exporter calls the model with positional
    inputs, which transformers 5's ``BertModel.forward`` refuses ("got multiple values for
    argument 'use_cache'").  ``token_type_ids`` are not an input: BertModel's default (zeros,
    from its buffer) applies on both sides.
    """

    def __init__(self) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # built from a config: nothing to fetch
        from transformers import BertConfig, BertModel

        self.bert = BertModel(BertConfig())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state, out.pooler_output


def make_bert() -> nn.Module:
    torch.manual_seed(0)
    return Bert().eval()


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "mlp": make_mlp,
    "cnn": make_cnn,
    "transformer": make_transformer,
    "resnet18": make_resnet18,
    "resnet50": make_resnet50,
    "bert": make_bert,
    "vit_b_16": make_vit_b_16,
    "convnext_tiny": make_convnext_tiny,
}
SMALL_CASES = ("mlp", "cnn", "transformer", "resnet18")
REAL_SIZE_CASES = ("resnet50", "bert", "vit_b_16", "convnext_tiny")

# ============================================================================ the PyTorch way

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)
ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Softplus, nn.Mish)
ATTENTION = (nn.MultiheadAttention,)


def hf_activations() -> tuple[type[nn.Module], ...]:
    """Hugging Face's own activation modules (``transformers.activations.ACT2CLS``, less the
    identity ``LinearActivation``), once transformers is loaded; () otherwise."""
    acts = sys.modules.get("transformers.activations")
    if acts is None:
        return ()
    found: set[Any] = {c[0] if isinstance(c, tuple) else c for c in getattr(acts, "ACT2CLS", {}).values()}
    return tuple(
        c
        for c in sorted(found, key=lambda c: getattr(c, "__name__", ""))
        if isinstance(c, type)
        and issubclass(c, nn.Module)
        and c.__module__ == acts.__name__
        and c.__name__ != "LinearActivation"
    )


def hooked_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules the authors' code hooks: every weighted module and every activation module
    (Hugging Face's activation classes too), and nn.MultiheadAttention, whose projections are
    functional calls that no module hook sees (its out_proj Linear is therefore not hooked)."""
    kinds = WEIGHTED + ACTIVATIONS + hf_activations() + ATTENTION
    found = {n: m for n, m in model.named_modules() if isinstance(m, kinds)}
    attention = [n for n, m in found.items() if isinstance(m, ATTENTION)]
    return {n: m for n, m in found.items() if not any(n.startswith(a + ".") for a in attention)}


def tap_hooks(model: nn.Module, emit: Callable[..., None]) -> tuple[list[Any], dict[str, int]]:
    """Forward hooks on the hooked modules; each tap calls ``emit(key, module, kind, tensor, source)``.

    ``key`` is the module's name, or ``name_k`` for its k-th call (k ≥ 1) in one forward pass,
    as the TorchScript exporter names the scopes of a module called several times
    (torchvision's Bottleneck calls its one ReLU three times): clear the returned ``calls``
    before each forward pass.  ``kind`` "out": ``tensor`` is the module's output and
    ``source`` its first input.  An nn.MultiheadAttention gives two taps: ``key.in_proj``,
    kind "in_proj", with its (batch-first) query as ``tensor``: the in-projection is
    F.linear(query, in_proj_weight, in_proj_bias), which the caller computes for the rows
    it keeps; and ``key.out_proj``, its attention output, which is out_proj's.
    Returns the hook handles and ``calls``.
    """
    calls: dict[str, int] = {}
    handles = []

    def next_key(name: str) -> str:
        k = calls.get(name, 0)
        calls[name] = k + 1
        return name if k == 0 else f"{name}_{k}"

    for name, m in hooked_modules(model).items():
        if isinstance(m, ATTENTION):

            def pre(mod: nn.Module, args: Any, kwargs: Any, name: str = name) -> None:
                q = args[0] if args else kwargs["query"]
                emit(next_key(name) + ".in_proj", mod, "in_proj", q if mod.batch_first else q.transpose(0, 1), None)

            def post(mod: nn.Module, args: Any, kwargs: Any, out: Any, name: str = name) -> None:
                key = name if calls[name] == 1 else f"{name}_{calls[name] - 1}"
                y = out[0]
                emit(key + ".out_proj", mod, "out", y if mod.batch_first else y.transpose(0, 1), None)

            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post, with_kwargs=True))
        else:

            def hook(mod: nn.Module, inputs: Any, out: torch.Tensor, name: str = name) -> None:
                emit(next_key(name), mod, "out", out, inputs[0] if inputs else None)

            handles.append(m.register_forward_hook(hook))
    return handles, calls


def run_model(model: nn.Module, x: Any, lo: int, hi: int) -> Any:
    """The model on samples ``lo .. hi`` of ``x``: a tensor, or a dict of them by input name."""
    if isinstance(x, dict):
        return model(**{k: v[lo:hi] for k, v in x.items()})
    return model(x[lo:hi])


def erank_torch(matrix: torch.Tensor, svd_dtype: torch.dtype) -> float:
    """Effective rank: singular values in ``svd_dtype``, entropy in float64."""
    s = torch.linalg.svdvals(matrix.to(svd_dtype)).double()
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * torch.log(p)).sum()))


def collect_rows(
    model: nn.Module, x: Any, blocks: dict[str, tuple[int, int, int]], samples: int, batch_size: int
) -> tuple[dict[str, list[torch.Tensor]], float]:
    """Run samples ``0 .. samples`` of ``x`` in batches, keeping each tap's block of rows.

    ``blocks`` maps a tap key (see :func:`tap_hooks`) to the (first row, row count, feature
    axis) of its matrix within the row sequence of those samples (rows: every axis but the
    feature axis, sample by sample, in C order).  Returns the pieces and the forward time.
    """
    pieces: dict[str, list[torch.Tensor]] = {key: [] for key in blocks}
    first = [0]  # index of the current batch's first sample

    def emit(key: str, module: nn.Module, kind: str, t: torch.Tensor, _source: Any) -> None:
        if key not in blocks:
            return
        start, count, axis = blocks[key]
        if axis not in (-1, t.dim() - 1):
            t = t.movedim(axis, -1)
        rps = t[0].numel() // t.shape[-1]  # rows per sample
        lo = first[0]
        r0, r1 = max(start, lo * rps), min(start + count, (lo + t.shape[0]) * rps)
        if r0 >= r1:
            return
        s0, s1 = r0 // rps - lo, (r1 - 1) // rps - lo + 1  # only the samples holding the block
        rows = t[s0:s1].reshape(-1, t.shape[-1])
        offset = (lo + s0) * rps
        if kind == "in_proj":  # the attention's in-projection, for the kept rows only
            w, b = module.in_proj_weight, module.in_proj_bias
            pieces[key].append(torch.nn.functional.linear(rows[r0 - offset : r1 - offset], w, b))  # type: ignore[arg-type]
        else:
            pieces[key].append(rows[r0 - offset : r1 - offset].clone())

    handles, calls = tap_hooks(model, emit)
    try:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for lo in range(0, samples, batch_size):
                first[0] = lo
                calls.clear()
                run_model(model, x, lo, min(lo + batch_size, samples))
        if next(model.parameters()).is_cuda:
            torch.cuda.synchronize()
        t_forward = time.perf_counter() - t0
    finally:
        for h in handles:
            h.remove()
    return pieces, t_forward


def eranks_of(pieces: dict[str, list[torch.Tensor]], svd_dtype: torch.dtype) -> tuple[dict[str, float], float]:
    """Each tap's effective rank from its pieces of rows, and the time it took."""
    t0 = time.perf_counter()
    eranks = {key: erank_torch(torch.cat(p), svd_dtype) for key, p in pieces.items()}
    return eranks, time.perf_counter() - t0


def pytorch_near(
    model: nn.Module,
    x: Any,
    blocks: dict[str, tuple[int, int, int]],
    samples: int,
    batch_size: int,
    svd_dtype: torch.dtype,
) -> tuple[float, dict[str, float], float, float]:
    """NEAR the PyTorch way over samples ``0 .. samples`` of ``x`` (see :func:`collect_rows`).

    Returns (score, per-tap erank, forward s, erank s).
    """
    pieces, t_forward = collect_rows(model, x, blocks, samples, batch_size)
    eranks, t_erank = eranks_of(pieces, svd_dtype)
    return sum(eranks.values()), eranks, t_forward, t_erank


# ============================================================================ end of the standalone part

SCRIPT_MAIN = """

if __name__ == "__main__":
    import json
    import sys

    spec = json.load(open(sys.argv[1]))
    model = BUILDERS[spec["case"]]().to(spec["device"])
    data = np.load(spec["data"])
    if isinstance(data, np.ndarray):
        x = torch.from_numpy(data).to(spec["device"])
    else:  # .npz: one array per input name
        x = {k: torch.from_numpy(data[k]).to(spec["device"]) for k in data.files}
    blocks = {k: tuple(v) for k, v in spec["blocks"].items()}
    score, _, _, _ = pytorch_near(model, x, blocks, spec["samples"], spec["batch_size"], getattr(torch, spec["svd_dtype"]))
    print(json.dumps({"score": score}))
"""


def standalone_script() -> str:
    """The models and the PyTorch way as one script, with the same source as above."""
    parts: list[object] = [
        randomize_batchnorm, make_mlp, conv_bn_relu, NatsCNN, make_cnn, SelfAttention, EncoderLayer,
        Encoder, make_transformer, BasicBlock, ResNet18, make_resnet18, make_resnet50, make_vit_b_16,
        make_convnext_tiny, Bert, make_bert,
    ]  # fmt: skip
    head = (
        '"""NEAR the PyTorch way (written by benchmarks/vs_pytorch.py)."""\n'
        "from __future__ import annotations\n\nimport math\nimport os\nimport sys\nimport time\n"
        "from typing import Any, Callable\n\nimport numpy as np\nimport torch\nfrom torch import nn\n\n"
    )
    body = "\n\n".join(inspect.getsource(p) for p in parts)  # type: ignore[arg-type]
    functions = (
        hf_activations,
        hooked_modules,
        tap_hooks,
        run_model,
        erank_torch,
        collect_rows,
        eranks_of,
        pytorch_near,
    )
    tail = "\n\n".join(inspect.getsource(p) for p in functions)
    builders = "BUILDERS = {" + ", ".join(f'"{k}": {f.__name__}' for k, f in BUILDERS.items()) + "}\n"
    consts = "".join(
        f"{name} = ({', '.join('nn.' + c.__name__ for c in kinds)},)\n"
        for name, kinds in (("WEIGHTED", WEIGHTED), ("ACTIVATIONS", ACTIVATIONS), ("ATTENTION", ATTENTION))
    )
    return head + body + "\n\n" + builders + "\n" + consts + "\n\n" + tail + SCRIPT_MAIN


# ============================================================================ harness

SAMPLE_SHAPES = {
    "mlp": (784,),
    "cnn": (3, 32, 32),
    "transformer": (256, 256),
    "resnet18": (3, 224, 224),
    "resnet50": (3, 224, 224),
    "vit_b_16": (3, 224, 224),
    "convnext_tiny": (3, 224, 224),
}
BATCH_CANDIDATES = (1024, 256, 64, 16, 4, 1)
REAL_SIZE_BATCHES = (64, 16, 4)  # the real-size cases try fewer batch sizes, once each
BERT_TOKENS = 32
# A tap whose float32 effective rank differs from onnx-near's by more than this has other rows,
# not rounding (float32 svdvals is within ~1e-5 relative): the real-size cases then skip float64.
NOT_ROUNDING = 1e-2
BERT_SAMPLES = 128
CHANNEL_FIRST = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
CALL_SUFFIX = re.compile(r"^(.*)_([0-9]+)$")


def make_data(case: str, model: nn.Module, n: int) -> np.ndarray | dict[str, np.ndarray]:
    """``n`` seeded samples: standard normal floats, or for BERT a dict of token ids and mask.

    BERT's sequences have a realistic padding mask: lengths drawn uniformly in 8 .. 32
    tokens, ``attention_mask`` 1 on them and 0 after; ``input_ids`` uniform in 1 .. vocab-1
    on them and [PAD] (0) after.
    """
    rng = np.random.default_rng(0)
    if case == "bert":
        vocab = int(model.bert.config.vocab_size)  # type: ignore[union-attr,arg-type]
        lengths = rng.integers(8, BERT_TOKENS + 1, n)
        mask = (np.arange(BERT_TOKENS)[None, :] < lengths[:, None]).astype(np.int64)
        ids = rng.integers(1, vocab, (n, BERT_TOKENS), dtype=np.int64) * mask
        return {"input_ids": ids, "attention_mask": mask}
    return rng.standard_normal((n, *SAMPLE_SHAPES[case]), dtype=np.float32)


def probe_input(case: str, model: nn.Module) -> Any:
    """One sample to learn the taps' shapes from."""
    if case == "bert":
        return to_torch(make_data(case, model, 1))
    return torch.zeros((1, *SAMPLE_SHAPES[case]))


def to_torch(x: np.ndarray | dict[str, np.ndarray]) -> Any:
    return {k: torch.from_numpy(v) for k, v in x.items()} if isinstance(x, dict) else torch.from_numpy(x)


def to_device(x: Any, device: str) -> Any:
    return {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)


def export_sample(x: Any) -> Any:
    """The sample the model is traced with: the first; for BERT the shortest sequence, so
    that the trace goes through the attention mask's padding path."""
    if isinstance(x, dict):
        i = int(torch.argmin(x["attention_mask"].sum(dim=1))) if "attention_mask" in x else 0
        return {k: v[i : i + 1] for k, v in x.items()}
    return x[:1]


def window_size(case: str, geo: dict[str, tuple[int, int, int]], samples: int | None) -> int:
    """Samples in the data (all of them make onnx-near's window, which then starts at 0).

    The small cases: the window of a square score.  BERT: 128 sequences.  The real-size image
    models: the square window of every tap with more than one row per sample, so that the
    classifier head (one row per sample, 1000 columns: it would take 1000 images) has fewer
    rows than columns, as BERT's pooler has; ``samples`` overrides both.
    """
    if case in SMALL_CASES:
        return max(math.ceil(cols / rps) for rps, cols, _ in geo.values())
    if samples is not None:
        return samples
    if case == "bert":
        return BERT_SAMPLES
    return max(math.ceil(cols / rps) for rps, cols, _ in geo.values() if rps > 1)


def export(model: nn.Module, sample: Any, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        _export(model, sample, path)
    proto = onnx.load(str(path))
    if proto.ir_version > MAX_IR_VERSION:
        proto.ir_version = MAX_IR_VERSION
        onnx.save(proto, str(path))


def _export(model: nn.Module, sample: Any, path: Path) -> None:
    """TorchScript exporter, opset 17, dynamic batch.  A dict sample: one input per key (in
    the order of the model's forward arguments); several outputs: y0, y1, …"""
    if isinstance(sample, dict):
        input_names, args = list(sample), tuple(sample.values())
    else:
        input_names, args = ["x"], (sample,)
    with torch.no_grad():
        out = model(*args)
    output_names = ["y"] if isinstance(out, torch.Tensor) else [f"y{i}" for i in range(len(out))]
    torch.onnx.export(
        model,
        args,
        str(path),
        dynamo=False,
        opset_version=OPSET,
        do_constant_folding=False,  # keeps BatchNorm a separate op, as on the PyTorch side
        input_names=input_names,
        output_names=output_names,
        dynamic_axes={n: {0: "batch"} for n in input_names + output_names},
    )


def module_path(onnx_node_name: str) -> str:
    """The PyTorch module that a TorchScript-exported node came from.

    ``/layer2/layer2.0/downsample/downsample.0/Conv`` → ``layer2.0.downsample.0``: a scope
    component that extends the previous one (children of a Sequential) replaces it.  A
    module's k-th call (k ≥ 1) in a forward pass has the scope ``name_k``
    (``/layer1/layer1.0/relu_2/Relu`` → ``layer1.0.relu_2``), as :func:`tap_hooks` keys it.
    """
    parts: list[str] = []
    for comp in onnx_node_name.strip("/").split("/")[:-1]:
        if parts and comp.startswith(parts[-1] + "."):
            parts[-1] = comp
        else:
            parts.append(comp)
    return ".".join(parts)


def onnx_tap_keys(layers: Any, model: nn.Module) -> tuple[dict[str, Any], list[str]]:
    """onnx-near's taps keyed as :func:`tap_hooks` keys the hooks' taps, and what did not fit.

    A tap is keyed by the module its node's scope names.  Within an nn.MultiheadAttention's
    scope onnx-near finds two taps, in this order: the in-projection (MatMul + bias Add,
    3·E columns) and out_proj (Gemm, E columns): ``name.in_proj`` and ``name.out_proj``.
    """
    modules = dict(model.named_modules())
    keys: dict[str, Any] = {}
    problems: list[str] = []
    attention: dict[str, list[Any]] = {}
    for layer in layers:
        path = module_path(layer.name)
        m = modules.get(path)
        call = CALL_SUFFIX.match(path)
        if m is None and call is not None:
            m = modules.get(call.group(1))
        if m is None:
            problems.append(f"onnx-near tap {layer.name!r} ({layer.op}): no module {path!r} in the model")
            continue
        if isinstance(m, ATTENTION):
            attention.setdefault(path, []).append(layer)
            continue
        if path in keys:
            problems.append(f"onnx-near taps {keys[path].name!r} and {layer.name!r} both come from module {path!r}")
        keys[path] = layer
    for path, found in attention.items():
        m = modules.get(path) or modules[CALL_SUFFIX.match(path).group(1)]  # type: ignore[union-attr]
        cols = [layer.shape[1] for layer in found]
        if cols != [3 * m.embed_dim, m.embed_dim]:
            names = ", ".join(f"{layer.name!r} ({layer.op}, {layer.shape[1]} columns)" for layer in found)
            problems.append(
                f"attention {path!r}: onnx-near taps {names}; expected the in-projection "
                f"({3 * m.embed_dim} columns) then out_proj ({m.embed_dim})"
            )
            continue
        keys[path + ".in_proj"], keys[path + ".out_proj"] = found
    return keys, problems


def tap_axis(module: nn.Module, out: torch.Tensor, source_axis: int | None) -> int:
    """The feature axis of a hooked module's output.

    Convolutions and BatchNorm: channels (axis 1).  Linear: the last axis.  LayerNorm: the
    last axis, unless it is a subclass that normalises the channels of an N×C×… tensor
    (torchvision's LayerNorm2d permutes around F.layer_norm; ConvNeXt's block LayerNorm
    works on N×H×W×C, on the last axis).  An activation: the axis of the tap whose output it
    takes; else channels for 4-D tensors (after a residual Add), the last axis otherwise.
    """
    if isinstance(module, CHANNEL_FIRST):
        return 1
    if isinstance(module, nn.LayerNorm):
        c = tuple(module.normalized_shape)
        own = type(module).forward is not nn.LayerNorm.forward
        return 1 if own and len(c) == 1 and out.dim() > 2 and out.shape[1] == c[0] else -1
    if isinstance(module, nn.Linear):
        return -1
    if source_axis is not None:
        return source_axis
    return 1 if out.dim() == 4 else -1


def rows_per_sample(model: nn.Module, sample: Any) -> dict[str, tuple[int, int, int]]:
    """Per hooked tap: (rows per sample, columns, feature axis), from one sample."""
    out: dict[str, tuple[int, int, int]] = {}
    produced: list[tuple[torch.Tensor, int]] = []  # tap outputs of this pass, with their axes

    def emit(key: str, m: nn.Module, kind: str, t: torch.Tensor, source: Any) -> None:
        if kind == "in_proj":
            weight: torch.Tensor = m.in_proj_weight  # type: ignore[assignment]
            rps, cols, axis = t[0].numel() // t.shape[-1], int(weight.shape[0]), -1
        else:
            src = next((a for p, a in reversed(produced) if p is source), None) if source is not None else None
            axis = tap_axis(m, t, src)
            produced.append((t, axis))
            moved = t.movedim(axis, -1)
            rps, cols = moved[0].numel() // moved.shape[-1], int(moved.shape[-1])
        out[key] = (rps, cols, axis)

    handles, calls = tap_hooks(model, emit)
    try:
        calls.clear()
        with torch.inference_mode():
            run_model(model, sample, 0, 1)
    finally:
        for h in handles:
            h.remove()
    return out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


# A small launcher starts each measured process: a child's ru_maxrss starts from its parent's
# high-water mark (Linux keeps it across exec), so children of this big process would all
# report at least its own peak.  The launcher is a fresh, small Python; it pins the CPUs.
LAUNCHER = """
import json, os, subprocess, sys, time
cpus, out, err, cmd = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
if cpus:
    os.sched_setaffinity(0, [int(c) for c in cpus.split(",")])
with open(out, "wb") as o, open(err, "wb") as e:
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=o, stderr=e)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
print(json.dumps({"wall": wall, "maxrss_kib": usage.ru_maxrss, "rc": p.returncode}))
"""


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    if threads > 0:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    return env


def run_process(cmd: list[str], tmp: Path, threads: int) -> tuple[float, float, str]:
    """Wall time (s), peak resident set (MiB, ru_maxrss from wait4) and stdout of one fresh process."""
    cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:threads]) if threads > 0 else ""
    out, err = tmp / "proc.out", tmp / "proc.err"
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, cpus, str(out), str(err), *cmd],
        env=thread_env(threads), check=True, capture_output=True, text=True,
    )  # fmt: skip
    info = json.loads(done.stdout)
    if info["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({info['rc']}): {err.read_text()[-2000:]}")
    return info["wall"], info["maxrss_kib"] / 1024, out.read_text()


def onnx_near_cli() -> list[str]:
    exe = Path(sys.executable).with_name("onnx-near")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("onnx-near")
    return [found] if found else [sys.executable, "-m", "onnx_near.cli"]


def bench_case(
    case: str,
    tmp: Path,
    runs: int,
    proc_runs: int,
    quick: bool,
    threads: int,
    device: str = "cpu",
    samples_override: int | None = None,
    script_text: str | None = None,
) -> dict[str, Any]:
    log = lambda *a: print(f"  [{case}]", *a, file=sys.stderr, flush=True)  # noqa: E731
    real_size = case in REAL_SIZE_CASES  # fewer tries of the batch size and the SVD precision
    t_case = time.perf_counter()
    model = BUILDERS[case]()
    geo = rows_per_sample(model, probe_input(case, model))
    need = window_size(case, geo, samples_override)
    x_np = make_data(case, model, need)
    x = to_torch(x_np)
    multi = isinstance(x_np, dict)
    onnx_path, data_path = tmp / f"{case}.onnx", tmp / f"{case}.x.{'npz' if multi else 'npy'}"
    t0 = time.perf_counter()
    export(model, export_sample(x), onnx_path)
    if isinstance(x_np, dict):
        np.savez(data_path, **x_np)  # type: ignore[arg-type]
    else:
        np.save(data_path, x_np)
    model, x = model.to(device), to_device(x, device)  # the baseline on the same device as onnx-near
    log(f"built and exported in {time.perf_counter() - t_case:.1f} s (export {time.perf_counter() - t0:.1f} s)")

    # One onnx-near result gives the rows; it also warms onnx-near up.
    t0 = time.perf_counter()
    # The PyTorch side runs in eval mode: BatchNorm on its running statistics, on both sides.
    ref = onnx_near.score(onnx_path, data=x_np, seed=0, threads=threads, device=device, batchnorm="running")
    log(f"reference onnx-near score {ref.score:.6f} in {time.perf_counter() - t0:.1f} s")
    if device == "cuda" and ref.provider != "CUDAExecutionProvider":
        raise RuntimeError(f"{case}: onnx-near ran on {ref.provider}, not CUDA: is onnxruntime-gpu installed?")
    by_key, problems = onnx_tap_keys(ref.layers, model)
    hooked = set(geo)
    only_near, only_hooks = sorted(set(by_key) - hooked), sorted(hooked - set(by_key))
    if problems or len(ref.layers) != len(geo) or only_near or only_hooks:
        skipped = [f"{s.name} ({s.op}): {s.reason}" for s in ref.skipped]
        raise RuntimeError(
            f"{case}: the taps do not match one to one: onnx-near has {len(ref.layers)} taps, the hooks {len(geo)}; "
            f"only onnx-near: {only_near}; only hooks: {only_hooks}; problems: {problems}; "
            f"onnx-near skipped: {skipped}"
        )
    w0 = ref.window_starts[0]
    if w0 != 0:
        raise RuntimeError(f"{case}: the window starts at sample {w0}, expected 0 with exactly {need} samples")
    blocks: dict[str, tuple[int, int, int]] = {}
    for key, layer in by_key.items():
        _rps, cols, axis = geo[key]
        if layer.shape[1] != cols:
            raise RuntimeError(f"{case}: {key} has {cols} columns in PyTorch, {layer.shape[1]} in onnx-near")
        blocks[key] = (layer.row_starts[0], layer.shape[0], axis)
    samples = max((start + count - 1) // geo[key][0] + 1 for key, (start, count, _) in blocks.items())
    log(f"{len(blocks)} taps, window {need} samples, {samples} run")

    # Baseline batch size: the fastest forward pass among the candidates.
    if real_size:  # the forward pass alone, one try per batch size, after one small batch of warm-up
        candidates = sorted({min(b, samples) for b in REAL_SIZE_BATCHES}, reverse=True)
        collect_rows(model, x, blocks, candidates[-1], candidates[-1])
        fwd = {b: [collect_rows(model, x, blocks, samples, b)[1]] for b in candidates}
    else:
        candidates = sorted({min(b, samples) for b in BATCH_CANDIDATES}, reverse=True)
        if quick:
            candidates = candidates[:3]
        fwd = {b: [] for b in candidates}
        pytorch_near(model, x, blocks, samples, candidates[0], torch.float32)  # warm-up
        for _ in range(1 if quick else 2):
            for b in candidates:
                fwd[b].append(pytorch_near(model, x, blocks, samples, b, torch.float32)[2])
    batch = min(candidates, key=lambda b: median(fwd[b]))
    log("baseline forward s by batch size: " + ", ".join(f"{b}: {median(fwd[b]):.3f}" for b in candidates))

    # SVD precision: the faster of float32 / float64 that still agrees with onnx-near.
    svd: dict[str, dict[str, float]] = {}
    first_base: tuple[float, float, float, float, dict[str, float]] | None = None
    if real_size:
        # One collection of the rows; float32 first, float64 only if float32 does not agree (on
        # these sizes float32 is the faster).  This run is also the first in-process baseline run.
        pieces, tf = collect_rows(model, x, blocks, samples, batch)
        ref_eranks = {key: layer.erank for key, layer in by_key.items()}
        for name in ("float32", "float64"):
            eranks, te = eranks_of(pieces, getattr(torch, name))
            s = sum(eranks.values())
            svd[name] = {"score": s, "erank_s": te, "rel_diff": rel(s, ref.score)}
            first_base = (tf + te, tf, te, s, eranks)
            if svd[name]["rel_diff"] <= RTOL:
                break
            worst = max(rel(ref_eranks[k], e) for k, e in eranks.items())
            if worst > NOT_ROUNDING:  # other rows, not float32 rounding: float64 would not agree either
                log(f"float32 svdvals: a tap differs by {worst:.1e}, more than rounding; float64 not tried")
                break
        svd_name = list(svd)[-1]
        del pieces
    else:
        for name, dt in (("float32", torch.float32), ("float64", torch.float64)):
            tries = [pytorch_near(model, x, blocks, samples, batch, dt) for _ in range(1 if quick else 2)]
            s = tries[0][0]
            svd[name] = {"score": s, "erank_s": min(t[3] for t in tries), "rel_diff": rel(s, ref.score)}
        ok = [n for n in svd if svd[n]["rel_diff"] <= RTOL] or ["float64"]
        svd_name = min(ok, key=lambda n: svd[n]["erank_s"])
    svd_dtype = getattr(torch, svd_name)
    log("svdvals s: " + ", ".join(f"{n} {v['erank_s']:.3f} (rel diff {v['rel_diff']:.1e})" for n, v in svd.items()))

    # In-process, interleaved.
    base_t: list[float] = []
    base_fwd: list[float] = []
    base_erank: list[float] = []
    near_t: list[float] = []
    split: dict[str, list[float]] = {}
    base_score = near_score = math.nan
    base_eranks: dict[str, float] = {}
    res = ref
    for r in range(runs):
        for side in ("base", "near") if r % 2 == 0 else ("near", "base"):
            if side == "base":
                if first_base is not None:  # the real-size cases' SVD-precision run
                    total, tf, te, base_score, base_eranks = first_base
                    first_base = None
                else:
                    t0 = time.perf_counter()
                    base_score, base_eranks, tf, te = pytorch_near(model, x, blocks, samples, batch, svd_dtype)
                    total = time.perf_counter() - t0
                base_t.append(total)
                base_fwd.append(tf)
                base_erank.append(te)
            else:
                t0 = time.perf_counter()
                res = onnx_near.score(
                    onnx_path, data=x_np, seed=0, threads=threads, device=device, batchnorm="running"
                )
                near_t.append(time.perf_counter() - t0)
                near_score = res.score
                for k, v in res.timings.items():
                    split.setdefault(k, []).append(v)
    last = {layer.tensor: layer.erank for layer in res.layers}  # the last onnx-near run's taps
    taps: dict[str, dict[str, Any]] = {
        key: {"onnx_near": last[layer.tensor], "pytorch": base_eranks[key],
              "rel_diff": rel(last[layer.tensor], base_eranks[key]), "shape": list(layer.shape)}
        for key, layer in by_key.items()
    }  # fmt: skip
    tap_diff = max(t["rel_diff"] for t in taps.values())
    log(f"in-process: baseline {median(base_t):.3f} s, onnx-near {median(near_t):.3f} s")

    # Whole process, interleaved: the CLI against the standalone script.
    spec_path, script_path = tmp / f"{case}.spec.json", tmp / "near_pytorch.py"
    spec = {"case": case, "data": str(data_path), "blocks": blocks, "samples": samples,
            "batch_size": batch, "svd_dtype": svd_name, "device": device}  # fmt: skip
    spec_path.write_text(json.dumps(spec))
    script_path.write_text(script_text or standalone_script())
    cli = [*onnx_near_cli(), "score", str(onnx_path), "--data", str(data_path), "--format", "json", "--seed", "0"]
    cli += ["--device", device]
    script = [sys.executable, str(script_path), str(spec_path)]
    proc: dict[str, dict[str, list[float]]] = {"script": {"t": [], "rss": []}, "cli": {"t": [], "rss": []}}
    proc_scores: dict[str, float] = {}
    for r in range(proc_runs):
        for side in ("script", "cli") if r % 2 == 0 else ("cli", "script"):
            wall, rss, out = run_process(script if side == "script" else cli, tmp, threads)
            proc[side]["t"].append(wall)
            proc[side]["rss"].append(rss)
            proc_scores[side] = float(json.loads(out)["score"])
    process: dict[str, Any] | None = None
    if proc_runs > 0:
        process = {
            "script_s": median(proc["script"]["t"]),
            "cli_s": median(proc["cli"]["t"]),
            "ratio": median(proc["cli"]["t"]) / median(proc["script"]["t"]),
            "script_peak_rss_mib": median(proc["script"]["rss"]),
            "cli_peak_rss_mib": median(proc["cli"]["rss"]),
            "scores": proc_scores,
        }
        log(f"whole process: script {process['script_s']:.2f} s, CLI {process['cli_s']:.2f} s")

    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    kept = sum(layer.shape[0] * layer.shape[1] * 4 for layer in ref.layers)
    return {
        "case": case,
        "taps": len(blocks),
        "window_samples": need,
        "samples_run": samples,
        "params": int(sum(p.numel() for p in model.parameters())),
        "baseline": {
            "batch_size": batch,
            "batch_forward_s": {str(b): median(v) for b, v in fwd.items()},
            "svd_dtype": svd_name,
            "svd": svd,
            "time_s": median(base_t),
            "forward_s": median(base_fwd),
            "erank_s": median(base_erank),
            "times_s": base_t,
            "score": base_score,
        },
        "onnx_near": {
            "time_s": median(near_t),
            "times_s": near_t,
            "split_s": {k: median(v) for k, v in split.items()},
            "score": near_score,
        },
        "ratio": median(near_t) / median(base_t),
        "ratios": [n / b for n, b in zip(near_t, base_t)],
        "process": process,
        "weights_mib": weights / 2**20,
        "matrices_mib": kept / 2**20,
        "score_rel_diff": rel(near_score, base_score),
        "max_tap_rel_diff": tap_diff,
        "process_score_rel_diff": rel(proc_scores["cli"], proc_scores["script"]) if process else None,
        "matching": tap_matching(model, by_key, blocks, geo),
        "tap_eranks": taps,
        "blocks": blocks,  # per tap: first row, row count, feature axis (onnx-near's rows)
        "case_s": time.perf_counter() - t_case,
    }


def tap_matching(
    model: nn.Module, by_key: dict[str, Any], blocks: dict[str, tuple[int, int, int]], geo: dict[str, Any]
) -> dict[str, Any]:
    """How the taps were matched (all one to one, else bench_case stopped), their feature
    axes, and which matrices are not square (the same rows on both sides)."""
    modules = dict(model.named_modules())
    calls = sorted(k for k in by_key if k not in modules and CALL_SUFFIX.match(k))
    attention = sorted(k for k in by_key if k.endswith((".in_proj", ".out_proj")) and k not in modules)
    return {
        "by_module_name": len(by_key) - len(calls) - len(attention),
        "by_kth_call": calls,
        "attention_projections": attention,
        "feature_axis": {
            "1": sum(1 for _, _, a in blocks.values() if a == 1),
            "-1": sum(1 for _, _, a in blocks.values() if a == -1),
        },
        "not_square": {k: list(layer.shape) for k, layer in by_key.items() if layer.shape[0] < layer.shape[1]},
    }


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "case", "taps", "base bs", "svd", "baseline s", "fwd / svd", "onnx-near s", "ratio",
        "load+rewrite / session / forward / erank", "CLI / script s", "proc ratio", "peak RSS script / CLI MiB",
        "weights / matrices MiB", "score rel diff",
    )  # fmt: skip
    rows = []
    for r in results:
        b, n, p, sp = r["baseline"], r["onnx_near"], r["process"], r["onnx_near"]["split_s"]
        diff = max(r["score_rel_diff"], r["process_score_rel_diff"] or 0.0)
        rows.append((
            r["case"], str(r["taps"]), str(b["batch_size"]), b["svd_dtype"].replace("float", "f"),
            f"{b['time_s']:.3f}", f"{b['forward_s']:.3f} / {b['erank_s']:.3f}", f"{n['time_s']:.3f}", f"{r['ratio']:.2f}",
            " / ".join(f"{sp.get(k, math.nan):.3f}" for k in ("load_rewrite", "session", "forward", "erank")),
            f"{p['cli_s']:.2f} / {p['script_s']:.2f}" if p else "-", f"{p['ratio']:.2f}" if p else "-",
            f"{p['script_peak_rss_mib']:.0f} / {p['cli_peak_rss_mib']:.0f}" if p else "-",
            f"{r['weights_mib']:.1f} / {r['matrices_mib']:.1f}",
            f"{diff:.1e}",
        ))  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    return "\n".join(lines)


def notes(r: dict[str, Any]) -> list[str]:
    """What a real-size case's table row does not say: the matching of its taps, the
    matrices that are not square, the taps whose effective ranks differ beyond RTOL."""
    m, case = r["matching"], r["case"]
    out = [
        f"{case}: {r['taps']} taps matched one to one ({m['by_module_name']} by module name"
        + (f", {len(m['by_kth_call'])} by a module's k-th call, e.g. {m['by_kth_call'][0]}" if m["by_kth_call"] else "")
        + (
            f", {len(m['attention_projections'])} nn.MultiheadAttention projections (in_proj/out_proj, which "
            "no module hook sees: taken by hooks on the attention module)"
            if m["attention_projections"]
            else ""
        )
        + f"); feature axis 1 for {m['feature_axis']['1']}, last for {m['feature_axis']['-1']}; "
        f"window {r['window_samples']} samples, {r['samples_run']} run"
    ]
    if m["not_square"]:
        shapes = sorted({f"{a}x{b}" for a, b in m["not_square"].values()})
        out.append(
            f"{case}: {len(m['not_square'])} tap(s) with fewer rows than columns ({', '.join(shapes)}): "
            + ", ".join(sorted(m["not_square"]))
        )
    bad = sorted(
        ((k, t) for k, t in r["tap_eranks"].items() if t["rel_diff"] > RTOL), key=lambda kt: -kt[1]["rel_diff"]
    )
    if bad:
        out.append(
            f"{case}: {len(bad)} tap(s) differ beyond {RTOL:.0e}: "
            + "; ".join(
                f"{k} onnx-near {t['onnx_near']:.4f} vs pytorch {t['pytorch']:.4f} ({t['rel_diff']:.1e})"
                for k, t in bad[:10]
            )
            + ("; …" if len(bad) > 10 else "")
        )
        rest = [t for k, t in r["tap_eranks"].items() if t["rel_diff"] <= RTOL]
        if rest:
            a, b = sum(t["onnx_near"] for t in rest), sum(t["pytorch"] for t in rest)
            out.append(
                f"{case}: the other {len(rest)} taps: sum {a:.4f} (onnx-near) vs {b:.4f} (pytorch), "
                f"rel diff {rel(a, b):.1e}"
            )
        attention = [k for k, _ in bad if k.endswith((".in_proj", ".out_proj"))]
        if attention:
            out.append(
                f"{case}: {len(attention)} of them are nn.MultiheadAttention projections: their tensors are "
                "sequence-first in the graph ((L, N, 3E) and (L·N, E)), and onnx-near takes the rows of such "
                "a tensor in its own order within each of its batches (token by token across the batch's "
                "samples), so its block holds other rows than the hooks' (consecutive samples' tokens) "
                "whenever its batch holds more than one sample"
            )
    else:
        out.append(f"{case}: every tap within {r['max_tap_rel_diff']:.1e} (relative)")
    svd = r["baseline"]["svd"]
    out.append(
        f"{case}: svdvals "
        + ", ".join(f"{n} {v['erank_s']:.2f} s (score rel diff {v['rel_diff']:.1e})" for n, v in svd.items())
        + f"; the case took {r['case_s']:.0f} s"
    )
    return out


def pin_cpus(n: int) -> None:
    """Keep this process (every thread it has, and those it will start) on its first ``n`` CPUs."""
    if not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))[:n]
    for tid in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["0"]:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), cpus)


def git_state() -> str:
    """The commit of the checkout, with "+dirty" when onnx_near/ has uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "onnx_near"], cwd=root, capture_output=True, text=True)
    except OSError:
        return "?"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if head.returncode == 0 else "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument(
        "--cases",
        default=None,
        help=f"comma-separated, from {', '.join(BUILDERS)} (default: {','.join(SMALL_CASES)})",
    )
    ap.add_argument(
        "--real-size", action="store_true", help=f"the real-size cases: --cases {','.join(REAL_SIZE_CASES)}"
    )
    ap.add_argument("--runs", type=int, default=None, help="in-process runs per side (default 7; 3 with --quick)")
    ap.add_argument(
        "--proc-runs",
        type=int,
        default=None,
        help="whole-process runs per side (default 5; 2 with --quick; 0: none)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads (and CPUs) for both sides: torch, onnxruntime and BLAS (default 1; 0: each library's default)",
    )
    ap.add_argument("--quick", action="store_true", help="fewer runs and batch sizes (~2-3 minutes)")
    ap.add_argument(
        "--samples",
        type=int,
        default=None,
        help="real-size cases only: samples in the data, hence the window (default: BERT 128; the image models "
        "the square window of every tap with more than one row per sample; 1000 makes their heads square too)",
    )
    ap.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where both sides run: cuda puts the PyTorch model and onnx-near (onnxruntime-gpu, cupy) on the GPU",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this file")
    args = ap.parse_args()
    if args.real_size and args.cases:
        ap.error("--real-size is --cases " + ",".join(REAL_SIZE_CASES) + ": give one of them")
    chosen = ",".join(REAL_SIZE_CASES) if args.real_size else (args.cases or ",".join(SMALL_CASES))
    cases = [c.strip() for c in chosen.split(",") if c.strip()]
    unknown = [c for c in cases if c not in BUILDERS]
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(BUILDERS)}")
    if args.samples is not None and args.samples < 1:
        ap.error("--samples must be at least 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        pin_cpus(args.threads)
    runs = args.runs if args.runs is not None else (3 if args.quick else 7)
    proc_runs = args.proc_runs if args.proc_runs is not None else (2 if args.quick else 5)
    if runs < 1 or proc_runs < 0:
        ap.error("--runs must be at least 1 and --proc-runs at least 0")

    commit = git_state()  # before the run: the code measured
    # The standalone script comes from this file's source, read now: inspect reads the file
    # again, and an edit during a long run would shift the functions' lines.
    script_text = standalone_script()
    t_start = time.perf_counter()
    results = []
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="onnx-near-bench-") as tmp:
        for case in cases:
            with threadpool_limits(args.threads if args.threads > 0 else None):
                try:
                    results.append(
                        bench_case(
                            case,
                            Path(tmp),
                            runs,
                            proc_runs,
                            args.quick,
                            args.threads,
                            args.device,
                            args.samples,
                            script_text,
                        )
                    )
                except RuntimeError as e:  # taps that do not match, a window that does not start at 0…
                    failed[case] = str(e)
                    print(f"  [{case}] FAILED: {e}", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - t_start

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": getattr(sys.modules.get("torchvision"), "__version__", None),
        "transformers": getattr(sys.modules.get("transformers"), "__version__", None),
        "onnxruntime": ort.__version__,
        "onnx_near": getattr(onnx_near, "__version__", "?"),
        "onnx_near_commit": commit,
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "runs": runs,
        "proc_runs": proc_runs,
        "elapsed_s": elapsed,
    }
    if results:
        print(table(results))
    libs = "".join(f", {k} {env[k]}" for k in ("torchvision", "transformers") if env[k])
    print(
        f"\nmedians of {runs} in-process and {proc_runs} whole-process runs per side, interleaved; "
        f"ratio = onnx-near / baseline (< 1: onnx-near faster); {env['cpus']} CPUs, torch {env['torch']}{libs} "
        f"and onnxruntime {env['onnxruntime']}, "
        + (f"{args.threads} thread(s) and CPU(s) per side" if args.threads > 0 else "each library's default threads")
        + f"; device {args.device}; onnx-near {env['onnx_near_commit']}; took {elapsed:.0f} s"
    )
    for r in results:
        if r["case"] in REAL_SIZE_CASES or r["max_tap_rel_diff"] > RTOL:
            print("\n" + "\n".join(notes(r)))
    for case, why in failed.items():
        print(f"\n{case} FAILED: {why}")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "results": results, "failed": failed}, indent=2))
    if failed or any(max(r["score_rel_diff"], r["process_score_rel_diff"] or 0.0) > RTOL for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
