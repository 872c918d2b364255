"""Model metadata and health: GET /models, GET /models/{name}, the report's pictures
(GET /models/{name}/plots/{file}), /health/live, /health/ready."""

from __future__ import annotations

import contextlib
import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from app.api.deps import RegistryDep, mark_model
from app.api.responses import JSONResponse
from app.api.schemas import ERROR_RESPONSES, LiveResponse, ModelDetails, ModelList, ReadyResponse
from app.core.diffusion import MAX_GUIDANCE_SCALE
from app.errors import InvalidInput, with_status
from app.kinds import GENERATE, PREDICT, generate_kind, predict_kind
from app.registry import ModelVersion, Registry, check_version

router = APIRouter()
# A plot is served only when report.json lists it and its name is a plain PNG file name: even a
# hand-edited report cannot point this route outside its version folder.
PLOT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\.png$")


def describe(mv: ModelVersion, registry: Registry, full: bool) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": mv.name,
        "version": mv.version,
        "versions": sorted(registry.versions(mv.name)),
        "served_versions": registry.served_versions(mv.name),
        "state": mv.state,
        "ready": mv.ready,
        "reason": mv.reason,
        "provider": mv.provider,
        "load_seconds": round(mv.load_seconds, 4),
        "variant": mv.report.variant_kind if mv.report is not None else None,
        "variants": {str(v): kind for v, kind in registry.variant_kinds(mv.name).items()},
    }
    config = mv.config
    if config is None:
        return info
    info.update(family=config.family, task=config.task, description=config.description)
    info["kinds"] = kinds(mv)
    if not full:
        return info
    info["graphs"] = {role: graph.model_dump() for role, graph in config.graphs.items()}
    info["labels"] = config.labels
    pre = config.preprocessing
    info["preprocessing"] = pre.model_dump(exclude={"tokenizer"}) if pre is not None else None
    if pre is not None and pre.kind == "text":
        # What a text request may contain (other characters get 422 unless map_unknown).
        info["preprocessing"]["vocabulary"] = pre.tokenizer.chars
    text = config.text_preprocessing  # a dual encoder's text side, beside its image preprocessing
    if text is not None:
        info["text_preprocessing"] = {
            **text.model_dump(exclude={"tokenizer"}),
            "vocabulary": text.tokenizer.chars,
        }
    info["generation"] = config.generation.model_dump() if config.generation else None
    if config.diffusion is not None:  # the schedule and the defaults of a request (steps, guidance, ...)
        info["diffusion"] = config.diffusion.model_dump()
    info["batching"] = config.batching.model_dump()
    info["instances"] = config.instances.model_dump()
    info["limits"] = request_limits(mv, registry)
    if mv.runners:
        info["queue_depth"] = {role: runner.queue_depth for role, runner in mv.runners.items()}
    if mv.report is not None:
        info["metrics"] = mv.report.metrics
        info["parity"] = mv.report.parity.model_dump()
        info["trained_by"] = mv.report.command
        info["architecture"] = mv.report.model_config_
        info["plots"] = mv.report.plots
        if mv.report.variant is not None:
            info["variant_report"] = mv.report.variant.model_dump()
    return info


def kinds(mv: ModelVersion) -> dict[str, str]:
    """What the model is at each endpoint that serves it (app/kinds.py), e.g. a VAE:
    ``{"/predict": "VAE", "/generate": "image generator"}``; the playground picks its panels by it."""
    found = {}
    for endpoint, kind_of in ((PREDICT, predict_kind), (GENERATE, generate_kind)):
        with contextlib.suppress(InvalidInput):  # not served at this endpoint
            found[endpoint] = kind_of(mv).value
    return found


def request_limits(mv: ModelVersion, registry: Registry) -> dict[str, Any]:
    """The limits that apply to this model's requests (settings, app/settings.py), and its admission
    bound (requests in progress before 429)."""
    settings, config = registry.settings, mv.config
    limits: dict[str, Any] = {
        "max_in_progress": registry.gate(mv.name).limit,
        "max_body_bytes": settings.max_body_bytes,
        "max_json_bytes": settings.max_json_bytes,
    }
    if config.task in ("classification", "reconstruction", "image_translation", "embedding"):
        limits.update(
            max_items=settings.max_items_per_request, max_tensor_elements=settings.max_tensor_elements
        )
    pre = config.preprocessing
    if pre is not None and pre.kind == "image":
        limits.update(
            max_image_pixels=settings.max_image_pixels, max_request_pixels=settings.max_request_pixels
        )
    if config.text_input is not None:
        limits["max_length"] = config.text_input.max_length
    if config.task == "embedding":
        limits.update(
            max_labels=settings.max_labels,
            max_queries=settings.max_queries,
            max_gallery_images=settings.max_gallery_images,
        )
    if config.task == "text_generation":
        limits.update(
            max_new_tokens=settings.max_new_tokens,
            max_stop_strings=settings.max_stop_strings,
            max_stop_length=settings.max_stop_length,
        )
    elif config.task == "seq2seq":
        limits.update(
            max_new_tokens=min(settings.max_new_tokens, pre.max_length), max_beams=settings.max_beams
        )
    if config.generation is not None and config.generation.latent_dim is not None:
        limits["max_images"] = settings.max_images
    if config.diffusion is not None:
        limits.update(
            max_images=settings.max_images,
            max_steps=min(settings.max_diffusion_steps, config.diffusion.timesteps),
            max_denoiser_rows=settings.max_diffusion_rows,
            max_guidance_scale=MAX_GUIDANCE_SCALE,
        )
    return limits


@router.get("/models", tags=["models"], response_model=ModelList)
async def list_models(registry: RegistryDep) -> JSONResponse:
    """Every model in the repository with its served version, state and provider."""
    models = [describe(registry.find(name), registry, full=False) for name in registry.names()]
    return JSONResponse({"models": models})


@router.get("/models/{name}", tags=["models"], response_model=ModelDetails, responses=ERROR_RESPONSES)
async def model_metadata(
    name: str, registry: RegistryDep, request: Request, version: Annotated[int | None, Query(ge=0)] = None
) -> JSONResponse:
    """Task, graphs (inputs/outputs), labels, batching, provider, and quality and parity figures."""
    mark_model(request, name, registry)
    return JSONResponse(describe(registry.find(name, check_version(version)), registry, full=True))


@router.get(
    "/models/{name}/plots/{file}",
    tags=["models"],
    response_class=FileResponse,
    responses={
        200: {"content": {"image/png": {}}, "description": "The picture."},
        404: ERROR_RESPONSES[404],
        422: ERROR_RESPONSES[422],
    },
)
async def report_plot(
    name: str,
    file: str,
    registry: RegistryDep,
    request: Request,
    version: Annotated[int | None, Query(ge=0)] = None,
) -> FileResponse:
    """One of the pictures the version's report.json lists in ``plots`` (confusion matrix, curves,
    samples, ...; GET /models/{name} names them). Only those names are served: nothing else in or
    outside the version folder can be reached through this route."""
    mark_model(request, name, registry)
    mv = registry.find(name, check_version(version))
    listed = [p for p in (mv.report.plots if mv.report is not None else []) if PLOT_NAME.match(p)]
    if file not in listed or not (mv.path / file).is_file():
        raise with_status(f"model {name!r} has no plot {file!r}; plots: {', '.join(listed) or 'none'}", 404)
    return FileResponse(mv.path / file, media_type="image/png")


@router.get("/health/live", tags=["health"], response_model=LiveResponse)
async def live() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "live"}


@router.get(
    "/health/ready",
    tags=["health"],
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "Not ready yet."}},
)
async def ready(registry: RegistryDep, request: Request) -> JSONResponse:
    """Loading finished and at least one model is ready, and the server is not shutting down; lists
    every model's state and provider."""
    served = [registry.find(n) for n in registry.names()] if registry.loaded else []
    ready = registry.ready and not request.app.state.draining
    body = {
        "status": "ready" if ready else "not ready",
        "models": {mv.name: mv.state for mv in served},
        "providers": {mv.name: mv.provider for mv in served},
    }
    return JSONResponse(body, status_code=200 if ready else 503)
