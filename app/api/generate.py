"""POST /generate: language models (JSON or Server-Sent Events), seq2seq, image generators."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from app.api.bodies import documented_body, parse_body
from app.api.deps import RegistryDep, mark_model
from app.api.responses import JSONResponse
from app.api.schemas import ERROR_RESPONSES, GenerateRequest, GenerateResponse
from app.dataplane import GenerationPlane
from app.errors import InferenceFailed, InvalidInput
from app.textgen import Sequence

router = APIRouter(tags=["generation"])


async def get_generation(request: Request) -> GenerationPlane:
    return request.app.state.generation


GenerationDep = Annotated[GenerationPlane, Depends(get_generation)]

STREAM_RESPONSE = {
    200: {
        "model": GenerateResponse,
        "description": (
            'JSON; with stream=true, text/event-stream: `data: {"token": ...}` per token, then '
            '`data: {"finish_reason": ..., "usage": ..., "text": ...}`.'
        ),
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses={**ERROR_RESPONSES, **STREAM_RESPONSE},
    openapi_extra=documented_body(GenerateRequest),
)
async def generate(request: Request, plane: GenerationDep, registry: RegistryDep):
    """Generate text (continuous batching; optionally streamed), translate with a seq2seq model, or
    sample images from a generator."""
    body = parse_body(GenerateRequest, await request.body())
    mark_model(request, body.model, registry)
    mv = plane.model(body)
    head = {"model": mv.name, "version": mv.version, "task": mv.config.task}
    started = time.perf_counter()
    if mv.config.task == "text_generation" and mv.generator is not None:
        seq, prompt_tokens = plane.start_text(mv, body)
        if body.stream:
            return StreamingResponse(
                _stream(plane, mv, seq, prompt_tokens, started), media_type="text/event-stream"
            )
        try:
            await _wait(seq)
        finally:
            if seq.finish_reason is None:  # the client went away while waiting
                mv.generator.cancel(seq)
        return JSONResponse({**head, **_summary(seq, prompt_tokens, started)})
    if mv.config.task == "seq2seq":
        return JSONResponse({**head, **await plane.translate(mv, body)})
    if mv.config.generation is not None and mv.config.generation.latent_dim is not None:
        return JSONResponse({**head, **await plane.images(mv, body)})
    raise InvalidInput(f"model {mv.name!r} is a {mv.config.task} model; use POST /predict")


async def _wait(seq: Sequence) -> None:
    while True:
        kind, error = await seq.events.get()
        if kind == "done":
            if error is not None:
                raise InferenceFailed(f"generation failed: {error}")
            return


def _summary(seq: Sequence, prompt_tokens: int, started: float) -> dict[str, Any]:
    total = time.perf_counter() - started
    ttft = (seq.first_token_at - seq.created) if seq.first_token_at else None
    timings = {"total_s": round(total, 6)}
    if ttft is not None:
        timings["time_to_first_token_s"] = round(ttft, 6)
        timings["tokens_per_s"] = round(len(seq.new) / total, 2) if total > 0 else 0.0
    return {
        "text": seq.text,
        "finish_reason": seq.finish_reason,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(seq.new)},
        "timings": timings,
    }


async def _stream(
    plane: GenerationPlane, mv, seq: Sequence, prompt_tokens: int, started: float
) -> AsyncIterator[bytes]:
    """Server-Sent Events. Starlette cancels this generator when the client disconnects; ``finally``
    then takes the sequence out of the decode loop before its next step."""
    index = 0
    try:
        while True:
            kind, payload = await seq.events.get()
            if kind == "token":
                yield b"data: " + orjson.dumps({"token": payload, "index": index}) + b"\n\n"
                index += 1
                continue
            summary = _summary(seq, prompt_tokens, started)
            if payload is not None:
                summary["error"] = f"generation failed: {payload}"
            yield b"data: " + orjson.dumps(summary) + b"\n\n"
            return
    finally:
        if seq.finish_reason is None:
            mv.generator.cancel(seq)
