"""The baseline of the serving-overhead benchmark (benchmarks/deploy.py): what a hand-written edge
server does to answer with the same variants of a bank. FastAPI and uvicorn as `racmkd serve`,
np.load of the .npz body, the variants' preprocessing and ONNX Runtime sessions (one thread), their
logits added to the bias, softmax, JSON. Nothing else: no input checks beyond numpy's and ONNX
Runtime's, no resource awareness, no offloading, no metrics.

    python benchmarks/bare_edge.py --bank runs/latest/edge --variants critical/image,high/audio --port 8100
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request, Response

from racmkd.compress.artifacts import session
from racmkd.registry import SIGNALS
from racmkd.runtime.variants import load_bank


def create_app(bank_dir: Path, variant_ids: list[str]) -> FastAPI:
    bank = load_bank(bank_dir)
    by_id = {v.id: v for v in bank.table.variants}
    variants = [by_id[i] for i in variant_ids]
    signals = {v.id: SIGNALS.create(v.modality) for v in variants}
    sessions = {v.id: session(bank.path(v), threads=1) for v in variants}
    bias = sum(bank.biases[v.tier] for v in variants) / len(variants)
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        arrays = np.load(io.BytesIO(await request.body()))
        logits = bias.copy()
        for v in variants:
            signal, spec = signals[v.id], bank.specs[v.id]
            logits += sessions[v.id].run(None, {v.modality: signal.features(signal.to_raw(arrays[v.modality], spec), spec)})[0][0]
        exp = np.exp(logits - logits.max())
        probabilities = exp / exp.sum()
        return Response(json.dumps({"label": int(probabilities.argmax()), "probabilities": probabilities.tolist()}), media_type="application/json")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bank", type=Path, required=True, help="a variant bank folder (racmkd edge build)")
    parser.add_argument("--variants", required=True, help="comma-separated variant ids, e.g. critical/image,high/audio")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(args.bank, args.variants.split(",")), host="127.0.0.1", port=args.port, log_level="warning")
