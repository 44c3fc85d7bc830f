"""The errors onnx-near raises.

Every problem a user can cause (a bad file, bad data, an impossible request) is a
:class:`NearError`; its message is one sentence that names the model, tensor or input
concerned and says what was expected.  The CLI prints that sentence and exits with
:attr:`NearError.exit_code`; it never shows a traceback for these.
"""

from __future__ import annotations


class NearError(Exception):
    """Base of every error onnx-near raises on purpose."""

    exit_code = 2


class ModelLoadError(NearError):
    """The model file is missing, unreadable, not ONNX, or rejected by the runtime."""


class GraphError(NearError):
    """The graph cannot be rewritten or holds nothing onnx-near can score."""


class NoTapsError(GraphError):
    """Nothing can be scored: the main graph has no weighted layer and no activation.

    When layers lie inside control-flow bodies that stay there (a Loop body, an If whose
    condition is not decided), the message names them and says why they were not scored."""


class InputDataError(NearError):
    """The input data (user-given or to be synthesised) does not fit the model's inputs."""


class ConfigError(NearError):
    """An option has an impossible value."""


class RunError(NearError):
    """onnxruntime failed while running the model."""


class NonFiniteMatrixError(ValueError):
    """A matrix holds NaN or Inf, so it has no effective rank (raised by the rank core)."""
