"""Model metadata and health: GET /models, GET /models/{name}, /health/live, /health/ready."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from app.api.deps import RegistryDep, mark_model
from app.api.responses import JSONResponse
from app.api.schemas import ERROR_RESPONSES, LiveResponse, ModelDetails, ModelList, ReadyResponse
from app.core.diffusion import MAX_GUIDANCE_SCALE
from app.registry import ModelVersion, Registry, check_version

router = APIRouter()


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
    }
    config = mv.config
    if config is None:
        return info
    info.update(family=config.family, task=config.task, description=config.description)
    if not full:
        return info
    info["graphs"] = {role: graph.model_dump() for role, graph in config.graphs.items()}
    info["labels"] = config.labels
    pre = config.preprocessing
    info["preprocessing"] = pre.model_dump(exclude={"tokenizer"}) if pre is not None else None
    if pre is not None and pre.kind == "text":
        # What a text request may contain (other characters get 422 unless map_unknown).
        info["preprocessing"]["vocabulary"] = pre.tokenizer.chars
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
    return info


def request_limits(mv: ModelVersion, registry: Registry) -> dict[str, Any]:
    """The limits that apply to this model's requests (settings, app/settings.py), and its admission
    bound (requests in progress before 429)."""
    settings, config = registry.settings, mv.config
    limits: dict[str, Any] = {
        "max_in_progress": registry.gate(mv.name).limit,
        "max_body_bytes": settings.max_body_bytes,
        "max_json_bytes": settings.max_json_bytes,
    }
    if config.task in ("classification", "reconstruction", "image_translation"):
        limits.update(
            max_items=settings.max_items_per_request, max_tensor_elements=settings.max_tensor_elements
        )
    pre = config.preprocessing
    if pre is not None and pre.kind == "image":
        limits.update(
            max_image_pixels=settings.max_image_pixels, max_request_pixels=settings.max_request_pixels
        )
    if pre is not None and pre.kind == "text":
        limits["max_length"] = pre.max_length
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
