"""The baseline of bench/serve_bench.py: the minimal FastAPI app a user would write around onnxruntime.

One InferenceSession per model, ``POST /predict`` with ``{"model": ..., "inputs": <nested list>}``, one
``session.run`` per request, no batching, no queue, no checks beyond what pydantic and numpy do.

Session options are onnxruntime's defaults (ORT_ENABLE_ALL, sequential) except ``intra_op_num_threads=1``:
the benchmark gives every server one core, and the default (one spinning thread per machine core) would
fight the HTTP layer for it, which would make the baseline look worse than a user tuning for one core
would get. The route is a plain ``def``, so FastAPI runs it in its thread pool and the event loop keeps
serving while onnxruntime runs (the pattern FastAPI's docs suggest for blocking calls).

Run: ``BASELINE_MODEL_REPOSITORY=models uvicorn --app-dir bench baseline_app:app`` (every ``<model>/<version>/
model.onnx`` there; the highest version of each model).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel


class PredictRequest(BaseModel):
    model: str
    inputs: list[Any]


def load_sessions(root: Path) -> dict[str, ort.InferenceSession]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        versions = sorted((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        if versions and (versions[-1] / "model.onnx").is_file():
            path = versions[-1] / "model.onnx"
            sessions[model_dir.name] = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
    return sessions


app = FastAPI()
sessions = load_sessions(Path(os.environ.get("BASELINE_MODEL_REPOSITORY", "models")))


@app.get("/health/ready")
def ready() -> dict[str, bool]:
    return {"ready": True}


@app.post("/predict")
def predict(request: PredictRequest) -> dict[str, Any]:
    session = sessions.get(request.model)
    if session is None:
        raise HTTPException(404, f"unknown model {request.model!r}")
    spec = session.get_inputs()[0]
    x = np.asarray(request.inputs, dtype=np.float32)
    if x.ndim == len(spec.shape) - 1:  # one item without the batch axis
        x = x[None]
    logits = session.run(None, {spec.name: x})[0]
    return {"outputs": logits.tolist()}
