"""MeCo and SWAP: closed forms, hand-computed cases, the authors' definitions (PyTorch goldens
from models/make_proxy_goldens.py), and their columns in the rank report."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import onnx_near
from onnx_near.cli import main
from onnx_near.config import computed_proxies, parse_proxies
from onnx_near.errors import ConfigError
from onnx_near.meco import correlation_matrix, layer_meco, meco
from onnx_near.rank import rank_average, summarise
from onnx_near.results import ResultRow
from onnx_near.swap import distinct_patterns, swap, unit_patterns

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "models" / "proxy_goldens"
DIGITS = ROOT / "benchmarks" / "digits"


def _orthonormal_centred(positions: int, k: int, seed: int = 0) -> np.ndarray:
    """k zero-mean columns, orthogonal to each other, of equal norm."""
    a = np.random.default_rng(seed).standard_normal((positions, k))
    a -= a.mean(axis=0)
    q, _ = np.linalg.qr(a)
    return q - q.mean(axis=0)  # the QR of centred columns keeps them centred (up to rounding)


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.8])
def test_meco_of_equicorrelated_channels_is_one_minus_rho(rho: float) -> None:
    """C channels with pairwise correlation ρ ≥ 0: R = (1−ρ)I + ρ11ᵀ, whose smallest eigenvalue is 1 − ρ."""
    c = 5
    z = _orthonormal_centred(50, c + 1)
    fmap = np.sqrt(rho) * z[:, [0]] + np.sqrt(1 - rho) * z[:, 1:]
    np.testing.assert_allclose(correlation_matrix(fmap), (1 - rho) * np.eye(c) + rho, atol=1e-12)
    assert layer_meco(fmap) == pytest.approx(1 - rho, abs=1e-12)
    assert layer_meco(fmap * [1, 2, 3, 4, 5] + 7) == pytest.approx(1 - rho, abs=1e-12)  # per-channel affine


def test_meco_of_two_channels_and_the_edge_cases() -> None:
    """Two channels of correlation r: eigenvalues 1 ± r; a constant channel, a map of one
    position, one channel (R = [1]), no channel; a network sums its layers."""
    z = _orthonormal_centred(40, 2)
    r = -0.6
    fmap = np.column_stack([z[:, 0], r * z[:, 0] + math.sqrt(1 - r * r) * z[:, 1]])
    assert layer_meco(fmap) == pytest.approx(1 - abs(r), abs=1e-12)
    dead = np.column_stack([fmap, np.zeros(40)])
    assert layer_meco(dead) == pytest.approx(0.0, abs=1e-12)  # its row and column of R are 0
    assert layer_meco(np.ones((1, 6))) == 0.0
    assert layer_meco(z[:, :1]) == pytest.approx(1.0)
    assert layer_meco(np.zeros((10, 0))) == 0.0
    assert meco([fmap, fmap, dead]) == pytest.approx(2 * (1 - abs(r)), abs=1e-12)


def test_swap_hand_computed() -> None:
    """Two samples, four units of patterns (1,0), (0,0), (1,1), (0,1): 4; the same units again
    in a second layer add none; a layer of new patterns adds its own; at most 2^N."""
    a = np.array([[1.0, 0.0, 2.0, -1.0], [0.0, -3.0, 3.0, 1.0]])
    assert swap([a]) == 4
    assert swap([a, a]) == 4
    assert swap([a[:, :2]]) == 2
    assert swap([np.random.default_rng(0).standard_normal((3, 1000))]) == 8


def test_swap_against_a_plain_count_of_patterns() -> None:
    """Patterns over more samples than a byte holds (N = 20, bits packed in 3 bytes) counted as
    a set of tuples; per-layer reductions give the same count."""
    rng = np.random.default_rng(3)
    layers = [np.maximum(rng.standard_normal((20, u)), 0) * (rng.random((20, u)) < 0.9) for u in (50, 300, 7)]
    layers.append(layers[0][:, :10])  # units that repeat an earlier layer's patterns
    want = {tuple(col > 0) for x in layers for col in x.T}
    assert swap(layers) == len(want)
    assert distinct_patterns(unit_patterns(x) for x in layers) == len(want)
    with pytest.raises(ValueError, match="same samples"):
        distinct_patterns([unit_patterns(layers[0]), unit_patterns(layers[0][:9])])


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


def test_parse_proxies() -> None:
    """--proxies: names and rank-average combinations, in order, each once; the others refused."""
    assert parse_proxies("near") == ("near",)
    assert parse_proxies("swap, near,near+swap,near") == ("swap", "near", "near+swap")
    assert computed_proxies(("near", "near+swap", "meco")) == ("meco", "swap")
    for bad in ("", "zico", "near+near", "near,,swap"):
        with pytest.raises(ConfigError, match="--proxies"):
            parse_proxies(bad)


def test_rank_average() -> None:
    """The mean of the ranks (ties averaged); a model lacking a proxy has none, the others are ranked without it."""
    np.testing.assert_allclose(rank_average([[1.0, 3.0, 2.0], [10.0, 20.0, 30.0]]), [1.0, 2.5, 2.5])
    np.testing.assert_allclose(rank_average([[5.0, 5.0, 1.0]]), [2.5, 2.5, 1.0])
    got = rank_average([[1.0, 2.0, math.nan, 3.0], [3.0, 2.0, 1.0, 1.0]])
    np.testing.assert_allclose(got[[0, 1, 3]], [2.0, 2.0, 2.0])
    assert math.isnan(got[2])


def _row(name: str, near: float, swap_value: float | None, params: int) -> ResultRow:
    return ResultRow(
        name, f"/m/{name}", None, {}, "0", near, 0.0, params, params, None, 0.0, proxies={"swap": swap_value}
    )


def test_rank_report_has_a_column_and_correlations_per_proxy() -> None:
    """summarise: the first proxy orders the models, each proxy and combination gets its
    correlations (over the models that have it), params and MACs stay the baselines."""
    names = [f"m{k}" for k in range(6)]
    near = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    swaps = [6.0, 5.0, None, 3.0, 2.0, 1.0]
    rows = [_row(n, a, s, 10 * (k + 1)) for k, (n, a, s) in enumerate(zip(names, near, swaps))]
    acc = {f"/m/{n}": float(k) for k, n in enumerate(names)}
    r = summarise(rows, acc, proxies=("swap", "near", "near+swap"))
    assert [m.model for m in r.models][:5] == ["m0", "m1", "m3", "m4", "m5"]  # by SWAP; m2 has none
    assert list(r.correlation) == ["near", "swap", "near+swap", "params", "macs"]
    assert r.correlation["near"].kendall_tau == pytest.approx(1.0)
    assert r.correlation["swap"].kendall_tau == pytest.approx(-1.0) and r.correlation["swap"].models == 5
    assert r.correlation["near+swap"].models == 5
    d = r.to_dict()
    assert d["proxies"] == ["swap", "near", "near+swap"] and d["models"][-1]["proxies"]["swap"] is None
    row = ResultRow.from_json(rows[2].to_json())
    assert row.proxies == {"swap": None}
    old = json.loads(rows[0].to_json())
    del old["proxies"]  # a results file written before proxies existed
    assert ResultRow.from_json(json.dumps(old)).proxies == {}


def test_rank_cli_shows_the_proxies(tmp_path: Path) -> None:
    """rank --proxies near,meco,swap,near+swap on a few digits models: a column each, the
    correlations of each, the same NEAR as without them."""
    models = sorted((DIGITS / "models").glob("cnn_d2_c4_*.onnx"))[:4]
    acc = tmp_path / "acc.csv"
    acc.write_text("\n".join(f"{m},{0.5 + 0.1 * k}" for k, m in enumerate(models)) + "\n")
    args = ["rank", *map(str, models), "--data", str(DIGITS / "digits_inputs.npy"), "--accuracy", str(acc), "-q"]
    cli = CliRunner()
    out = cli.invoke(main, [*args, "--proxies", "near,meco,swap,near+swap", "--format", "json"])
    assert out.exit_code == 0, out.output
    d = json.loads(out.output)
    assert set(d["correlation"]) == {"near", "meco", "swap", "near+swap", "params", "macs"}
    assert all({"meco", "swap", "near+swap"} <= set(m["proxies"]) for m in d["models"])
    plain = json.loads(cli.invoke(main, [*args, "--format", "json"]).output)
    assert sorted(m["score"] for m in plain["models"]) == sorted(m["score"] for m in d["models"])
    table = cli.invoke(main, [*args, "--proxies", "near,swap"]).output
    assert "SWAP" in table and "higher is better for every proxy" in table
    for combo in itertools.permutations(["near", "swap"]):
        assert cli.invoke(main, [*args, "--proxies", ",".join(combo), "--format", "csv"]).exit_code == 0
