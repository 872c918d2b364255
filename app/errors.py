"""One typed error hierarchy for everything a request can hit; one handler turns it into a response.

Every error answers ``{"error": "<message>"}`` (the shape the KServe V2 protocol and tritonclient
expect), with the status code of its class.
"""

from __future__ import annotations

import logging

import orjson

log = logging.getLogger("app")


class ServingError(Exception):
    status_code = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidInput(ServingError):
    """The request is well-formed JSON but its content does not fit the model (shape, dtype, size)."""

    status_code = 422


class BadRequest(ServingError):
    """The request cannot be parsed at all (bad binary framing, undecodable image, bad header)."""

    status_code = 400


class ModelNotFound(ServingError):
    status_code = 404


class ModelNotReady(ServingError):
    """The model exists in the repository but failed to load (its reason is in /models)."""

    status_code = 503


class QueueFull(ServingError):
    """The model is at its admission or queue bound: the same request can succeed later."""

    status_code = 429

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, round(retry_after_s)))})


class ServerBusy(QueueFull):
    """The server as a whole is at its bound of requests in progress, or shutting down."""

    status_code = 503


class RequestTimeout(ServingError):
    """The body did not arrive within the body timeout; the connection is closed."""

    status_code = 408

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Connection": "close"})


class UnsupportedMediaType(ServingError):
    status_code = 415


class DeadlineExceeded(ServingError):
    status_code = 504


class InferenceFailed(ServingError):
    status_code = 500


class PayloadTooLarge(ServingError):
    status_code = 413


def render(exc: ServingError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The one rendering of an error, for the front door and the FastAPI handlers: status, headers,
    ``{"error": message}``. Server faults are logged (the message is all the client sees)."""
    if exc.status_code >= 500:
        log.warning("-> %d: %s", exc.status_code, exc.message)
    headers = [(b"content-type", b"application/json")]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    return exc.status_code, headers, orjson.dumps({"error": exc.message})


def with_status(message: str, status_code: int, headers: dict[str, str] | None = None) -> ServingError:
    """An error of any status (Starlette's HTTPExceptions: 404 route, 405 method)."""
    error = ServingError(message, headers=headers)
    error.status_code = status_code
    return error
