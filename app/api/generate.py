"""POST /generate: language models (JSON or Server-Sent Events), seq2seq, image generators."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api import handlers
from app.api.bodies import documented_body
from app.api.deps import RegistryDep, mark_model
from app.api.schemas import ERROR_RESPONSES, GenerateRequest, GenerateResponse

router = APIRouter(tags=["generation"])


STREAM_RESPONSE = {
    200: {
        "model": GenerateResponse,
        "description": (
            'JSON; with stream=true, text/event-stream: `data: {"token": ...}` per token, then '
            '`data: {"finish_reason": ..., "usage": ..., "text": ...}`; a diffusion model sends '
            '`data: {"step": ..., "steps": ..., "images": [...]}` (the current prediction of the images) '
            "every diffusion.stream_every steps, then the whole answer."
        ),
        # One schema per event (what an SSE client hands over): ``data`` holds the event's JSON.
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
                }
            }
        },
    }
}


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses={**ERROR_RESPONSES, **STREAM_RESPONSE},
    openapi_extra=documented_body(GenerateRequest),
)
async def generate(request: Request, registry: RegistryDep) -> Response:
    """Generate text (continuous batching; optionally streamed), translate with a seq2seq model, or
    sample images from a generator or a diffusion model (optionally streamed)."""
    call = handlers.Call(request.headers, await request.body())
    try:
        return (await handlers.generate(request.app.state, call)).response()
    finally:
        mark_model(request, call.model, registry)
