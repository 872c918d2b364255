"""The model repository, loaded: name -> versions -> (config, report, one runner per graph).

Every model folder is loaded at start-up: config.json validated against the schema, each graph's
sha256 checked against report.json, sessions created (``instances.count`` per graph) and warmed up.
A model that fails any step is kept with its reason and state ``failed``; the others serve on.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from pydantic import ValidationError

from app import metrics
from app.admission import Gate, WaitingRoom
from app.core.repository_format import (
    CONFIG_FILE,
    REPORT_FILE,
    Batching,
    ModelConfig,
    Report,
    served_version,
    sha256_of,
    version_folders,
)
from app.core.tokenizer import CharTokenizer
from app.decode_loop import GenerationLimits, TextGenerator
from app.errors import InvalidInput, ModelNotFound, ModelNotReady
from app.runner import Runner
from app.session import Session, SessionOptions
from app.settings import Settings

log = logging.getLogger(__name__)

READY, FAILED = "ready", "failed"
PRIMARY_ROLES = ("model", "encoder", "generator", "decoder")  # the graph /predict and V2 run
DECODER_STEP = "decoder_step"


@dataclass
class ModelVersion:
    name: str
    version: int
    path: Path  # models/<name>/<version>
    config: ModelConfig | None = None
    report: Report | None = None
    state: str = FAILED
    reason: str | None = None
    runners: dict[str, Runner] = field(default_factory=dict)  # graph role -> runner
    provider: str | None = None
    load_seconds: float = 0.0
    tokenizer: CharTokenizer | None = None
    generator: TextGenerator | None = None  # the decode loop of a text-generation model

    @property
    def ready(self) -> bool:
        return self.state == READY

    @cached_property
    def primary_role(self) -> str:
        assert self.config is not None
        return next((r for r in PRIMARY_ROLES if r in self.config.graphs), next(iter(self.config.graphs)))

    def runner(self, role: str | None = None) -> Runner:
        return self.runners[role or self.primary_role]


def _effective_config(config: ModelConfig, settings: Settings) -> ModelConfig:
    """Apply the SERVE_* overrides to the model's batching and instances."""
    batching = {
        k: getattr(settings, k)
        for k in ("max_batch_size", "max_queue_delay_ms", "max_queue_size", "timeout_ms")
        if getattr(settings, k) is not None
    }
    instances = {
        k: v
        for k, v in (
            ("count", settings.instances),
            ("device", settings.device),
            ("intra_op_threads", settings.intra_op_threads),
        )
        if v is not None
    }
    return config.model_copy(
        update={
            "batching": Batching(**{**config.batching.model_dump(), **batching}),
            "instances": config.instances.model_copy(update=instances),
        }
    )


class Registry:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.model_repository
        self._models: dict[str, dict[int, ModelVersion]] = {}
        self._default: dict[str, int] = {}
        self._gates: dict[str, Gate] = {}
        self._waiting_room = WaitingRoom(settings.max_waiting_bytes)
        self.loaded = False
        self.limits = GenerationLimits(
            settings.max_active_sequences, settings.max_queued_sequences, settings.max_cached_tokens
        )

    # ------------------------------------------------------------------------------ loading

    def load_all(self) -> None:
        """Load every model version in the repository (blocking; a thread pool overlaps the
        sessions' start-up). Never raises for a broken model."""
        started = time.perf_counter()
        if not self.root.is_dir():
            log.error("model repository %s does not exist; serving no models", self.root)
            self.loaded = True
            return
        jobs = []
        for model_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            versions = version_folders(model_dir)
            if not versions:
                versions = [0]  # a folder without versions is listed as failed
            for version in versions:
                jobs.append(ModelVersion(model_dir.name, version, model_dir / str(version)))
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(self._load, jobs))
        for mv in jobs:
            self._models.setdefault(mv.name, {})[mv.version] = mv
        for name, versions in self._models.items():
            pinned = next(
                (v.config.version for v in versions.values() if v.config and v.config.version), None
            )
            self._default[name] = served_version(list(versions), pinned)
            default = versions[self._default[name]]
            self._gates[name] = Gate(
                name,
                self._admission_limit(default),
                wait_s=self.settings.admission_wait_s,
                hold_s=self.settings.admission_hold_s,
                max_waiting=self.settings.max_waiting_per_model,
                room=self._waiting_room,
                retry_after_s=self.settings.retry_after_s,
            )
            for state in (READY, FAILED):
                metrics.MODEL_STATE.labels(name, state).set(1 if default.state == state else 0)
        self.loaded = True
        ready = sum(mv.ready for mv in jobs)
        log.info("loaded %d of %d model versions in %.2f s", ready, len(jobs), time.perf_counter() - started)

    def _load(self, mv: ModelVersion) -> None:
        started = time.perf_counter()
        try:
            self._load_or_raise(mv)
            mv.state, mv.reason = READY, None
        except Exception as exc:  # a broken model disables itself, never the server
            mv.state, mv.reason = FAILED, self._reason(exc)
            mv.runners, mv.generator = {}, None
            log.error(
                "model %s version %s failed to load: %s: %s", mv.name, mv.version, type(exc).__name__, exc
            )
        mv.load_seconds = time.perf_counter() - started
        metrics.LOAD_TIME.labels(mv.name).set(mv.load_seconds)

    def _reason(self, exc: Exception) -> str:
        """Why a model failed, as clients see it (in /models and 503s): paths relative to the repository,
        no config excerpts; the log has the full exception."""
        if isinstance(exc, ValidationError):
            fields = sorted({".".join(str(p) for p in e["loc"]) or "(root)" for e in exc.errors()})
            return f"{exc.title} is invalid: {', '.join(fields)}"
        text = str(exc)
        # Absolute spellings only: a relative root ("models") is no leak, and is a common word.
        for root in {str(self.root.resolve()), str(self.root.absolute())}:
            text = text.replace(root + "/", "").replace(root, "")
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

    def _admission_limit(self, mv: ModelVersion) -> int:
        """Requests a model may hold in progress (app/admission.py): what its batching can absorb."""
        if mv.generator is not None:
            return self.settings.max_active_sequences + self.settings.max_queued_sequences
        if mv.config is None:
            return 1  # failed before its config was read: answers 503 anyway
        if mv.config.task == "seq2seq":
            return self.settings.max_concurrent_searches
        return mv.config.batching.max_queue_size

    def _load_or_raise(self, mv: ModelVersion) -> None:
        model_dir = mv.path.parent
        config = ModelConfig.model_validate_json((model_dir / CONFIG_FILE).read_text())
        if config.name != mv.name:
            raise ValueError(f"config.json names the model {config.name!r}, its folder is {mv.name!r}")
        if not mv.path.is_dir():
            raise FileNotFoundError(f"no version folder in {model_dir}")
        mv.config = config = _effective_config(config, self.settings)
        report_path = mv.path / REPORT_FILE
        mv.report = Report.model_validate_json(report_path.read_text()) if report_path.is_file() else None
        if config.preprocessing is not None and config.preprocessing.kind == "text":
            mv.tokenizer = CharTokenizer.from_dict(config.preprocessing.tokenizer.model_dump())
        options = SessionOptions(config.instances.device, config.instances.intra_op_threads)
        for role, graph in config.graphs.items():
            path = mv.path / graph.file
            if self.settings.verify_sha256:
                if mv.report is None:
                    raise FileNotFoundError(f"{report_path} is missing, so {graph.file} cannot be verified")
                expected = mv.report.sha256.get(graph.file)
                if expected is None:
                    raise ValueError(f"report.json has no sha256 for {graph.file}")
                if sha256_of(path) != expected:
                    raise ValueError(
                        f"{graph.file}: sha256 does not match report.json (file changed or corrupt)"
                    )
            label = f"{mv.name}/{mv.version}/{role}"
            # The KV-cache step graph belongs to the decode loop (one session: the loop is the batch).
            count = 1 if role == DECODER_STEP else config.instances.count
            sessions = [Session(path, graph, options, label) for _ in range(count)]
            if self.settings.warmup:
                for session in sessions:
                    session.warmup()
            mv.provider = sessions[0].provider
            if role == DECODER_STEP:
                block_size = config.preprocessing.max_length
                mv.generator = TextGenerator(mv.name, sessions[0], mv.tokenizer, block_size, self.limits)
            else:
                mv.runners[role] = Runner(mv.name, graph, sessions, config.batching)
        metrics.PROVIDER.labels(mv.name, mv.provider).set(1)

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for mv in self.all_versions():
            for runner in mv.runners.values():
                runner.start()
            if mv.generator is not None:
                mv.generator.start()

    async def stop(self) -> None:
        for mv in self.all_versions():
            for runner in mv.runners.values():
                await runner.stop()
            if mv.generator is not None:
                await mv.generator.stop()

    # ------------------------------------------------------------------------------ lookup

    def all_versions(self) -> list[ModelVersion]:
        return [mv for versions in self._models.values() for mv in versions.values()]

    def gate(self, name: str) -> Gate:
        """The model's admission gate (ModelNotFound for a name the repository does not have)."""
        gate = self._gates.get(name)
        if gate is None:
            self.versions(name)  # raises with the list of known models
        return gate

    def has(self, name: str) -> bool:
        return name in self._models

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> dict[int, ModelVersion]:
        if name not in self._models:
            known = ", ".join(self.names()) or "none"
            raise ModelNotFound(f"unknown model {name!r}; known models: {known}")
        return self._models[name]

    def find(self, name: str, version: int | None = None) -> ModelVersion:
        """The model version, loaded or not (metadata works for failed models too)."""
        versions = self.versions(name)
        version = self._default[name] if version is None else version
        if version not in versions:
            raise ModelNotFound(f"model {name!r} has no version {version}; versions: {sorted(versions)}")
        return versions[version]

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        """A ready model version, or the error that says why not."""
        mv = self.find(name, version)
        if not mv.ready:
            raise ModelNotReady(f"model {name!r} version {mv.version} is not ready: {mv.reason}")
        return mv

    @property
    def ready(self) -> bool:
        return self.loaded and any(mv.ready for mv in self.all_versions())


def check_version(value: str | int | None) -> int | None:
    """Versions arrive as path segments or JSON; both must be non-negative integers."""
    if value is None or value == "":
        return None
    try:
        version = int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"version must be an integer; got {value!r}") from None
    if version < 0:
        raise InvalidInput(f"version must be >= 0; got {version}")
    return version
