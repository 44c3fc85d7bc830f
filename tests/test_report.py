"""The score's report (onnx_near/report.py): how the tables write a tensor's dimensions."""

from __future__ import annotations


def test_made_up_symbolic_dims_show_as_unknown() -> None:
    """The layers table shows N and seq_len, but an exporter's generated dim name as '?'."""
    from onnx_near.report import _dims

    assert _dims(("N", 3, "seq_len")) == "N×3×seq_len"
    assert _dims(("LayerNormalizationonnx::Gather_1426_dim_0", 768)) == "?×768"
    assert _dims((None, 4)) == "?×4" and _dims(None) == "?"
