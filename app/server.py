"""``python -m app``: uvicorn serving the app, configured from the same Settings (``SERVE_*``), with the
guards a server facing careless or hostile clients needs and that uvicorn does not set by itself:

- the request head (request line + headers) is bounded in size (431) and must arrive within
  ``header_timeout_s`` once begun, and a new connection must begin its first request within the
  keep-alive timeout (408, then the connection is closed): a client that trickles a header or opens a
  connection and says nothing holds a socket for seconds, not forever;
- idle keep-alive connections close after ``keep_alive_s``; bodies must arrive within
  ``body_timeout_s`` (the front door answers 408, app/frontend.py);
- SIGTERM drains: readiness turns false and new requests get 503 at once, ``drain_s`` later the
  listener closes, in-flight requests get ``shutdown_grace_s`` to finish, then what is left (a stalled
  upload, a long stream) is cut. A second SIGTERM exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app import logs, tracing
from app.frontend import Frontend
from app.main import create_app
from app.settings import Settings

log = logging.getLogger("app")


class _HeadTooLarge(Exception):
    pass


class ServeConfig(uvicorn.Config):
    """uvicorn's Config plus the head limits the protocol below reads."""

    def __init__(self, app: Frontend, settings: Settings, **kwargs: Any) -> None:
        super().__init__(
            app,
            host=settings.host,
            port=settings.port,
            http=GuardedHttpToolsProtocol,
            lifespan="on",
            access_log=False,
            timeout_keep_alive=settings.keep_alive_s,
            timeout_graceful_shutdown=settings.shutdown_grace_s,
            **kwargs,
        )
        self.max_header_bytes = settings.max_header_bytes
        self.header_timeout_s = settings.header_timeout_s


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded, timed request head."""

    def __init__(self, config: ServeConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._max_head = config.max_header_bytes
        self._head_timeout = config.header_timeout_s
        self._first_request_timeout = config.timeout_keep_alive
        self._head_bytes = 0
        self._head_too_large = False
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self._first_request_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._arm(self._head_timeout)

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._head_too_large:  # the parser stopped on our exception: say why
            self._reply_and_close(431, f"request line and headers exceed {self._max_head} bytes")
            return
        super().send_400_response(msg)

    # ------------------------------------------------------------------------------------ helpers

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._max_head:
            self._head_too_large = True
            raise _HeadTooLarge  # httptools turns it into a parser error: data_received -> the 431

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(seconds, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # no request in progress: its head is late
            self._reply_and_close(408, "the request head did not arrive in time")

    def _reply_and_close(self, status: int, message: str) -> None:
        body = message.encode()
        head = [STATUS_LINE.get(status) or f"HTTP/1.1 {status} \r\n".encode()]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.append(
            b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            + b"content-length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
        )
        self.transport.write(b"".join(head) + body)
        self.transport.close()


class Server(uvicorn.Server):
    """uvicorn's Server with a draining first step on SIGTERM/SIGINT."""

    def __init__(self, config: ServeConfig, frontend: Frontend, drain_s: float) -> None:
        super().__init__(config)
        self.frontend = frontend
        self.drain_s = drain_s
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.frontend.draining:  # a second signal: uvicorn's own handling (force exit)
            super().handle_exit(sig, frame)
            return
        self.frontend.draining = True
        log.info("shutting down: readiness is false; the listener closes in %.1f s", self.drain_s)
        if self.drain_s <= 0:
            self.should_exit = True
            return
        if self._loop is None:  # not started yet
            self.should_exit = True
            return
        self._loop.call_soon_threadsafe(
            self._loop.call_later, self.drain_s, setattr, self, "should_exit", True
        )


def build_server(settings: Settings, **config: Any) -> Server:
    """The configured server for ``settings`` (tests start it the same way, in a thread)."""
    frontend = create_app(settings)
    return Server(ServeConfig(frontend, settings, **config), frontend, settings.drain_s)


def main() -> None:
    settings = Settings()
    logs.configure(settings.log_format)
    try:
        tracing.require(settings)
    except tracing.TracingUnavailable as exc:
        sys.exit(f"error: {exc}")
    sys.setswitchinterval(settings.switch_interval_s)
    # log_config=None: uvicorn's loggers propagate to the root handler (one format for every line).
    build_server(settings, log_config=None).run()
