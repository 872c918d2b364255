"""One typed error hierarchy for everything a request can hit; one handler turns it into a response.

Every error answers ``{"error": "<message>"}`` (the shape the KServe V2 protocol and tritonclient
expect), with the status code of its class; under ``/v1/`` (the OpenAI-compatible API) it answers
OpenAI's shape instead, ``{"error": {"message", "type", "param", "code"}}`` (:func:`render_openai`).
"""

from __future__ import annotations

import logging

import orjson

log = logging.getLogger("app")


class ServingError(Exception):
    status_code = 500

    def __init__(
        self, message: str, *, headers: dict[str, str] | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.param = param  # the request field at fault, when one is (OpenAI's error "param")


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


class Unauthorized(ServingError):
    """A request to the OpenAI-compatible API without the key the server was started with."""

    status_code = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ServingError):
    """A part of the API that this server's configuration turns off (the model control API without
    SERVE_ADMIN_TOKEN)."""

    status_code = 403


def render(exc: ServingError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The one rendering of an error, for the front door and the FastAPI handlers: status, headers,
    ``{"error": message}``. Server faults are logged (the message is all the client sees)."""
    if exc.status_code >= 500:
        log.warning("-> %d: %s", exc.status_code, exc.message)
    headers = [(b"content-type", b"application/json")]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    return exc.status_code, headers, orjson.dumps({"error": exc.message})


OPENAI_PREFIX = "/v1/"

# status -> OpenAI's error type and code. The OpenAI clients pick their exception by the status alone
# (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 429 RateLimitError, ...); the
# type and code are what OpenAI itself sends with each.
_OPENAI_KINDS = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "model_not_found"),
    408: ("invalid_request_error", "timeout"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    503: ("server_error", "service_unavailable"),
}


def render_openai(exc: ServingError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An error as the OpenAI API answers it. A request whose content is wrong is a 400 there (this
    API's own endpoints say 422): OpenAI clients raise BadRequestError for it, as for OpenAI."""
    status, headers, _ = render(exc)
    if status == 422:
        status = 400
    fallback = ("server_error" if status >= 500 else "invalid_request_error", None)
    kind, code = _OPENAI_KINDS.get(status, fallback)
    if status == 404 and not isinstance(exc, ModelNotFound):
        code = "not_found"
    error = {"message": exc.message, "type": kind, "param": exc.param, "code": code}
    return status, headers, orjson.dumps({"error": error})


def render_for(path: str, exc: ServingError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The rendering the path's API speaks."""
    return render_openai(exc) if path.startswith(OPENAI_PREFIX) else render(exc)


def with_status(message: str, status_code: int, headers: dict[str, str] | None = None) -> ServingError:
    """An error of any status (Starlette's HTTPExceptions: 404 route, 405 method)."""
    error = ServingError(message, headers=headers)
    error.status_code = status_code
    return error
