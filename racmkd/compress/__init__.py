"""Compression: pruning, low-rank factorisation, input reduction, quantization and ONNX export,
chained by recipes (recipe.py) of registered steps (steps.py)."""

from racmkd.compress import steps as steps  # registers the compression steps in COMPRESSORS
