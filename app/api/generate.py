"""POST /generate: language models (JSON or Server-Sent Events), seq2seq, image generators."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from app.api.bodies import admitted, check_json_size, documented_body, require_json
from app.api.deps import RegistryDep, mark_model
from app.api.responses import JSONResponse
from app.api.schemas import ERROR_RESPONSES, GenerateRequest, GenerateResponse
from app.dataplane import GenerationPlane

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
async def generate(request: Request, plane: GenerationDep, registry: RegistryDep):
    """Generate text (continuous batching; optionally streamed), translate with a seq2seq model, or
    sample images from a generator."""
    require_json(request.headers.get("content-type"))
    raw = await request.body()
    check_json_size(raw, plane.settings.max_json_bytes)
    admission = AsyncExitStack()  # held until the answer is complete: for a stream, until its last event
    body, _ = await admission.enter_async_context(admitted(registry, GenerateRequest, raw))
    try:
        mark_model(request, body.model, registry)
        result = await plane.generate(body)
    except BaseException:
        await admission.aclose()
        raise
    if isinstance(result, dict):
        await admission.aclose()
        return JSONResponse(result)
    return StreamingResponse(_holding(admission, result), media_type="text/event-stream")


async def _holding(admission: AsyncExitStack, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The stream's events; the admission is released when the stream ends or the client leaves
    (Starlette then closes this generator, which closes ``events``)."""
    try:
        async for event in events:
            yield event
    finally:
        await events.aclose()
        await admission.aclose()
