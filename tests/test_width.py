"""Layer-width estimation: the power-law fit on points with known parameters, the closed forms
of the estimate, and the end-to-end command on generated data."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from onnx_near.cli import main
from onnx_near.errors import ConfigError
from onnx_near.width import PowerLaw, build_mlp, estimate_width, fit_power_law


def test_fit_recovers_known_parameters() -> None:
    """Points on f(s) = α + β·s^γ through (1, 1) give back α, β, γ."""
    alpha, gamma = 0.05, -0.6
    beta = 1 - alpha  # so that f(1) = 1, as the prepended point says
    widths = np.array([4, 8, 16, 32, 64, 128, 256])
    fit = fit_power_law(widths.tolist(), (alpha + beta * widths**gamma).tolist())
    assert (fit.alpha, fit.beta, fit.gamma) == pytest.approx((alpha, beta, gamma), rel=1e-5)
    assert fit.r2 == pytest.approx(1.0)


def test_estimate_closed_forms() -> None:
    """Relative slope: s* = t^(1/(γ−1)) (the authors' expression); absolute: (t/|βγ|)^(1/(γ−1))."""
    f = PowerLaw(alpha=0.1, beta=0.9, gamma=-0.5, r2=1.0)
    assert f.estimate(0.005, "relative") == pytest.approx(0.005 ** (1 / -1.5))
    assert f.estimate(0.005, "absolute") == pytest.approx((0.005 / 0.45) ** (1 / -1.5))
    # at s*, the fitted slope is the threshold times the initial slope
    s = f.estimate(0.01, "relative")
    assert f.beta * f.gamma * s ** (f.gamma - 1) == pytest.approx(0.01 * f.beta * f.gamma)
    assert math.isinf(PowerLaw(0, 1, 0.3, 1).estimate(0.005))  # a growing relative score has no estimate


def test_built_mlp_and_estimate(tmp_path: Path) -> None:
    """The estimate runs end to end on generated data: each width's layer score is a mean of
    eranks of w columns (between 1 and w), the relative scores are those over the width, the
    fit is the fit of those points, and the estimates are the fit's closed forms."""
    x = np.random.default_rng(0).standard_normal((600, 20)).astype(np.float32)
    m = build_mlp(20, [16], 3, "silu")
    assert [n.op_type for n in m.graph.node].count("Gemm") == 2
    e = estimate_width(x, 20, 3, [4, 8, 16, 32, 64, 128], activation="silu")
    assert e.relative_scores[0] > e.relative_scores[-1]
    assert e.widths == (4, 8, 16, 32, 64, 128) and all(1 <= s <= w for s, w in zip(e.layer_scores, e.widths))
    assert e.relative_scores == pytest.approx([s / w for s, w in zip(e.layer_scores, e.widths)], rel=1e-12)
    f = fit_power_law(e.widths, e.relative_scores)
    assert (e.fit.alpha, e.fit.beta, e.fit.gamma, e.fit.r2) == pytest.approx((f.alpha, f.beta, f.gamma, f.r2), rel=1e-9)
    g = e.fit.gamma
    assert e.estimate == pytest.approx(e.threshold ** (1 / (g - 1)), rel=1e-12)  # s* = t^(1/(γ−1))
    assert e.other == pytest.approx((e.threshold / abs(e.fit.beta * g)) ** (1 / (g - 1)), rel=1e-12)
    d: dict[str, Any] = e.to_dict()
    assert d["estimate_width"] == math.ceil(e.estimate) and set(d["fit"]) == {"alpha", "beta", "gamma", "r2"}


def test_width_needs_three_widths() -> None:
    """Two widths cannot fix three parameters."""
    with pytest.raises(ConfigError):
        estimate_width(np.zeros((10, 4), np.float32), 4, 2, [8, 16])


def test_cli_width_json_and_plot(tmp_path: Path) -> None:
    """`onnx-near width` prints the fit and the estimate, and draws the plot."""
    np.save(tmp_path / "x.npy", np.random.default_rng(1).standard_normal((300, 10)).astype(np.float32))
    png = tmp_path / "fit.png"
    r = CliRunner().invoke(
        main,
        [
            "width",
            "--data",
            str(tmp_path / "x.npy"),
            "--inputs",
            "10",
            "--outputs",
            "2",
            "--widths",
            "4,8,16,32,64",
            "--plot",
            str(png),
            "--format",
            "json",
        ],
    )
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["widths"] == [4, 8, 16, 32, 64]
    assert png.stat().st_size > 1000


def test_cli_width_with_wrong_inputs(tmp_path: Path) -> None:
    """Data that does not match --inputs is one clean error."""
    np.save(tmp_path / "x.npy", np.zeros((50, 7), np.float32))
    r = CliRunner().invoke(main, ["width", "--data", str(tmp_path / "x.npy"), "--inputs", "10", "--outputs", "2"])
    assert r.exit_code == 2 and r.stderr.startswith("onnx-near: error: ") and "Traceback" not in r.stderr
