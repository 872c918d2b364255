"""The front door: the outermost ASGI layer in front of the FastAPI app.

Every HTTP request gets its metrics (count by model, endpoint and status; end-to-end latency) and the
body-size limit here. The two inference endpoints, ``POST /predict`` and ``POST /v2/models/{name}
[/versions/{version}]/infer``, are dispatched here directly to the same handler functions their
FastAPI routes call, skipping FastAPI's middleware, routing and dependency layers: measured on one
core, that stack took ~60% of a request's time and capped the batching server below 1.3x a
one-session-per-request FastAPI app (2.7x without it). Everything else (metadata, health, /metrics,
/openapi.json, /docs) goes through FastAPI, and ``SERVE_DIRECT_DISPATCH=false`` sends the inference
endpoints there too.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from app import metrics
from app.api.bodies import parse_body
from app.api.predict import run_predict
from app.api.schemas import PredictRequest
from app.errors import InferenceFailed, PayloadTooLarge, ServingError
from app.registry import check_version

log = logging.getLogger("app")

PREDICT = "/predict"
V2_INFER = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
V2_INFER_TEMPLATES = ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")
JSON = b"application/json"


class _Disconnected(Exception):
    pass


class Frontend:
    def __init__(self, api: FastAPI, max_body_bytes: int, direct_dispatch: bool = True) -> None:
        self.api = api
        self.max_body_bytes = max_body_bytes
        self.direct_dispatch = direct_dispatch
        self._counters: dict[tuple[str, str, str], Any] = {}
        self._latencies: dict[tuple[str, str], Any] = {}

    @property
    def state(self):
        return self.api.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan (and websockets) belong to FastAPI
            await self.api(scope, receive, send)
            return
        started = time.perf_counter()
        outcome = {"status": 500, "model": "", "endpoint": "unmatched"}

        async def send_with_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                outcome["status"] = message["status"]
            await send(message)

        try:
            await self._dispatch(scope, receive, send_with_status, outcome)
        except _Disconnected:
            outcome["status"] = 499  # client went away; nothing to answer
        finally:
            if outcome["endpoint"] == "unmatched":
                route = scope.get("route")
                outcome["endpoint"] = getattr(route, "path", None) or "unmatched"
                outcome["model"] = scope.get("state", {}).get("model", "")
            self._observe(outcome, time.perf_counter() - started)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, outcome: dict) -> None:
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _respond(send, *self._error(PayloadTooLarge(self._too_large())))
            return
        path, method = scope["path"], scope["method"]
        if self.direct_dispatch and method == "POST":
            if path == PREDICT:
                outcome["endpoint"] = PREDICT
                await self._predict(receive, send, outcome)
                return
            match = V2_INFER.match(path)
            if match:
                outcome["endpoint"] = V2_INFER_TEMPLATES[match["version"] is not None]
                await self._infer_v2(scope, receive, send, outcome, match["name"], match["version"])
                return
        await self.api(scope, self._limited(receive), send)

    # ---------------------------------------------------------------------------- direct endpoints

    async def _predict(self, receive: Receive, send: Send, outcome: dict) -> None:
        try:
            raw = await self._read_body(receive)
            body = parse_body(PredictRequest, raw)
            outcome["model"] = self._known(body.model)
            result = await run_predict(self.api.state.dataplane, body)
            await _respond(send, 200, [(b"content-type", JSON)], orjson.dumps(result))
        except ServingError as exc:
            await _respond(send, *self._error(exc))
        except _Disconnected:
            raise  # nobody to answer
        except Exception as exc:  # the FastAPI path's catch-all handler, for the direct path
            log.exception("unhandled error on POST /predict")
            await _respond(send, *self._error(InferenceFailed(f"internal error: {type(exc).__name__}")))

    async def _infer_v2(
        self, scope: Scope, receive: Receive, send: Send, outcome: dict, name: str, version: str | None
    ) -> None:
        outcome["model"] = self._known(name)
        try:
            raw = await self._read_body(receive)
            header_length = _header(scope, b"inference-header-content-length")
            content, json_length = await self.api.state.dataplane.infer_v2(
                name, check_version(version), raw, header_length
            )
        except ServingError as exc:
            await _respond(send, *self._error(exc))
            return
        except _Disconnected:
            raise
        except Exception as exc:
            log.exception("unhandled error on POST %s", scope["path"])
            await _respond(send, *self._error(InferenceFailed(f"internal error: {type(exc).__name__}")))
            return
        if json_length is None:
            headers = [(b"content-type", JSON)]
        else:
            headers = [
                (b"content-type", b"application/octet-stream"),
                (b"inference-header-content-length", str(json_length).encode()),
            ]
        await _respond(send, 200, headers, content)

    # ---------------------------------------------------------------------------- helpers

    def _known(self, name: str) -> str:
        """The model label: the name when the repository has it, else empty (bounded cardinality)."""
        return name if self.api.state.registry.has(name) else ""

    def _too_large(self) -> str:
        return f"request body is larger than {self.max_body_bytes} bytes"

    async def _read_body(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise PayloadTooLarge(self._too_large())
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _limited(self, receive: Receive) -> Receive:
        """``receive`` for FastAPI routes that fails a streamed body past the limit with 413."""
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise PayloadTooLarge(self._too_large())
            return message

        return limited

    def _error(self, exc: ServingError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if exc.status_code >= 500:
            log.warning("-> %d: %s", exc.status_code, exc.message)
        headers = [(b"content-type", JSON)] + [
            (k.lower().encode(), v.encode()) for k, v in exc.headers.items()
        ]
        return exc.status_code, headers, orjson.dumps({"error": exc.message})

    def _observe(self, outcome: dict, seconds: float) -> None:
        key = (outcome["model"], outcome["endpoint"], str(outcome["status"]))
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = metrics.REQUESTS.labels(*key)
        counter.inc()
        latency_key = key[:2]
        latency = self._latencies.get(latency_key)
        if latency is None:
            latency = self._latencies[latency_key] = metrics.REQUEST_LATENCY.labels(*latency_key)
        latency.observe(seconds)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
