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
* **onnx-near in-process**: ``onnx_near.score(path, data=X, seed=0)``, session creation
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

``--device cuda`` runs both sides on the GPU: the PyTorch model and its ``svdvals`` on CUDA
(timings synchronised), onnx-near with onnxruntime-gpu and cupy (it stops if the session
did not get the CUDA provider).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import os
import platform
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


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "mlp": make_mlp,
    "cnn": make_cnn,
    "transformer": make_transformer,
    "resnet18": make_resnet18,
}

# ============================================================================ the PyTorch way

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)
ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Softplus, nn.Mish)


def hooked_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules the authors' code hooks: every weighted module and every activation module."""
    return {n: m for n, m in model.named_modules() if isinstance(m, WEIGHTED + ACTIVATIONS)}


def feature_last(t: torch.Tensor) -> torch.Tensor:
    """Features on the last axis: channels (axis 1) for N×C×H×W tensors, else already last."""
    return t.movedim(1, -1) if t.dim() == 4 else t


def erank_torch(matrix: torch.Tensor, svd_dtype: torch.dtype) -> float:
    """Effective rank: singular values in ``svd_dtype``, entropy in float64."""
    s = torch.linalg.svdvals(matrix.to(svd_dtype)).double()
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * torch.log(p)).sum()))


def pytorch_near(
    model: nn.Module,
    x: torch.Tensor,
    blocks: dict[str, tuple[int, int]],
    samples: int,
    batch_size: int,
    svd_dtype: torch.dtype,
) -> tuple[float, dict[str, float], float, float]:
    """NEAR the PyTorch way over samples ``0 .. samples`` of ``x``.

    ``blocks`` maps a module name to the (first row, row count) of its matrix within the
    row sequence of those samples.  Returns (score, per-module erank, forward s, erank s).
    """
    modules = dict(model.named_modules())
    pieces: dict[str, list[torch.Tensor]] = {name: [] for name in blocks}
    first = [0]  # index of the current batch's first sample

    def make_hook(name: str) -> Callable[..., None]:
        start, count = blocks[name]

        def hook(_module: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
            t = feature_last(out)
            rps = t[0].numel() // t.shape[-1]  # rows per sample
            lo = first[0]
            r0, r1 = max(start, lo * rps), min(start + count, (lo + t.shape[0]) * rps)
            if r0 >= r1:
                return
            s0, s1 = r0 // rps - lo, (r1 - 1) // rps - lo + 1  # only the samples holding the block
            rows = t[s0:s1].reshape(-1, t.shape[-1])
            offset = (lo + s0) * rps
            pieces[name].append(rows[r0 - offset : r1 - offset].clone())

        return hook

    handles = [modules[name].register_forward_hook(make_hook(name)) for name in blocks]
    try:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for lo in range(0, samples, batch_size):
                first[0] = lo
                model(x[lo : min(lo + batch_size, samples)])
        if x.is_cuda:
            torch.cuda.synchronize()
        t_forward = time.perf_counter() - t0
    finally:
        for h in handles:
            h.remove()
    t0 = time.perf_counter()
    eranks = {name: erank_torch(torch.cat(p), svd_dtype) for name, p in pieces.items()}
    t_erank = time.perf_counter() - t0
    return sum(eranks.values()), eranks, t_forward, t_erank


# ============================================================================ end of the standalone part

SCRIPT_MAIN = """

if __name__ == "__main__":
    import json
    import sys

    spec = json.load(open(sys.argv[1]))
    model = BUILDERS[spec["case"]]().to(spec["device"])
    x = torch.from_numpy(np.load(spec["data"])).to(spec["device"])
    blocks = {k: tuple(v) for k, v in spec["blocks"].items()}
    score, _, _, _ = pytorch_near(model, x, blocks, spec["samples"], spec["batch_size"], getattr(torch, spec["svd_dtype"]))
    print(json.dumps({"score": score}))
"""


def standalone_script() -> str:
    """The models and the PyTorch way as one script, with the same source as above."""
    parts: list[object] = [
        randomize_batchnorm, make_mlp, conv_bn_relu, NatsCNN, make_cnn, SelfAttention, EncoderLayer,
        Encoder, make_transformer, BasicBlock, ResNet18, make_resnet18,
    ]  # fmt: skip
    head = (
        '"""NEAR the PyTorch way (written by benchmarks/vs_pytorch.py)."""\n'
        "from __future__ import annotations\n\nimport math\nimport time\nfrom typing import Any, Callable\n\n"
        "import numpy as np\nimport torch\nfrom torch import nn\n\n"
    )
    body = "\n\n".join(inspect.getsource(p) for p in parts)  # type: ignore[arg-type]
    tail = "\n\n".join(inspect.getsource(p) for p in (hooked_modules, feature_last, erank_torch, pytorch_near))
    builders = "BUILDERS = {" + ", ".join(f'"{k}": {f.__name__}' for k, f in BUILDERS.items()) + "}\n"
    consts = (
        f"WEIGHTED = ({', '.join('nn.' + c.__name__ for c in WEIGHTED)})\n"
        f"ACTIVATIONS = ({', '.join('nn.' + c.__name__ for c in ACTIVATIONS)})\n"
    )
    return head + body + "\n\n" + builders + "\n" + consts + "\n\n" + tail + SCRIPT_MAIN


# ============================================================================ harness

SAMPLE_SHAPES = {"mlp": (784,), "cnn": (3, 32, 32), "transformer": (256, 256), "resnet18": (3, 224, 224)}
BATCH_CANDIDATES = (1024, 256, 64, 16, 4, 1)


def export(model: nn.Module, sample: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        _export(model, sample, path)
    proto = onnx.load(str(path))
    if proto.ir_version > MAX_IR_VERSION:
        proto.ir_version = MAX_IR_VERSION
        onnx.save(proto, str(path))


def _export(model: nn.Module, sample: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        model,
        (sample,),
        str(path),
        dynamo=False,
        opset_version=OPSET,
        do_constant_folding=False,  # keeps BatchNorm a separate op, as on the PyTorch side
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
    )


def module_path(onnx_node_name: str) -> str:
    """The PyTorch module that a TorchScript-exported node came from.

    ``/layer2/layer2.0/downsample/downsample.0/Conv`` → ``layer2.0.downsample.0``: a scope
    component that extends the previous one (children of a Sequential) replaces it.
    """
    parts: list[str] = []
    for comp in onnx_node_name.strip("/").split("/")[:-1]:
        if parts and comp.startswith(parts[-1] + "."):
            parts[-1] = comp
        else:
            parts.append(comp)
    return ".".join(parts)


def rows_per_sample(model: nn.Module, sample: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Per hooked module: (rows per sample, columns), from one sample."""
    out: dict[str, tuple[int, int]] = {}
    handles = []
    for name, m in hooked_modules(model).items():

        def hook(_m: nn.Module, _i: Any, o: torch.Tensor, name: str = name) -> None:
            t = feature_last(o)
            out[name] = (t[0].numel() // t.shape[-1], t.shape[-1])

        handles.append(m.register_forward_hook(hook))
    with torch.inference_mode():
        model(sample)
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
    case: str, tmp: Path, runs: int, proc_runs: int, quick: bool, threads: int, device: str = "cpu"
) -> dict[str, Any]:
    log = lambda *a: print(f"  [{case}]", *a, file=sys.stderr, flush=True)  # noqa: E731
    model = BUILDERS[case]()
    shape = SAMPLE_SHAPES[case]
    geo = rows_per_sample(model, torch.zeros((1, *shape)))
    need = max(math.ceil(cols / rps) for rps, cols in geo.values())  # the window of a square score
    x_np = np.random.default_rng(0).standard_normal((need, *shape), dtype=np.float32)
    x = torch.from_numpy(x_np)
    onnx_path, data_path = tmp / f"{case}.onnx", tmp / f"{case}.x.npy"
    export(model, x[:1], onnx_path)
    np.save(data_path, x_np)
    model, x = model.to(device), x.to(device)  # the baseline on the same device as onnx-near

    # One onnx-near result gives the rows; it also warms onnx-near up.
    ref = onnx_near.score(onnx_path, data=x_np, seed=0, threads=threads, device=device)
    if device == "cuda" and ref.provider != "CUDAExecutionProvider":
        raise RuntimeError(f"{case}: onnx-near ran on {ref.provider}, not CUDA: is onnxruntime-gpu installed?")
    by_module = {module_path(layer.name): layer for layer in ref.layers}
    hooked = set(geo)
    if len(ref.layers) != len(geo) or set(by_module) != hooked:
        raise RuntimeError(
            f"{case}: onnx-near has {len(ref.layers)} taps, the hooks {len(geo)}; "
            f"only onnx-near: {sorted(set(by_module) - hooked)}, only hooks: {sorted(hooked - set(by_module))}"
        )
    w0 = ref.window_starts[0]
    if w0 != 0:
        raise RuntimeError(f"{case}: the window starts at sample {w0}, expected 0 with exactly {need} samples")
    blocks: dict[str, tuple[int, int]] = {}
    for name, layer in by_module.items():
        _rps, cols = geo[name]
        if layer.shape[1] != cols:
            raise RuntimeError(f"{case}: {name} has {cols} columns in PyTorch, {layer.shape[1]} in onnx-near")
        blocks[name] = (layer.row_starts[0], layer.shape[0])
    samples = max((start + count - 1) // geo[name][0] + 1 for name, (start, count) in blocks.items())
    log(f"{len(blocks)} taps, window {need} samples, {samples} run")

    # Baseline batch size: the fastest forward pass among the candidates.
    candidates = sorted({min(b, samples) for b in BATCH_CANDIDATES}, reverse=True)
    if quick:
        candidates = candidates[:3]
    fwd: dict[int, list[float]] = {b: [] for b in candidates}
    pytorch_near(model, x, blocks, samples, candidates[0], torch.float32)  # warm-up
    for _ in range(1 if quick else 2):
        for b in candidates:
            fwd[b].append(pytorch_near(model, x, blocks, samples, b, torch.float32)[2])
    batch = min(candidates, key=lambda b: median(fwd[b]))
    log("baseline forward s by batch size: " + ", ".join(f"{b}: {median(fwd[b]):.3f}" for b in candidates))

    # SVD precision: the faster of float32 / float64 that still agrees with onnx-near.
    svd: dict[str, dict[str, float]] = {}
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
    for r in range(runs):
        for side in ("base", "near") if r % 2 == 0 else ("near", "base"):
            if side == "base":
                t0 = time.perf_counter()
                base_score, base_eranks, tf, te = pytorch_near(model, x, blocks, samples, batch, svd_dtype)
                base_t.append(time.perf_counter() - t0)
                base_fwd.append(tf)
                base_erank.append(te)
            else:
                t0 = time.perf_counter()
                res = onnx_near.score(onnx_path, data=x_np, seed=0, threads=threads, device=device)
                near_t.append(time.perf_counter() - t0)
                near_score = res.score
                for k, v in res.timings.items():
                    split.setdefault(k, []).append(v)
    tap_diff = max(rel(by_module[n].erank, base_eranks[n]) for n in blocks)
    log(f"in-process: baseline {median(base_t):.3f} s, onnx-near {median(near_t):.3f} s")

    # Whole process, interleaved: the CLI against the standalone script.
    spec_path, script_path = tmp / f"{case}.spec.json", tmp / "near_pytorch.py"
    spec = {"case": case, "data": str(data_path), "blocks": blocks, "samples": samples,
            "batch_size": batch, "svd_dtype": svd_name, "device": device}  # fmt: skip
    spec_path.write_text(json.dumps(spec))
    script_path.write_text(standalone_script())
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
    log(f"whole process: script {median(proc['script']['t']):.2f} s, CLI {median(proc['cli']['t']):.2f} s")

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
        "process": {
            "script_s": median(proc["script"]["t"]),
            "cli_s": median(proc["cli"]["t"]),
            "ratio": median(proc["cli"]["t"]) / median(proc["script"]["t"]),
            "script_peak_rss_mib": median(proc["script"]["rss"]),
            "cli_peak_rss_mib": median(proc["cli"]["rss"]),
            "scores": proc_scores,
        },
        "weights_mib": weights / 2**20,
        "matrices_mib": kept / 2**20,
        "score_rel_diff": rel(near_score, base_score),
        "max_tap_rel_diff": tap_diff,
        "process_score_rel_diff": rel(proc_scores["cli"], proc_scores["script"]),
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
        rows.append((
            r["case"], str(r["taps"]), str(b["batch_size"]), b["svd_dtype"].replace("float", "f"),
            f"{b['time_s']:.3f}", f"{b['forward_s']:.3f} / {b['erank_s']:.3f}", f"{n['time_s']:.3f}", f"{r['ratio']:.2f}",
            f"{sp['load_rewrite']:.3f} / {sp['session']:.3f} / {sp['forward']:.3f} / {sp['erank']:.3f}",
            f"{p['cli_s']:.2f} / {p['script_s']:.2f}", f"{p['ratio']:.2f}",
            f"{p['script_peak_rss_mib']:.0f} / {p['cli_peak_rss_mib']:.0f}",
            f"{r['weights_mib']:.1f} / {r['matrices_mib']:.1f}",
            f"{max(r['score_rel_diff'], r['process_score_rel_diff']):.1e}",
        ))  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    return "\n".join(lines)


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
    ap.add_argument("--cases", default=",".join(BUILDERS), help=f"comma-separated, from {', '.join(BUILDERS)}")
    ap.add_argument("--runs", type=int, default=None, help="in-process runs per side (default 7; 3 with --quick)")
    ap.add_argument(
        "--proc-runs", type=int, default=None, help="whole-process runs per side (default 5; 2 with --quick)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads (and CPUs) for both sides: torch, onnxruntime and BLAS (default 1; 0: each library's default)",
    )
    ap.add_argument("--quick", action="store_true", help="fewer runs and batch sizes (~2-3 minutes)")
    ap.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where both sides run: cuda puts the PyTorch model and onnx-near (onnxruntime-gpu, cupy) on the GPU",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this file")
    args = ap.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in BUILDERS]
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(BUILDERS)}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        pin_cpus(args.threads)
    runs = args.runs or (3 if args.quick else 7)
    proc_runs = args.proc_runs or (2 if args.quick else 5)

    commit = git_state()  # before the run: the code measured
    t_start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="onnx-near-bench-") as tmp:
        for case in cases:
            with threadpool_limits(args.threads if args.threads > 0 else None):
                results.append(bench_case(case, Path(tmp), runs, proc_runs, args.quick, args.threads, args.device))
    elapsed = time.perf_counter() - t_start

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
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
    print(table(results))
    print(
        f"\nmedians of {runs} in-process and {proc_runs} whole-process runs per side, interleaved; "
        f"ratio = onnx-near / baseline (< 1: onnx-near faster); {env['cpus']} CPUs, torch {env['torch']} "
        f"and onnxruntime {env['onnxruntime']}, "
        + (f"{args.threads} thread(s) and CPU(s) per side" if args.threads > 0 else "each library's default threads")
        + f"; device {args.device}; onnx-near {env['onnx_near_commit']}; took {elapsed:.0f} s"
    )
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "results": results}, indent=2))


if __name__ == "__main__":
    main()
