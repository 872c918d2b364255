"""Logging: the request id in every log line of its request, and JSON lines when configured.

The front door (app/frontend.py) sets :data:`REQUEST_ID` and a fresh :func:`note` record for each
request (contextvars: every task and ``asyncio.to_thread`` call of that request sees them); the
:class:`RequestContext` filter stamps each record with the id. With ``SERVE_LOG_FORMAT=json`` every
line is one JSON object (``ts``, ``level``, ``logger``, ``message``, ``request_id``) and the front door
writes one access line per request (``logger: app.access``) with the model, version, status, latency,
the queue and compute time its batches took and their batch size (what the runner and registry
:func:`note` while the request runs).
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from typing import Any

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
_NOTES: ContextVar[dict[str, Any] | None] = ContextVar("request_notes", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
access_log = logging.getLogger("app.access")


def start_request(request_id: str) -> dict[str, Any]:
    """Called by the front door as a request begins: its id and its (empty) notes."""
    REQUEST_ID.set(request_id)
    notes: dict[str, Any] = {}
    _NOTES.set(notes)
    return notes


def request_id() -> str | None:
    return REQUEST_ID.get()


def note(**fields: Any) -> None:
    """Record facts about the current request for its access line (no-op outside a request)."""
    notes = _NOTES.get()
    if notes is not None:
        notes.update(fields)


def add_batch(queue_s: float, compute_s: float, batch_size: int) -> None:
    """One batch this request took part in: times add up, the batch size is the largest."""
    notes = _NOTES.get()
    if notes is None:
        return
    notes["queue_ms"] = notes.get("queue_ms", 0.0) + queue_s * 1000
    notes["compute_ms"] = notes.get("compute_ms", 0.0) + compute_s * 1000
    notes["batch_size"] = max(notes.get("batch_size", 0), batch_size)


class RequestContext(logging.Filter):
    """Stamps every record with the id of the request it was logged for ("-" outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get() or "-"
        return True


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or REQUEST_ID.get() or "-",
        }
        access = getattr(record, "access", None)
        if access:
            line.update(access)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def handler(log_format: str) -> logging.Handler:
    """A stderr handler in the configured format, with the request-id filter."""
    out = logging.StreamHandler()
    out.addFilter(RequestContext())
    out.setFormatter(JsonLines() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    return out


def configure(log_format: str, level: int = logging.INFO) -> None:
    """The process's logging (``python -m app``): one handler on the root logger, which uvicorn's
    loggers propagate to as well."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler(log_format))
    root.setLevel(level)
