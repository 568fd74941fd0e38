"""Compression: pruning, low-rank factorisation, input reduction, quantization and ONNX export,
chained by recipes (recipe.py) of registered steps (steps.py, registered when recipe.py is imported).
artifacts.py, the part an edge device needs (contracts, sessions), imports no torch."""
