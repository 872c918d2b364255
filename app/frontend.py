"""The front door: the outermost ASGI layer in front of the FastAPI app.

Every HTTP request gets, here: its metrics (count by model, endpoint and status; end-to-end latency);
the server-wide bound on requests in progress (503 + Retry-After beyond it, and while shutting down);
the body-size limit; and the body timeout (408). Health and /metrics are never refused.

The inference endpoints, ``POST /predict``, ``POST /generate`` and ``POST /v2/models/{name}
[/versions/{version}]/infer``, are dispatched here directly to the handlers their FastAPI routes call
too (app/api/handlers.py), skipping FastAPI's middleware, routing and dependency layers: measured on
one core, that stack took ~60% of a request's time, and a refusal under overload must cost
microseconds. Each is admitted by its model's gate (app/admission.py) before its body is parsed.
``/generate`` also watches the connection: a client that goes away cancels its generation at the next
step. The OpenAI-compatible ``POST /v1/completions`` and ``/v1/chat/completions`` and Triton's
``POST /v2/models/{name}[/versions/{version}]/generate[_stream]`` are dispatched the same way.
Everything else (metadata, /metrics, /openapi.json, /docs, /v1/models) goes through FastAPI, and
``SERVE_DIRECT_DISPATCH=false`` sends the inference endpoints there too.

Both paths get, here: an ``X-Request-Id`` on every answer (the client's when it is sane, else a new
one), the key check of the OpenAI API when ``SERVE_API_KEY`` is set (401), and errors under /v1/ in
OpenAI's shape (app/errors.py's ``render_for``).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable
from typing import Any

from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from app import logs, metrics, tracing
from app.api import handlers
from app.api.handlers import JSON_ENDPOINTS, V2_GENERATE, V2_INFER, V2_INFER_TEMPLATES, Answer, Call
from app.errors import (
    OPENAI_PREFIX,
    InferenceFailed,
    PayloadTooLarge,
    RequestTimeout,
    ServerBusy,
    ServingError,
    Unauthorized,
    render_for,
)
from app.settings import Settings

log = logging.getLogger("app")

# Never refused, never counted against the bound: probes and scrapes must see an overloaded server.
UNBOUNDED_PATHS = ("/health/", "/v2/health/", "/metrics")
# A client's X-Request-Id is echoed when it is short and printable (it ends up in logs and proxies);
# otherwise the answer carries a new one.
SANE_REQUEST_ID = re.compile(rb"^[\x21-\x7e]{1,128}$")
REQUEST_ID = b"x-request-id"
# New ids: a random prefix per process and a counter (unique, and no system call per request).
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count()


class _Disconnected(Exception):
    pass


class Frontend:
    def __init__(self, api: FastAPI, settings: Settings) -> None:
        self.api = api
        self.settings = settings
        self.max_body_bytes = settings.max_body_bytes
        self.direct_dispatch = settings.direct_dispatch
        self.access_log = settings.log_format == "json"
        self.in_progress = 0  # requests past the server-wide bound's check, not yet answered
        api.state.draining = False
        # The documentation's own routes, which are plain Starlette routes: fixed paths, safe as labels.
        self._docs = {api.docs_url, api.redoc_url, api.openapi_url, api.swagger_ui_oauth2_redirect_url} - {
            None
        }
        self._counters: dict[tuple[str, str, str], Any] = {}
        self._latencies: dict[tuple[str, str], Any] = {}
        self._busy = metrics.REJECTED.labels("", "server_busy")
        self._draining = metrics.REJECTED.labels("", "shutting_down")

    @property
    def state(self):
        return self.api.state

    @property
    def draining(self) -> bool:
        """Set on SIGTERM (app/server.py): readiness answers 503 and new requests are refused."""
        return self.api.state.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.api.state.draining = value

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan (and websockets) belong to FastAPI
            await self.api(scope, receive, send)
            return
        started = time.perf_counter()
        outcome = {"status": 500, "model": "", "endpoint": "unmatched"}
        request_id = _request_id(scope)
        notes = logs.start_request(request_id.decode("latin-1"))
        root = _start_trace(scope, request_id) if tracing.enabled() else None

        async def send_with_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                outcome["status"] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != REQUEST_ID]
                message = {**message, "headers": [*headers, (REQUEST_ID, request_id)]}
            await send(message)

        try:
            if scope["path"].startswith(UNBOUNDED_PATHS):
                await self.api(scope, receive, send_with_status)
            else:
                await self._bounded(scope, receive, send_with_status, outcome)
        except _Disconnected:
            outcome["status"] = 499  # client went away; nothing to answer
        finally:
            if outcome["endpoint"] == "unmatched":
                route = scope.get("route")  # FastAPI's routes; the documentation's are plain Starlette ones
                path = getattr(route, "path", None) or (
                    scope["path"] if scope["path"] in self._docs else None
                )
                outcome["endpoint"] = path or "unmatched"
                outcome["model"] = scope.get("state", {}).get("model", "")
            seconds = time.perf_counter() - started
            self._observe(outcome, seconds)
            if self.access_log:
                self._access(scope, outcome, notes, seconds)
            if root is not None:
                tracing.end_request(root, outcome["status"], outcome["model"], notes.get("version"))

    async def _bounded(self, scope: Scope, receive: Receive, send: Send, outcome: dict) -> None:
        path = scope["path"]
        if self.draining:
            self._draining.inc()
            refusal = ServerBusy("the server is shutting down; retry on another replica")
            await _respond(send, *render_for(path, refusal))
            return
        if self.in_progress >= self.settings.max_concurrent_requests:
            self._busy.inc()
            message = f"the server has {self.in_progress} requests in progress, its limit; retry later"
            await _respond(send, *render_for(path, ServerBusy(message, self.settings.retry_after_s)))
            return
        if (
            self.settings.api_key is not None
            and path.startswith(OPENAI_PREFIX)
            and not self._authorized(scope)
        ):
            await _respond(
                send, *render_for(path, Unauthorized("missing or wrong API key (Authorization: Bearer)"))
            )
            return
        self.in_progress += 1
        try:
            await self._dispatch(scope, receive, send, outcome)
        finally:
            self.in_progress -= 1

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, outcome: dict) -> None:
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _respond(send, *render_for(scope["path"], PayloadTooLarge(self._too_large())))
            return
        path, method = scope["path"], scope["method"]
        if self.direct_dispatch and method == "POST":
            endpoint = JSON_ENDPOINTS.get(path)
            if endpoint is not None:
                outcome["endpoint"] = path
                await self._direct(scope, receive, send, outcome, *endpoint)
                return
            match = V2_INFER.match(path)
            if match:
                outcome["endpoint"] = V2_INFER_TEMPLATES[match["version"] is not None]
                infer = functools.partial(handlers.infer_v2, name=match["name"], version=match["version"])
                await self._direct(scope, receive, send, outcome, infer, False)
                return
            match = V2_GENERATE.match(path)
            if match:
                versioned = "/versions/{version}" if match["version"] is not None else ""
                outcome["endpoint"] = f"/v2/models/{{name}}{versioned}/{match['kind']}"
                generate = functools.partial(
                    handlers.generate_v2,
                    name=match["name"],
                    version=match["version"],
                    stream=match["kind"] == "generate_stream",
                )
                await self._direct(scope, receive, send, outcome, generate, True)
                return
        await self.api(scope, self._limited(receive), send)

    async def _direct(
        self, scope: Scope, receive: Receive, send: Send, outcome: dict, handler, watch: bool
    ) -> None:
        """Read the body, run the endpoint's handler (app/api/handlers.py) and send its answer; its
        errors become their responses (500 for anything unexpected)."""
        call = Call({k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}, b"")
        try:
            call.body = await self._read_body(receive)
            exchange = self._exchange(handler, call, send)
            await (self._until_disconnect(receive, exchange) if watch else exchange)
        except ServingError as exc:
            await _respond(send, *render_for(scope["path"], exc))
        except _Disconnected:
            raise  # nobody to answer
        except Exception as exc:  # the FastAPI path's catch-all handler, for the direct path
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            failed = InferenceFailed(f"internal error: {type(exc).__name__}")
            await _respond(send, *render_for(scope["path"], failed))
        finally:
            outcome["model"] = call.model

    async def _exchange(self, handler, call: Call, send: Send) -> None:
        answer: Answer = await handler(self.state, call)
        with tracing.span("response"):  # a stream: until its last event
            await _send_answer(send, answer)

    async def _until_disconnect(self, receive: Receive, work: Awaitable[None]) -> None:
        """Run ``work`` while watching the connection: if the client goes away first, ``work`` is
        cancelled (a generation leaves its batch at the next step) and nothing is answered. One
        watcher task per request; the work runs in this task."""
        task = asyncio.current_task()
        gone = False

        async def watch() -> None:
            nonlocal gone
            await receive()  # the body is read: the next message is the disconnect
            if not finished:
                gone = True
                task.cancel()

        finished = False
        watcher = asyncio.ensure_future(watch())
        try:
            await work
        except asyncio.CancelledError:
            if gone and task.uncancel() == 0:
                raise _Disconnected from None
            raise
        finally:
            finished = True
            watcher.cancel()

    # ---------------------------------------------------------------------------- helpers

    def _authorized(self, scope: Scope) -> bool:
        sent = _header(scope, b"authorization") or ""
        scheme, _, key = sent.partition(" ")
        # Constant time: the comparison must not tell a prober how much of a guess was right.
        return scheme.lower() == "bearer" and hmac.compare_digest(
            key.strip().encode(), self.settings.api_key.encode()
        )

    def _too_large(self) -> str:
        return f"request body is larger than {self.max_body_bytes} bytes"

    async def _read_body(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
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
        except TimeoutError:
            raise RequestTimeout(self._slow_body()) from None

    def _slow_body(self) -> str:
        return f"the request body did not arrive within {self.settings.body_timeout_s:g} s"

    def _limited(self, receive: Receive) -> Receive:
        """``receive`` for FastAPI routes: a streamed body past the size limit fails with 413, one that
        does not arrive within the body timeout with 408."""
        received = 0
        deadline: float | None = None
        complete = False

        async def limited() -> Message:
            nonlocal received, deadline, complete
            if complete:  # only the disconnect is left to hear: no deadline
                return await receive()
            loop = asyncio.get_running_loop()
            deadline = deadline or loop.time() + self.settings.body_timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(self._slow_body()) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise PayloadTooLarge(self._too_large())
                complete = not message.get("more_body", False)
            return message

        return limited

    def _access(self, scope: Scope, outcome: dict, notes: dict, seconds: float) -> None:
        """The request's JSON access line (SERVE_LOG_FORMAT=json)."""
        fields = {
            "method": scope["method"],
            "path": scope["path"][:256],
            "endpoint": outcome["endpoint"],
            "status": outcome["status"],
            "latency_ms": round(seconds * 1000, 3),
            "model": outcome["model"] or None,  # a repository name only (as in the metrics)
            "version": notes.get("version") if outcome["model"] else None,
        }
        for key in ("queue_ms", "compute_ms"):
            if key in notes:
                fields[key] = round(notes[key], 3)
        if "batch_size" in notes:
            fields["batch_size"] = notes["batch_size"]
        logs.access_log.info(
            "%s %s %d", scope["method"], fields["path"], fields["status"], extra={"access": fields}
        )

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


def _request_id(scope: Scope) -> bytes:
    for key, value in scope["headers"]:
        if key == REQUEST_ID:
            if SANE_REQUEST_ID.match(value):
                return value
            break
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}".encode()


def _inference_route(method: str, path: str) -> str | None:
    """The route of an inference request (on either dispatch path), None for any other request."""
    if method != "POST":
        return None
    if path in JSON_ENDPOINTS:
        return path
    match = V2_INFER.match(path)
    if match:
        return V2_INFER_TEMPLATES[match["version"] is not None]
    match = V2_GENERATE.match(path)
    if match:
        versioned = "/versions/{version}" if match["version"] is not None else ""
        return f"/v2/models/{{name}}{versioned}/{match['kind']}"
    return None


def _start_trace(scope: Scope, request_id: bytes):
    """The root span of an inference request (tracing on), None for other requests."""
    route = _inference_route(scope["method"], scope["path"])
    if route is None:
        return None
    return tracing.start_request(
        scope["method"], route, scope["path"], request_id.decode("latin-1"), scope["headers"]
    )


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


async def _send_answer(send: Send, answer: Answer) -> None:
    if answer.stream is None:
        await _respond(send, answer.status, answer.headers, answer.body)
        return
    try:
        await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
        async for event in answer.stream:
            await send({"type": "http.response.body", "body": event, "more_body": True})
    finally:
        await answer.close()  # on cancellation too: the sequence leaves the decode loop, the slot frees
    await send({"type": "http.response.body", "body": b""})


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
