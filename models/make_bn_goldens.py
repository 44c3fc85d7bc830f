"""Goldens for ``--batchnorm batch``: each BatchNorm's output in PyTorch's training-mode forward.

    /work/bench/bin/python models/make_bn_goldens.py      # from the repository root (torch needed)

For each case — the corpus's BatchNorm models, ``models/cnn.onnx`` and two of the digits
benchmark's (a dense (N, C) BatchNorm1d and a (N, C, H, W) BatchNorm2d) — the ONNX graph is
run node by node in PyTorch, on the first samples of the case's own inputs, every
BatchNormalization as ``torch.nn.functional.batch_norm(..., training=True)``: the kernel of
``nn.BatchNorm*d`` in training mode (mean and biased variance of the batch over the batch
and spatial axes, the node's ε, then its scale and bias).  The same interpreter with
``training=False`` must give onnxruntime's outputs of the untouched model (1e-5), which shows
it runs the same network.  Written to ``models/bn_goldens/<case>.npz``: the inputs, every
BatchNorm's input and output and the graph outputs, float32; tests/test_batchnorm.py compares onnx-near's
rewritten graph (onnxruntime) with them, without torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "models" / "bn_goldens"
DIGITS = ROOT / "benchmarks" / "digits"

# case name → (model, inputs file, samples): the samples are the batch of one forward pass.
CASES: dict[str, tuple[Path, Path, int]] = {
    "torchscript_conv_bn_relu": (
        ROOT / "models/corpus/torch-torchscript/conv_bn_relu.onnx",
        ROOT / "models/corpus/torch-torchscript/conv_bn_relu.inputs.npz",
        4,
    ),
    "dynamo_conv_bn_relu": (
        ROOT / "models/corpus/torch-dynamo/conv_bn_relu.onnx",
        ROOT / "models/corpus/torch-dynamo/conv_bn_relu.inputs.npz",
        4,
    ),
    "torchscript_resblock": (
        ROOT / "models/corpus/torch-torchscript/resblock.onnx",
        ROOT / "models/corpus/torch-torchscript/resblock.inputs.npz",
        4,
    ),
    "dynamo_resblock": (
        ROOT / "models/corpus/torch-dynamo/resblock.onnx",
        ROOT / "models/corpus/torch-dynamo/resblock.inputs.npz",
        4,
    ),
    "cnn": (ROOT / "models/cnn.onnx", ROOT / "models/cnn.inputs.npz", 2),
    "digits_mlp_bn": (DIGITS / "models/mlp_d2_w64_silu_bn.onnx", DIGITS / "digits_inputs.npy", 16),
    "digits_cnn_bn": (DIGITS / "models/cnn_d2_c16_elu_bn_pool_flatten.onnx", DIGITS / "digits_inputs.npy", 4),
}


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, a: dict[str, Any]) -> torch.Tensor:
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise NotImplementedError("auto_pad")
    d = x.dim() - 2
    pads = list(a.get("pads", [0] * 2 * d))
    begin, end = pads[:d], pads[d:]
    if begin != end:
        x = F.pad(x, [p for k in reversed(range(d)) for p in (begin[k], end[k])])
        begin = [0] * d
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[d]
    return fn(x, w, b, a.get("strides", [1] * d), begin, a.get("dilations", [1] * d), a.get("group", 1))


def _maxpool(x: torch.Tensor, a: dict[str, Any]) -> torch.Tensor:
    d = x.dim() - 2
    pads = list(a.get("pads", [0] * 2 * d))
    if pads[:d] != pads[d:] or a.get("ceil_mode", 0) or a.get("dilations", [1] * d) != [1] * d:
        raise NotImplementedError("MaxPool with asymmetric pads, ceil_mode or dilations")
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[d]
    return fn(x, a["kernel_shape"], a.get("strides", a["kernel_shape"]), pads[:d])


def _gemm(a_: torch.Tensor, b_: torch.Tensor, c: torch.Tensor | None, a: dict[str, Any]) -> torch.Tensor:
    a_ = a_.T if a.get("transA", 0) else a_
    b_ = b_.T if a.get("transB", 0) else b_
    y = a.get("alpha", 1.0) * (a_ @ b_)
    return y + a.get("beta", 1.0) * c if c is not None else y


def _flatten(x: torch.Tensor, a: dict[str, Any]) -> torch.Tensor:
    k = a.get("axis", 1) % x.dim() if x.dim() else 0
    return x.reshape(int(np.prod(x.shape[:k])), -1)


def _shape(x: torch.Tensor, a: dict[str, Any]) -> torch.Tensor:
    s = list(x.shape)
    return torch.tensor(s[a.get("start", 0) : a.get("end", len(s))], dtype=torch.int64)


def run_graph(model: onnx.ModelProto, feeds: dict[str, np.ndarray], training: bool) -> dict[str, torch.Tensor]:
    """Every tensor of ``model``'s main graph computed by PyTorch; BatchNormalization in
    training mode (the batch's statistics) when ``training``, else with its running ones."""
    g = model.graph
    env: dict[str, torch.Tensor] = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in g.initializer}
    env.update({k: torch.from_numpy(v) for k, v in feeds.items()})
    unary: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "Relu": torch.relu,
        "Sigmoid": torch.sigmoid,
        "Tanh": torch.tanh,
        "Erf": torch.erf,
        "Softplus": F.softplus,
        "Identity": lambda t: t,
    }
    binary: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "Add": torch.add,
        "Sub": torch.sub,
        "Mul": torch.mul,
        "Div": torch.div,
    }
    for n in g.node:
        a = attrs(n)
        x = [env[i] if i else None for i in n.input]
        op = n.op_type
        if op in unary:
            y = unary[op](x[0])
        elif op in binary:
            y = binary[op](x[0], x[1])
        elif op == "Conv":
            y = _conv(x[0], x[1], x[2] if len(x) > 2 else None, a)
        elif op == "BatchNormalization":
            if a.get("training_mode", 0):
                raise NotImplementedError("a BatchNormalization already in training mode")
            eps = a.get("epsilon", 1e-5)
            if training:
                y = F.batch_norm(x[0], None, None, x[1], x[2], training=True, eps=eps)
            else:
                y = F.batch_norm(x[0], x[3], x[4], x[1], x[2], training=False, eps=eps)
        elif op == "LeakyRelu":
            y = F.leaky_relu(x[0], a.get("alpha", 0.01))
        elif op == "Elu":
            y = F.elu(x[0], a.get("alpha", 1.0))
        elif op == "Gemm":
            y = _gemm(x[0], x[1], x[2] if len(x) > 2 else None, a)
        elif op == "MatMul":
            y = x[0] @ x[1]
        elif op == "Flatten":
            y = _flatten(x[0], a)
        elif op == "GlobalAveragePool":
            y = x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True)
        elif op == "MaxPool":
            y = _maxpool(x[0], a)
        elif op == "Reshape":
            y = x[0].reshape([int(d) if d != 0 else x[0].shape[k] for k, d in enumerate(x[1].tolist())])
        elif op == "Constant":
            y = (
                torch.from_numpy(numpy_helper.to_array(a["value"]).copy())
                if "value" in a
                else torch.tensor(a["value_ints"], dtype=torch.int64)
            )
        elif op == "Shape":
            y = _shape(x[0], a)
        elif op == "Expand":
            y = x[0] * torch.ones(x[1].tolist(), dtype=x[0].dtype)
        elif op == "CastLike":
            y = x[0].to(x[1].dtype)
        else:
            raise NotImplementedError(f"{op} ({n.name})")
        env[n.output[0]] = y
    return env


def feeds_of(model: onnx.ModelProto, inputs: Path, samples: int) -> dict[str, np.ndarray]:
    names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if inputs.suffix == ".npy":
        return {names[0]: np.ascontiguousarray(np.load(inputs)[:samples])}
    data = np.load(inputs)
    return {k: np.ascontiguousarray(data[k][:samples]) for k in names}


def make_case(name: str, path: Path, inputs: Path, samples: int) -> dict[str, Any]:
    model = onnx.load(path)
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    feeds = feeds_of(model, inputs, samples)
    outputs = [o.name for o in model.graph.output]
    session = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    want = dict(zip(outputs, session.run(outputs, feeds)))
    with torch.no_grad():
        running = run_graph(model, feeds, training=False)
        for o in outputs:  # the interpreter is the network onnxruntime runs
            np.testing.assert_allclose(running[o].numpy(), want[o], rtol=1e-5, atol=1e-5)
        batch = run_graph(model, feeds, training=True)
    nodes = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert nodes, f"{name}: no BatchNormalization"
    bns = [n.output[0] for n in nodes]
    arrays: dict[str, np.ndarray] = {f"input_{k}": v for k, v in enumerate(feeds.values())}
    arrays |= {f"bn_{k}": batch[t].numpy().astype(np.float32) for k, t in enumerate(bns)}
    arrays |= {f"bn_input_{k}": batch[n.input[0]].numpy().astype(np.float32) for k, n in enumerate(nodes)}
    arrays |= {f"output_{k}": batch[t].numpy().astype(np.float32) for k, t in enumerate(outputs)}
    arrays["input_names"] = np.array(list(feeds))
    arrays["bn_names"] = np.array(bns)
    arrays["output_names"] = np.array(outputs)
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / f"{name}.npz", **arrays)
    return {
        "model": str(path.relative_to(ROOT)),
        "inputs": str(inputs.relative_to(ROOT)),
        "samples": samples,
        "batchnorms": len(bns),
    }


def main() -> None:
    torch.manual_seed(0)
    index = {name: make_case(name, *case) for name, case in CASES.items()}
    note = "made by models/make_bn_goldens.py with torch " + torch.__version__
    (OUT / "index.json").write_text(json.dumps({"note": note, "cases": index}, indent=1) + "\n")
    for name, c in index.items():
        print(f"{name}: {c['batchnorms']} BatchNorms, {c['samples']} samples ({c['model']})")


if __name__ == "__main__":
    main()
