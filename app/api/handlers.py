"""The inference endpoints without their transport: one handler per endpoint, called by the front
door's direct dispatch (app/frontend.py) and by the FastAPI routes (app/api/predict.py, generate.py,
v2.py) alike, so both paths run the same code.

A handler takes the request's headers and body (a :class:`Call`) and returns an :class:`Answer`:
status, headers and a body, or a stream of bodies. It checks the content type and size, passes the
model's admission gate before anything is parsed (app/admission.py), and releases its slot before
the answer is sent, so that the next request a client sends the moment it reads the answer finds the
slot free; a stream keeps its slot until it ends (:meth:`Answer.close`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from app import tracing
from app.api.bodies import admitted, check_json_size, parse_body, refuse_simple_media, require_json
from app.api.openai_schemas import ChatRequest, CompletionRequest, V2GenerateRequest
from app.api.schemas import GenerateRequest, PredictRequest
from app.registry import check_version

JSON = b"application/json"
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
V2_INFER = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
V2_INFER_TEMPLATES = ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")
# Triton's generate extension: the same body at both, one answer or Server-Sent Events.
V2_GENERATE = re.compile(
    r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/(?P<kind>generate|generate_stream)$"
)
V2_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


@dataclass
class Call:
    """What a handler gets of its request. ``model`` is set once the model is known (the metrics
    label and the route's ``mark_model``), also when the request then fails."""

    headers: Mapping[str, str]  # lower-case names
    body: bytes
    model: str = ""


@dataclass
class Answer:
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=lambda: [(b"content-type", JSON)])
    status: int = 200
    stream: AsyncIterator[bytes] | None = None  # Server-Sent Events, sent after the headers
    _admission: AsyncExitStack | None = None  # a stream's slot, held until close()

    async def close(self) -> None:
        """End the stream (a generation leaves its batch) and free its slot; idempotent."""
        stream, self.stream = self.stream, None
        admission, self._admission = self._admission, None
        try:
            if stream is not None:
                await stream.aclose()
        finally:
            if admission is not None:
                await admission.aclose()

    def response(self) -> Response:
        """As a Starlette response, for the FastAPI routes."""
        headers = {k.decode(): v.decode() for k, v in self.headers if k != b"content-type"}
        media_type = dict(self.headers)[b"content-type"].decode()
        if self.stream is None:
            return Response(self.body, self.status, headers, media_type)
        # close() runs when the stream ends, is cut by a departing client, or never starts.
        return StreamingResponse(
            self._events(), self.status, headers, media_type, background=BackgroundTask(self.close)
        )

    async def _events(self) -> AsyncIterator[bytes]:
        try:
            async for event in self.stream:
                yield event
        finally:
            await self.close()


Handler = Callable[..., Awaitable[Answer]]


def _json_answer(result: dict[str, Any]) -> Answer:
    with tracing.span("serialize"):
        return Answer(orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY))


def _json_body(call: Call, max_json_bytes: int) -> bytes:
    require_json(call.headers.get("content-type"))
    check_json_size(call.body, max_json_bytes)
    return call.body


async def predict(state: Any, call: Call) -> Answer:
    """POST /predict."""
    raw = _json_body(call, state.dataplane.settings.max_json_bytes)
    async with admitted(state.registry, PredictRequest, raw) as (body, _):
        call.model = body.model
        result = await state.dataplane.predict(body)
    return _json_answer(result)


async def _generation(state: Any, call: Call, schema: type, run: Callable[[Any], Awaitable[Any]]) -> Answer:
    """A generating endpoint whose body names its model: admitted, parsed, run; a streamed answer
    keeps its slot until its stream is closed."""
    raw = _json_body(call, state.generation.settings.max_json_bytes)
    admission = AsyncExitStack()
    try:
        body, _ = await admission.enter_async_context(admitted(state.registry, schema, raw))
        call.model = body.model
        result = await run(body)
    except BaseException:
        await admission.aclose()
        raise
    return await _generated(result, admission, SSE_HEADERS)


async def _generated(result: Any, admission: AsyncExitStack, stream_headers) -> Answer:
    """One JSON object is answered at once, its slot released first; a stream keeps the slot until
    the stream is closed."""
    if isinstance(result, dict):
        await admission.aclose()
        return _json_answer(result)
    return Answer(headers=list(stream_headers), stream=result, _admission=admission)


async def generate(state: Any, call: Call) -> Answer:
    """POST /generate."""
    return await _generation(state, call, GenerateRequest, state.generation.generate)


async def completions(state: Any, call: Call) -> Answer:
    """POST /v1/completions (OpenAI)."""
    return await _generation(state, call, CompletionRequest, state.completions.completions)


async def chat_completions(state: Any, call: Call) -> Answer:
    """POST /v1/chat/completions (OpenAI)."""
    return await _generation(state, call, ChatRequest, state.completions.chat)


async def generate_v2(state: Any, call: Call, name: str, version: str | None, stream: bool) -> Answer:
    """POST /v2/models/{name}[/versions/{version}]/generate[_stream] (Triton's generate extension):
    the model is in the path, so the gate is passed before the body is parsed."""
    raw = _json_body(call, state.generation.settings.max_json_bytes)
    call.model = name if state.registry.has(name) else ""
    admission = AsyncExitStack()
    try:
        admission.enter_context(await state.registry.gate(name).admit(len(raw)))
        body = parse_body(V2GenerateRequest, raw, state.registry.settings)
        result = await state.completions.v2_generate(name, check_version(version), body, stream)
    except BaseException:
        await admission.aclose()
        raise
    return await _generated(result, admission, V2_SSE_HEADERS)


async def infer_v2(state: Any, call: Call, name: str, version: str | None) -> Answer:
    """POST /v2/models/{name}[/versions/{version}]/infer: JSON tensors or the binary extension."""
    refuse_simple_media(call.headers.get("content-type"))
    call.model = name if state.registry.has(name) else ""
    with await state.registry.gate(name).admit(len(call.body)):
        content, json_length = await state.dataplane.infer_v2(
            name, check_version(version), call.body, call.headers.get("inference-header-content-length")
        )
    if json_length is None:
        return Answer(content)
    headers = [
        (b"content-type", b"application/octet-stream"),
        (b"inference-header-content-length", str(json_length).encode()),
    ]
    return Answer(content, headers)


# The front door dispatches these paths itself (V2 infer by V2_INFER); ``True``: watch for the client
# leaving while the handler runs (generation stops at its next step).
JSON_ENDPOINTS: dict[str, tuple[Handler, bool]] = {
    "/predict": (predict, False),
    "/generate": (generate, True),
    "/v1/completions": (completions, True),
    "/v1/chat/completions": (chat_completions, True),
}
