"""On-device inference: the predictor behind `racmkd.load` (predictor.py), the variant bank
(bank.py; variants.py builds it), the resource-aware edge runtime (edge.py) and trace replay
(simulate.py). bank.py, edge.py and the ONNX predictor need no torch."""
