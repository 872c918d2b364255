"""Model registry in the style of torchvision's ``_api``: builders register under a name.

A builder is a thin function ``(**overrides) -> nn.Module`` that fills a family's dataclass config.
The registry also remembers each builder's config class so that a checkpoint (builder name + config
dict) can always rebuild its model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn


class UnknownModelError(KeyError):
    """Raised for a model name that no builder registered."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    config_cls: type
    family: str


_BUILDERS: dict[str, _Entry] = {}


def register_model(name: str, *, config: type, family: str) -> Callable:
    """Decorator: register ``builder(**overrides) -> nn.Module`` under ``name``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name] = _Entry(fn, config, family)
        return fn

    return wrap


def _entry(name: str) -> _Entry:
    _import_families()
    try:
        return _BUILDERS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {', '.join(sorted(_BUILDERS))}"
        ) from None


def build_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model; ``overrides`` replace fields of its dataclass config.

    Unknown fields and invalid values raise ``ValueError`` with a message naming the field.
    """
    entry = _entry(name)
    fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"model {name!r} has no config field(s) {sorted(unknown)}; fields: {sorted(fields)}")
    return entry.builder(**overrides)


def model_config_class(name: str) -> type:
    return _entry(name).config_cls


def model_family(name: str) -> str:
    return _entry(name).family


def list_models(family: str | None = None) -> list[str]:
    _import_families()
    return sorted(n for n, e in _BUILDERS.items() if family is None or e.family == family)


def _import_families() -> None:
    # Importing the package registers every family's builders.
    import training.models  # noqa: F401
