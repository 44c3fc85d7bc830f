"""Goldens for ``rank --proxies meco,swap``: MeCo and SWAP as their authors compute them in PyTorch.

    /work/bench/bin/python models/make_proxy_goldens.py      # from the repository root (torch needed)

One small untrained CNN (Conv-BN-ReLU, a stride-2 Conv-BN-ReLU, Conv-ReLU, global average
pooling, Linear), exported to ONNX with BatchNorm kept, and one batch of 16 inputs.  On the
PyTorch side, in training mode (BatchNorm normalising with the batch's statistics, as both
papers' code runs it), one forward pass of the batch with

* MeCo (Jiang et al., NeurIPS 2023; github.com/HamsterMimi/MeCo,
  ``correlation/NAS_Bench_201.py``): a forward hook on every module of ``named_modules()``
  (the network itself included) taking ``data_output[0]`` (the first sample), reshaped to
  (its first axis, −1), ``torch.corrcoef``, NaN and ±Inf set to 0, the minimum real part of
  ``torch.linalg.eig``; NaN and Inf results dropped, the rest summed.
* SWAP (Peng et al., ICLR 2024; github.com/pym1024/SWAP, ``src/metrics/swap.py``): a forward
  hook on every ``nn.ReLU`` whose input is 4-D, the outputs viewed as (samples, −1) and
  concatenated, ``torch.sign``, transposed, the number of unique rows.

The network is built so that the authors' module hooks see exactly onnx-near's taps (no
container module repeats a layer's output, no pooling layer with a feature map: the global
pooling's 1×1 map and the Linear's output give 0), so the totals must agree.  Written to
``models/proxy_goldens/``: ``small_cnn.onnx``, ``small_cnn.inputs.npy``, ``small_cnn.proxies.json``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "models" / "proxy_goldens"
BATCH = 16


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(8, 12, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.conv2(y)))
        y = self.relu3(self.conv3(y))
        return self.fc(torch.flatten(self.pool(y), 1))


def meco_authors(net: nn.Module, x: torch.Tensor) -> tuple[float, dict[str, float]]:
    """The authors' get_score: hooks on every named module, the first sample of each output
    (also returned per module, in the order they ran)."""
    results: list[torch.Tensor] = []
    names: list[str] = []

    def hook(module: nn.Module, _inp: object, out: torch.Tensor) -> None:
        names.append(next(n for n, m in net.named_modules() if m is module) or "<network>")
        fea = out[0].clone().detach()
        fea = fea.reshape(fea.shape[0], -1)
        with warnings.catch_warnings():  # a 1×1 map or a dense output: no degrees of freedom, NaN → 0
            warnings.simplefilter("ignore")
            corr = torch.corrcoef(fea)
        corr[torch.isnan(corr)] = 0
        corr[torch.isinf(corr)] = 0
        values = torch.linalg.eig(corr)[0]
        results.append(torch.min(torch.real(values)))

    handles = [m.register_forward_hook(hook) for _, m in net.named_modules()]
    net(x)
    for h in handles:
        h.remove()
    r = torch.tensor(results)
    r = r[torch.logical_not(torch.isnan(r))]
    r = r[torch.logical_not(torch.isinf(r))]
    return float(torch.sum(r)), {n: float(v) for n, v in zip(names, results)}


def swap_authors(net: nn.Module, x: torch.Tensor) -> int:
    """The authors' SWAP: ReLU outputs (4-D inputs), flattened per sample, signs, unique units."""
    features: list[torch.Tensor] = []

    def hook(_module: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if isinstance(inp, tuple) and len(inp[0].size()) == 4:
            features.append(out.detach())

    handles = [m.register_forward_hook(hook) for _, m in net.named_modules() if isinstance(m, nn.ReLU)]
    net(x)
    for h in handles:
        h.remove()
    activations = torch.sign(torch.cat([f.view(x.size(0), -1) for f in features], 1))
    return int(torch.unique(activations.T, dim=0).size(0))


def main() -> None:
    torch.manual_seed(0)
    net = SmallCNN()
    x = torch.randn(BATCH, 3, 8, 8)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "small_cnn.onnx"
    net.eval()
    torch.onnx.export(
        net,
        (x,),
        str(path),
        dynamo=False,
        opset_version=17,
        do_constant_folding=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    proto = onnx.load(path)
    assert "BatchNormalization" in {n.op_type for n in proto.graph.node}
    np.save(OUT / "small_cnn.inputs.npy", x.numpy())
    net.train()  # the batch's statistics, as the authors' code runs (it never calls eval())
    with torch.no_grad():
        meco, per_module = meco_authors(net, x)
        swap = swap_authors(net, x)
    golden = {
        "note": "made by models/make_proxy_goldens.py with torch " + torch.__version__,
        "model": path.name,
        "inputs": "small_cnn.inputs.npy",
        "batch": BATCH,
        "meco": meco,
        "meco_per_module": per_module,
        "swap": swap,
    }
    (OUT / "small_cnn.proxies.json").write_text(json.dumps(golden, indent=1) + "\n")
    print(f"MeCo {meco:.6f}, SWAP {swap} (batch of {BATCH})")


if __name__ == "__main__":
    main()
