"""The baseline of the serving-overhead benchmark (benchmarks/deploy.py): what a hand-written edge
server does to answer with the same variants of a bank. FastAPI and uvicorn as `racmkd serve`,
np.load of the .npz body, the variants' preprocessing and ONNX Runtime sessions (--threads, default one), their
logits added to the bias, softmax, JSON. Nothing else: no input checks beyond numpy's and ONNX
Runtime's, no resource awareness, no offloading, no metrics.

    python benchmarks/bare_edge.py --bank runs/latest/edge --variants critical/image,high/audio --threads 1 --port 8100
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response

from racmkd.compress.artifacts import session
from racmkd.registry import SIGNALS
from racmkd.runtime.variants import load_bank


class BarePath:
    """The same answer as the edge runtime's for a fixed set of variants, with nothing around it:
    each variant's preprocessing and session, their logits added to the bias, softmax. `sessions`
    (by variant id) are opened here unless given (the benchmark times the runtime's own)."""

    def __init__(self, bank: Any, variant_ids: list[str], sessions: dict[str, Any] | None = None, threads: int = 1) -> None:
        by_id = {v.id: v for v in bank.table.variants}
        unknown = [i for i in variant_ids if i not in by_id]
        if unknown:  # (a KeyError traceback)
            raise ValueError(f"variants {unknown} are not in the bank; it holds {', '.join(sorted(by_id))}")
        self.variants = [by_id[i] for i in variant_ids]
        self.specs = {v.id: bank.specs[v.id] for v in self.variants}
        self.signals = {v.id: SIGNALS.create(v.modality) for v in self.variants}
        self.sessions = sessions or {v.id: session(bank.path(v), threads=threads) for v in self.variants}
        self.bias = sum(bank.biases[v.tier] for v in self.variants) / len(self.variants)

    def __call__(self, arrays: Any) -> tuple[int, np.ndarray]:
        logits = self.bias.copy()
        for v in self.variants:
            signal, spec = self.signals[v.id], self.specs[v.id]
            logits += self.sessions[v.id].run(None, {v.modality: signal.features(signal.to_raw(arrays[v.modality], spec), spec)})[0][0]
        exp = np.exp(logits - logits.max())
        probabilities = exp / exp.sum()
        return int(probabilities.argmax()), probabilities


def create_app(bank_dir: Path, variant_ids: list[str], threads: int = 1) -> FastAPI:
    answer = BarePath(load_bank(bank_dir), variant_ids, threads=threads)
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        label, probabilities = answer(np.load(io.BytesIO(await request.body())))
        return Response(json.dumps({"label": label, "probabilities": probabilities.tolist()}), media_type="application/json")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bank", type=Path, required=True, help="a variant bank folder (racmkd edge build)")
    parser.add_argument("--variants", required=True, help="comma-separated variant ids, e.g. critical/image,high/audio")
    parser.add_argument(
        "--threads", type=int, default=1, help="ONNX Runtime threads per session: the edge server's runtime.threads, so both sides compute alike"
    )
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        app = create_app(args.bank, args.variants.split(","), args.threads)
    except (ValueError, RuntimeError) as err:  # (an unknown variant id, an unreadable bank: BankError; one line, not a traceback)
        raise SystemExit(f"{args.bank}: {err}") from None
    print(f"serving {args.variants} from {args.bank} on http://127.0.0.1:{args.port}", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
