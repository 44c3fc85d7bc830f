"""``python -m onnx_near.cli``: the ``onnx-near`` command line."""

from . import main

if __name__ == "__main__":  # pragma: no cover
    main()
