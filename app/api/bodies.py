"""Request bodies: the content-type rule, the model name read off the raw bytes for admission, and
parsing (orjson, then pydantic)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from app import tracing
from app.admission import Ticket
from app.errors import BadRequest, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from app.registry import Registry
from app.settings import Settings

Body = TypeVar("Body", bound=BaseModel)

# The "model" member as a client writes it (model names are [a-z0-9_-], so no escapes). A quote inside
# a JSON string is always escaped, so this cannot match inside another member's string value.
MODEL_MEMBER = re.compile(rb'"model"\s*:\s*"([a-z0-9][a-z0-9_-]{0,127})"')

# The media types a browser may POST to another origin without a CORS preflight: a body of one of
# these is never parsed, so a web page cannot make a visitor's browser run work on this server.
SIMPLE_MEDIA_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")


def media_type(content_type: str | None) -> str | None:
    return None if content_type is None else content_type.split(";", 1)[0].strip().lower()


def require_json(content_type: str | None) -> None:
    """/predict and /generate parse JSON only when the Content-Type says JSON or is absent."""
    media = media_type(content_type)
    if (
        media is None
        or media == "application/json"
        or (media.startswith("application/") and media.endswith("+json"))
    ):
        return
    raise UnsupportedMediaType(f"Content-Type must be application/json (or absent); got {media!r}")


def refuse_simple_media(content_type: str | None) -> None:
    """V2 infer takes JSON, the binary extension, or no Content-Type (tritonclient sends none)."""
    media = media_type(content_type)
    if media in SIMPLE_MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type {media!r} is not accepted; send application/json, application/octet-stream or none"
        )


def check_json_size(raw: bytes, max_json_bytes: int) -> None:
    if len(raw) > max_json_bytes:
        raise PayloadTooLarge(
            f"the JSON body is {len(raw)} bytes; at most {max_json_bytes} "
            "(send large tensors to the V2 infer endpoint with the binary tensor extension)"
        )


# A body that orjson refuses is parsed again by pydantic, which reads NaN, Infinity and numbers that
# overflow a double, so that the field holding one is named (by pydantic or by the checks after it);
# only small bodies, since that parse is slower.
REPARSE_BYTES = 64 * 1024


# List fields whose length a setting bounds: field -> (that setting, the refusal). Checked on the
# parsed JSON (top level, and V2 generate's ``parameters``), before pydantic validates every item:
# 200,000 chat messages (6 MB) took 550 ms of validation on the event loop, 2,000,000 prompts 130 ms.
# The data plane checks the same bounds again on the validated body.
LIST_LIMITS: dict[str, tuple[str, str]] = {
    "messages": ("max_messages", "messages holds {n} messages; at most {limit}"),
    "prompt": ("max_prompts", "prompt holds {n} prompts; at most {limit}"),
    "stop": ("max_stop_strings", "stop has {n} strings; at most {limit}"),
    "latent": ("max_images", "latent must hold 1 to {limit} vectors; got {n}"),
    "class": ("max_images", "class holds {n} classes; at most {limit} images per request"),
}


def parse_body(model: type[Body], raw: bytes, settings: Settings | None = None) -> Body:
    """orjson, then pydantic on the objects: for bodies of many numbers this is ~2.4x faster than
    pydantic's own JSON parsing (5 MB of nested lists: 35 vs 85 ms, all of it holding the interpreter),
    and as fast for small ones. With ``settings``, LIST_LIMITS are checked in between. Traced as the
    request's ``parse`` span."""
    with tracing.span("parse"):
        return _parse(model, raw, settings)


def _check_lists(data: dict[str, Any], settings: Settings) -> None:
    parameters = data.get("parameters")
    for obj, prefix in ((data, ""), (parameters if isinstance(parameters, dict) else {}, "parameters.")):
        for field, (setting, refusal) in LIST_LIMITS.items():
            value = obj.get(field)
            limit = getattr(settings, setting)
            if isinstance(value, list) and len(value) > limit:
                raise InvalidInput(prefix + refusal.format(n=len(value), limit=limit), param=prefix + field)


def _parse(model: type[Body], raw: bytes, settings: Settings | None = None) -> Body:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if len(raw) <= REPARSE_BYTES:
            return _parse_lenient(model, raw, exc)
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    if settings is not None:
        _check_lists(data, settings)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(_fields(model, exc), param=_param(exc)) from None


def _parse_lenient(model: type[Body], raw: bytes, refused: orjson.JSONDecodeError) -> Body:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise BadRequest(f"request body is not valid JSON: {refused}") from None
        if any(e["type"] == "model_type" and not e["loc"] for e in errors):
            raise BadRequest("request body must be a JSON object") from None
        raise InvalidInput(_fields(model, exc), param=_param(exc)) from None


UNION_MEMBERS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _param(exc: ValidationError) -> str | None:
    """The first refused field, as OpenAI's error ``param`` names it (``messages[0].role``)."""
    errors = exc.errors(include_url=False)
    if not errors or not errors[0]["loc"]:
        return None
    where = ""
    for part in errors[0]["loc"]:
        if isinstance(part, str) and (part in UNION_MEMBERS or "[" in part):
            continue  # pydantic names the member of a union it tried ("str", "list[str]"): no field
        where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
    return where or None


def _fields(model: type[BaseModel], exc: ValidationError) -> str:
    """Every refused field and why; a field sent by its old name says its new one (``renamed``)."""
    renamed: dict[str, str] = getattr(model, "renamed", {})
    # A schema may say why it refuses unknown fields (the OpenAI bodies: "not supported").
    unknown: str | None = getattr(model, "unknown_field", None)

    def why(error: Any) -> str:
        where = ".".join(str(p) for p in error["loc"])
        if error["type"] == "extra_forbidden" and where in renamed:
            return f"{where}: renamed {renamed[where]}"
        if error["type"] == "extra_forbidden" and unknown:
            return f"{where}: {unknown}"
        return f"{where or 'body'}: {error['msg']}"

    return "; ".join(why(e) for e in exc.errors(include_url=False))


@asynccontextmanager
async def admitted(registry: Registry, schema: type[Body], raw: bytes) -> AsyncIterator[tuple[Body, Ticket]]:
    """The parsed body and its admission ticket (app/admission.py): the model's gate is passed on the
    name read off the raw bytes, before the body is parsed. The ticket is released when the block
    ends, or earlier by the caller once its answer is ready (so that the next request, which the
    client may send the moment it has the answer, finds the slot free)."""
    match = MODEL_MEMBER.search(raw)
    if match is None:  # no plainly written model: the parse says what is wrong, or finds the name
        body = parse_body(schema, raw, registry.settings)
        name = body.model
    else:
        body, name = None, match[1].decode()
    with await registry.gate(name).admit(len(raw)) as ticket:
        if body is None:
            body = parse_body(schema, raw, registry.settings)
            if body.model != name:
                raise InvalidInput("model: given more than once")
        yield body, ticket


def documented_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` that documents ``model`` as the JSON body of a route that reads it raw. The
    schema's own definitions are inlined: a ``$ref`` to ``#/$defs/...`` does not resolve in OpenAPI."""
    schema = model.model_json_schema(by_alias=True)
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(definitions[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}
