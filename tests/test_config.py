"""The scoring options (onnx_near/config.py): parsing --proxies."""

from __future__ import annotations

import pytest

from onnx_near.config import computed_proxies, parse_proxies
from onnx_near.errors import ConfigError


def test_parse_proxies() -> None:
    """--proxies: names and rank-average combinations, in order, each once; the others refused."""
    assert parse_proxies("near") == ("near",)
    assert parse_proxies("swap, near,near+swap,near") == ("swap", "near", "near+swap")
    assert computed_proxies(("near", "near+swap", "meco")) == ("meco", "swap")
    for bad in ("", "zico", "near+near", "near,,swap"):
        with pytest.raises(ConfigError, match="--proxies"):
            parse_proxies(bad)
