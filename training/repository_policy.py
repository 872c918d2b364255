"""Where a run's model goes in the model repository, and when it must not go there.

The server reads one ``<name>/config.json`` for all versions of a model and serves the highest integer
version folder (or the one config.json pins). A user's good model must survive a quick experiment, so:

* without ``--version`` a run writes the next version; an existing version folder is replaced only with
  ``--overwrite``;
* a run never changes the config.json that existing versions are served with, unless ``--overwrite``;
* a model that misses a quality bar of its recipe never replaces or supersedes a served model that
  meets them all (not even with ``--overwrite``).

Every check here only reads the repository; the exporter (training.export) does the writing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.core.repository_format import (
    CONFIG_FILE,
    REPORT_FILE,
    ModelConfig,
    Report,
    served_version,
    variant_sources,
    version_folders,
)
from training.recipes import BarResult, QualityBar, check_bars

# config.json fields that belong to whoever runs the server, not to the trained model: which version
# to serve, and how to batch and place it. No recipe writes them (the exporter writes the defaults), so
# two runs of one recipe differ here only where someone tuned config.json by hand. A new version keeps
# what is there, and they are left out of the comparison.
SERVING_FIELDS = ("version", "version_policy", "batching", "instances")

# Where the messages send a run that must not go into the served repository.
OTHER_REPOSITORY = "runs/models"


class RepositoryConflict(ValueError):
    """Writing would replace a version folder or change a shared config.json; the message says how to
    go ahead (``--overwrite``, or another repository)."""


def _versions(model_dir: Path) -> list[int]:
    return version_folders(model_dir) if model_dir.is_dir() else []


def choose_version(model_dir: Path, requested: int | None, *, overwrite: bool) -> int:
    """The version folder a run writes: ``requested``, refused when it exists and ``overwrite`` is off;
    without one, the next integer version (1 for a new model). Reads only, so a run calls it first."""
    existing = _versions(model_dir)
    following = max(existing, default=0) + 1
    if requested is None:
        return following
    if requested < 1:
        raise ValueError("--version must be >= 1")
    target = model_dir / str(requested)
    if target.exists() and not overwrite:
        raise RepositoryConflict(
            f"{target} already exists; pass --overwrite to replace it, or leave out --version to write "
            f"version {following}"
        )
    return requested


# Two runs of one recipe compute the training split's mean/std with another summation order (thread
# count, BLAS build) and differ in the last digits (measured: 1.3e-13 on the digits' std, 1 thread vs
# 2). Far below what serving resolves (float32 inputs, 8-bit pixels step by 1/255), so not a change.
FLOAT_RELATIVE_TOLERANCE = 1e-5


def _same(a: Any, b: Any) -> bool:
    """JSON values equal, numbers to within FLOAT_RELATIVE_TOLERANCE."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    numbers = (int, float)
    if (
        isinstance(a, numbers)
        and isinstance(b, numbers)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return math.isclose(a, b, rel_tol=FLOAT_RELATIVE_TOLERANCE, abs_tol=1e-12)
    return a == b


def config_differences(
    existing: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...] = ()
) -> list[str]:
    """Top-level config.json fields whose values differ (an absent field counts as null, as the
    exporter leaves null fields out; numbers compare to a relative 1e-5), apart from the serving
    fields and ``ignore``."""
    skipped = set(SERVING_FIELDS) | set(ignore)
    keys = (set(existing) | set(new)) - skipped
    return sorted(key for key in keys if not _same(existing.get(key), new.get(key)))


def _existing_config(model_dir: Path) -> dict[str, Any] | None:
    """config.json as a dict; None when there is none, {} when it is no JSON object."""
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def check_config(
    model_dir: Path, new: dict[str, Any], *, overwrite: bool, ignore: tuple[str, ...] = ()
) -> None:
    """Refuse (RepositoryConflict) to write config ``new`` (the JSON dict the exporter writes) over a
    config.json it differs from, unless ``overwrite``: that one file says how every version is served."""
    existing = _existing_config(model_dir)
    if overwrite or existing is None:
        return
    fields = config_differences(existing, new, ignore) if existing else ["(not a JSON object)"]
    if fields:
        raise RepositoryConflict(
            f"{model_dir / CONFIG_FILE} is shared by every version of {model_dir.name}, and this run's "
            f"config differs in {', '.join(fields)}; export to another repository "
            f"(--out {OTHER_REPOSITORY}), or pass --overwrite to replace it (its existing versions "
            "would then be served with the new one)"
        )


def config_matches(model_dir: Path, new: dict[str, Any]) -> bool:
    """Whether ``model_dir`` has a config.json that ``new`` does not differ from (see
    config_differences); a new version then leaves that file as it is, byte for byte."""
    existing = _existing_config(model_dir)
    return bool(existing) and not config_differences(existing, new)


def serving_settings(model_dir: Path) -> dict[str, Any]:
    """The serving fields of an existing config.json, which a newly written config keeps."""
    existing = _existing_config(model_dir) or {}
    return {key: existing[key] for key in SERVING_FIELDS if existing.get(key) is not None}


@dataclass(frozen=True)
class ServedModel:
    """The version of a model the server serves, and how its report.json meets its recipe's bars."""

    version: int
    bars: list[BarResult]

    @property
    def passes(self) -> bool:
        return all(result.ok for result in self.bars)


def served_model(model_dir: Path, bars: tuple[QualityBar, ...]) -> ServedModel | None:
    """What the server would serve from ``model_dir`` (the config's pin, else the highest version),
    judged on ``bars``; None when nothing servable is there (no valid config.json, no version folder,
    no readable report.json): such a folder holds no model that a new one could take the place of."""
    try:
        config = ModelConfig.model_validate_json((model_dir / CONFIG_FILE).read_text())
    except (OSError, ValidationError):
        return None
    version = served_version(_versions(model_dir), config.version, variant_sources(model_dir))
    if version is None:
        return None
    try:
        report = Report.model_validate_json((model_dir / str(version) / REPORT_FILE).read_text())
    except (OSError, ValidationError):
        return None
    return ServedModel(version=version, bars=check_bars(bars, report.metrics))
