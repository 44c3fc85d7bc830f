"""The version of onnx-near, in a module of its own: the modules that record it (results
rows, reports) import it from here, not from the package root, which imports them."""

__version__ = "0.3.0.dev0"
