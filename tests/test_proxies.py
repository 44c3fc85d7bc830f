"""The proxies beside NEAR (onnx_near/proxies.py): MeCo and SWAP as the authors' code computes
them (PyTorch goldens from models/make_proxy_goldens.py), and NEAR left as it is.  The
measures themselves: test_meco.py, test_swap.py; their columns in the rank report: test_rank.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import onnx_near

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "models" / "proxy_goldens"
DIGITS = ROOT / "benchmarks" / "digits"


def test_meco_and_swap_match_the_authors_code_on_a_pytorch_model() -> None:
    """A small CNN whose modules are exactly its taps: MeCo (all module hooks, first sample,
    torch.corrcoef, min real eigenvalue) and SWAP (ReLU hooks, torch.sign, torch.unique) computed
    by the authors' code in PyTorch's training mode equal onnx-near's with --batchnorm batch."""
    golden = json.loads((GOLDEN / "small_cnn.proxies.json").read_text())
    r = onnx_near.score(
        GOLDEN / golden["model"],
        data=GOLDEN / golden["inputs"],
        batchnorm="batch",
        bn_batch=golden["batch"],
        proxies=("meco", "swap"),
    )
    assert r.proxy_batch == golden["batch"]
    assert r.proxies["meco"] == pytest.approx(golden["meco"], abs=1e-5)
    assert r.proxies["swap"] == golden["swap"]


def test_proxies_leave_near_as_it_is_and_say_what_they_cannot_measure() -> None:
    """Asking for the proxies changes no NEAR value; an MLP has no MeCo, a SiLU net no SWAP (NaN, with a note)."""
    data = DIGITS / "digits_inputs.npy"
    model = DIGITS / "models" / "mlp_d2_w64_silu_bn.onnx"
    plain = onnx_near.score(model, data=data, batchnorm="batch", seed=2)
    both = onnx_near.score(model, data=data, batchnorm="batch", seed=2, proxies=("meco", "swap"))
    assert plain.scores == both.scores and [x.erank for x in plain.layers] == [x.erank for x in both.layers]
    assert math.isnan(both.proxies["meco"]) and math.isnan(both.proxies["swap"])
    assert any(w.startswith("MeCo:") for w in both.warnings) and any(w.startswith("SWAP:") for w in both.warnings)
    cnn = onnx_near.score(DIGITS / "models" / "cnn_d2_c4_relu_flatten.onnx", data=data, proxies=("swap",))
    assert cnn.proxy_batch == 64 and 1 <= cnn.proxies["swap"] <= 2**64
