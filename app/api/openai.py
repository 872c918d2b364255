"""The OpenAI-compatible routes under /v1: models, completions, chat completions (the OpenAPI schema,
and the path when SERVE_DIRECT_DISPATCH=false; the front door dispatches the POSTs itself)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api import handlers
from app.api.bodies import documented_body
from app.api.deps import RegistryDep, mark_model
from app.api.openai_schemas import (
    OPENAI_ERRORS,
    ChatCompletionResponse,
    ChatRequest,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelCardList,
)

router = APIRouter(prefix="/v1", tags=["openai"])


def _streamed(model: type, chunk: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "model": model,
            "description": (
                f"JSON; with stream=true, text/event-stream: `data: {{{chunk}}}` events, each choice's "
                "finish_reason once, with stream_options.include_usage one chunk with `choices: []` "
                "and the usage, then `data: [DONE]`."
            ),
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


@router.get("/models", response_model=ModelCardList, responses=OPENAI_ERRORS)
async def list_models(request: Request) -> dict[str, Any]:
    """The language and seq2seq models this API serves."""
    return request.app.state.completions.list_models()


@router.get("/models/{model}", response_model=ModelCard, responses=OPENAI_ERRORS)
async def retrieve_model(model: str, request: Request, registry: RegistryDep) -> dict[str, Any]:
    mark_model(request, model, registry)
    return request.app.state.completions.model_card(model)


@router.post(
    "/completions",
    response_model=CompletionResponse,
    responses={**OPENAI_ERRORS, **_streamed(CompletionResponse, "text_completion chunk")},
    openapi_extra=documented_body(CompletionRequest),
)
async def completions(request: Request, registry: RegistryDep) -> Response:
    """OpenAI's completions over the continuous-batching decode loop (language models), or a seq2seq
    model's translation (n beams as n choices)."""
    call = handlers.Call(request.headers, await request.body())
    try:
        return (await handlers.completions(request.app.state, call)).response()
    finally:
        mark_model(request, call.model, registry)


@router.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    responses={**OPENAI_ERRORS, **_streamed(ChatCompletionResponse, "chat.completion.chunk")},
    openapi_extra=documented_body(ChatRequest),
)
async def chat_completions(request: Request, registry: RegistryDep) -> Response:
    """OpenAI's chat completions: the messages rendered by the model's chat template."""
    call = handlers.Call(request.headers, await request.body())
    try:
        return (await handlers.chat_completions(request.app.state, call)).response()
    finally:
        mark_model(request, call.model, registry)
