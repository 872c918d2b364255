"""FastAPI dependencies: the app's registry, created in the lifespan. ``async def`` on
purpose: FastAPI runs plain ``def`` dependencies in its thread pool, two thread hops per request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.registry import Registry


async def get_registry(request: Request) -> Registry:
    return request.app.state.registry


RegistryDep = Annotated[Registry, Depends(get_registry)]


def mark_model(request: Request, name: str, registry: Registry) -> None:
    """Label this request's metrics with the model, once the name is known to the registry."""
    if registry.has(name):
        request.state.model = name
