"""The model repository, loaded: name -> versions -> (config, report, one runner per graph).

Every model folder is loaded at start-up (explicit mode: those SERVE_STARTUP_MODELS names): the
versions its ``version_policy`` serves (default: the highest), each with config.json validated against
the schema, each graph's sha256 checked against report.json, sessions created (``instances.count`` per
graph) and warmed up. A version that fails any step is kept with its reason and state ``failed``; the
others serve on.

Model control (SERVE_MODEL_CONTROL_MODE): ``poll`` re-scans the repository every SERVE_POLL_INTERVAL_S,
``explicit`` only on a control request (:meth:`Registry.load`, :meth:`Registry.unload`). A scan
fingerprints every version folder (each file's name, size, mtime and inode, and config.json's), so a
new or changed version is loaded (on a worker thread: verified, warmed up) and only then swapped in;
the requests admitted before the swap finish on the version they picked (the gate's epochs,
app/admission.py), then the old one stops. A version that fails to load keeps the serving one in
place, and its reason is shown; the same broken copy is not retried until its files change. Writers
publish a version atomically: write it into a dot folder (which nobody reads) and rename it into place
(training/export.py does); a half-copied folder fails the sha256 check until it is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from pydantic import ValidationError

from app import logs, metrics
from app.admission import Gate, WaitingRoom
from app.core.repository_format import (
    CONFIG_FILE,
    REPORT_FILE,
    Batching,
    ModelConfig,
    Report,
    VersionPolicy,
    policy_versions,
    served_version,
    sha256_of,
    variant_sources,
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
# A model name a control request may name: what config.json's schema allows (so no path, no URL).
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# The graph /predict and V2 run (a dual encoder's V2 graph is its image encoder; /predict runs both).
PRIMARY_ROLES = ("model", "encoder", "image_encoder", "generator", "decoder")
DECODER_STEP = "decoder_step"
EMBEDDING_ROLES = ("image_encoder", "text_encoder")  # a dual encoder's two graphs


@dataclass
class RequestStats:
    """Inference requests that reached this version: [count, ns] of successes and failures."""

    success: list[int] = field(default_factory=lambda: [0, 0])
    fail: list[int] = field(default_factory=lambda: [0, 0])
    last_inference_ms: int = 0

    def record(self, ok: bool, ns: int) -> None:
        stat = self.success if ok else self.fail
        stat[0] += 1
        stat[1] += ns
        self.last_inference_ms = time.time_ns() // 1_000_000


@dataclass(eq=False)
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
    fingerprint: tuple = ()  # the files it was loaded from (ModelScan)
    override: ModelConfig | None = None  # a control request's config, used instead of config.json
    # A newer copy of this version failed to load; this one serves on. (fingerprint, reason)
    failed_reload: tuple[tuple, str] | None = None
    stats: RequestStats = field(default_factory=RequestStats)

    @property
    def ready(self) -> bool:
        return self.state == READY

    @cached_property
    def primary_role(self) -> str:
        assert self.config is not None
        return next((r for r in PRIMARY_ROLES if r in self.config.graphs), next(iter(self.config.graphs)))

    def runner(self, role: str | None = None) -> Runner:
        return self.runners[role or self.primary_role]

    def start(self) -> None:
        for runner in self.runners.values():
            runner.start()
        if self.generator is not None:
            self.generator.start()

    async def stop(self) -> None:
        for runner in self.runners.values():
            await runner.stop()
        if self.generator is not None:
            await self.generator.stop()


@dataclass
class ModelScan:
    """What one model folder holds now: version -> fingerprint, its config's policy and pin, and which
    versions are variants (version -> source version)."""

    name: str
    folders: dict[int, tuple]
    policy: VersionPolicy | None = None
    pinned: int | None = None
    exists: bool = True
    variants: dict[int, int] = field(default_factory=dict)

    def targets(self) -> list[int]:
        return policy_versions(list(self.folders), self.policy, self.pinned, self.variants)


def _stat_key(st: os.stat_result) -> tuple:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _fingerprint(path: Path) -> tuple:
    """A version folder's files as (name, size, mtime, inode), with the folder's own inode: a rename
    into place, a rewrite or a copy in progress all change it."""
    with os.scandir(path) as entries:
        files = tuple(sorted((e.name, *_stat_key(e.stat())) for e in entries if e.is_file()))
    return (path.stat().st_ino, files)


def _effective_config(config: ModelConfig, settings: Settings) -> ModelConfig:
    """Apply the SERVE_* overrides to the model's batching and instances."""
    batching = {
        k: getattr(settings, k)
        for k in (
            "max_batch_size",
            "max_queue_delay_ms",
            "max_queue_size",
            "timeout_ms",
            "split_across_instances",
            "latency_target_ms",
        )
        if getattr(settings, k) is not None
    }
    if batching.get("max_queue_delay_ms", "auto") != "auto" and "latency_target_ms" not in batching:
        batching["latency_target_ms"] = None  # a fixed SERVE_ delay replaces the model's "auto" and target
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
        self._models: dict[str, dict[int, ModelVersion]] = {}  # served and failed versions
        self._default: dict[str, int] = {}
        self._gates: dict[str, Gate] = {}  # kept for names that left: their drains use them
        self._unloaded: dict[str, dict[int, str]] = {}  # for the index: version -> why it is unavailable
        self._overrides: dict[str, ModelConfig] = {}  # explicit loads with a config
        self._loading: set[tuple[str, int]] = set()
        self._retiring: dict[ModelVersion, asyncio.Task] = {}
        self._control: asyncio.Lock | None = None
        self._poller: asyncio.Task | None = None
        self._started = False
        self._waiting_room = WaitingRoom(settings.max_waiting_bytes)
        self.loaded = False
        self.limits = GenerationLimits(
            settings.max_active_sequences, settings.max_queued_sequences, settings.max_cached_tokens
        )

    # ------------------------------------------------------------------------------ scanning

    def repository_names(self) -> list[str]:
        """The model folders in the repository now (dot folders are being written: skipped)."""
        if not self.root.is_dir():
            return []
        with os.scandir(self.root) as entries:
            return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))

    def _scan(self, name: str) -> ModelScan:
        """Worker thread: the model folder's versions and policy (files under the repository only)."""
        model_dir = self.root / name
        if not model_dir.is_dir():
            return ModelScan(name, {}, exists=False)
        folders: dict[int, tuple] = {}
        config_key: tuple = ()
        override = self._overrides.get(name)
        with contextlib.suppress(OSError):
            config_key = _stat_key((model_dir / CONFIG_FILE).stat())
        if override is not None:
            config_key = ("override", override.model_dump_json())
        for version in version_folders(model_dir):
            try:
                folders[version] = (config_key, _fingerprint(model_dir / str(version)))
            except OSError:  # removed while scanned
                continue
        scan = ModelScan(name, folders, variants=variant_sources(model_dir))
        try:
            config = override or ModelConfig.model_validate_json((model_dir / CONFIG_FILE).read_text())
            scan.policy, scan.pinned = config.version_policy, config.version
        except (OSError, ValueError):
            pass  # the default policy; each version's load then fails with the config's reason
        return scan

    def _plan(self, scan: ModelScan, retry_failed: bool) -> list[ModelVersion]:
        """The versions to load for ``scan``: targets not loaded, or whose files changed."""
        current = self._models.get(scan.name, {})
        model_dir = self.root / scan.name
        jobs = []
        if scan.exists and not scan.folders:
            if 0 not in current:  # a model folder without versions is listed as failed
                jobs.append(
                    ModelVersion(scan.name, 0, model_dir / "0", override=self._overrides.get(scan.name))
                )
            return jobs
        for version in scan.targets():
            fingerprint = scan.folders[version]
            mv = current.get(version)
            if mv is not None:
                tried = mv.failed_reload[0] if mv.failed_reload else mv.fingerprint
                if mv.fingerprint == fingerprint and (mv.ready or not retry_failed):
                    continue
                if tried == fingerprint and not retry_failed:
                    continue
            jobs.append(
                ModelVersion(
                    scan.name,
                    version,
                    model_dir / str(version),
                    fingerprint=fingerprint,
                    override=self._overrides.get(scan.name),
                )
            )
        return jobs

    def _load_many(self, jobs: list[ModelVersion]) -> None:
        """Worker thread: load (verify, warm up) ``jobs``, two at a time."""
        if len(jobs) == 1:
            self._load(jobs[0])
            return
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(self._load, jobs))

    def _apply(self, scan: ModelScan, loaded: list[ModelVersion]) -> list[ModelVersion]:
        """Swap the loaded versions in (event loop, or start-up before it serves); returns the versions
        that leave and must drain."""
        name = scan.name
        current = dict(self._models.get(name, {}))
        leaving = []
        for new in loaded:
            old = current.get(new.version)
            metrics.MODEL_VERSION_FAILED.labels(name, str(new.version)).set(0 if new.ready else 1)
            if new.ready:
                if self._started:
                    new.start()
                current[new.version] = new
                if old is not None and old.ready:
                    leaving.append(old)
            elif old is not None and old.ready:
                old.failed_reload = (new.fingerprint, new.reason)
                log.error("model %s version %s: keeping the loaded copy", name, new.version)
            else:
                current[new.version] = new
        targets = set(scan.targets()) if scan.folders else ({0} if scan.exists else set())
        # The old versions leave once every target serves: a target that failed keeps them serving.
        all_ready = all(current[v].ready for v in targets if v in current)
        for version, mv in list(current.items()):
            if version in targets:
                continue
            if not mv.ready:
                del current[version]
                metrics.MODEL_VERSION_FAILED.labels(name, str(version)).set(0)  # its folder is gone
            elif all_ready:
                leaving.append(mv)
                del current[version]
        unloaded = self._unloaded.setdefault(name, {})
        for mv in leaving:
            if current.get(mv.version) is None:
                unloaded[mv.version] = "unloaded"
        for version in current:
            unloaded.pop(version, None)
        self._install(name, current, scan.pinned, scan.variants)
        return leaving

    def _install(
        self,
        name: str,
        versions: dict[int, ModelVersion],
        pinned: int | None,
        variants: dict[int, int] | None = None,
    ) -> None:
        if not versions:
            self._models.pop(name, None)
            self._default.pop(name, None)
            for state in (READY, FAILED):
                metrics.MODEL_STATE.labels(name, state).set(0)
            return
        ready = [v for v, mv in versions.items() if mv.ready]
        variants = variants or {}
        trained_ready = [v for v in ready if v not in variants]
        # A request naming no version gets the pinned one, else the highest trained export that is ready.
        # A variant never stands in for a trained version that failed: that one answers with its reason
        # (503), and the variants answer the requests that name them.
        if pinned in ready:
            default = pinned
        elif trained_ready:
            default = max(trained_ready)
        else:
            default = served_version(list(versions), None, variants)
        self._models[name] = versions
        self._default[name] = default
        served = versions[default]
        gate = self._gates.get(name)
        if gate is None:
            self._gates[name] = Gate(
                name,
                self._admission_limit(served),
                wait_s=self.settings.admission_wait_s,
                hold_s=self.settings.admission_hold_s,
                max_waiting=self.settings.max_waiting_per_model,
                room=self._waiting_room,
                retry_after_s=self.settings.retry_after_s,
            )
        else:
            gate.limit = self._admission_limit(served)
        for state in (READY, FAILED):
            metrics.MODEL_STATE.labels(name, state).set(1 if served.state == state else 0)

    # ------------------------------------------------------------------------------ loading

    def load_all(self) -> None:
        """Start-up: load the repository's models (blocking; a thread pool overlaps the sessions'
        start-up). Never raises for a broken model."""
        started = time.perf_counter()
        if not self.root.is_dir():
            log.error("model repository %s does not exist; serving no models", self.root)
            self.loaded = True
            return
        names = self.repository_names()
        if self.settings.model_control_mode == "explicit" and self.settings.startup_models != "*":
            wanted = {n.strip() for n in self.settings.startup_models.split(",") if n.strip()}
            names = [n for n in names if n in wanted]
        scans = [self._scan(name) for name in names]
        jobs = {scan.name: self._plan(scan, retry_failed=True) for scan in scans}
        self._load_many([mv for batch in jobs.values() for mv in batch])
        for scan in scans:
            self._apply(scan, jobs[scan.name])
        self.loaded = True
        every = [mv for batch in jobs.values() for mv in batch]
        ready = sum(mv.ready for mv in every)
        log.info("loaded %d of %d model versions in %.2f s", ready, len(every), time.perf_counter() - started)

    async def reconcile(
        self, names: list[str] | None = None, *, retry_failed: bool = False
    ) -> list[ModelVersion]:
        """Bring the served versions in line with the repository (poll mode; explicit loads): scan and
        load on a worker thread, swap on the event loop, drain and stop the versions that leave."""
        if self._control is None:
            self._control = asyncio.Lock()
        async with self._control:
            if names is None:
                names = sorted(set(await asyncio.to_thread(self.repository_names)) | set(self._models))
            scans = await asyncio.to_thread(lambda: [self._scan(n) for n in names])
            jobs = {scan.name: self._plan(scan, retry_failed) for scan in scans}
            pending = [mv for batch in jobs.values() for mv in batch]
            self._loading.update((mv.name, mv.version) for mv in pending)
            try:
                if pending:
                    await asyncio.to_thread(self._load_many, pending)
            finally:
                self._loading.clear()
            for scan in scans:
                self._retire(scan.name, self._apply(scan, jobs[scan.name]))
            return pending

    async def load(self, name: str, config: ModelConfig | None = None) -> ModelVersion:
        """A control request's load: the model folder ``name`` (already validated: MODEL_NAME and
        present in the repository), with ``config`` instead of its config.json when given. Returns
        the served version, or raises ModelNotReady with the reason."""
        if config is not None:
            self._overrides[name] = config
        else:
            self._overrides.pop(name, None)
        attempted = await self.reconcile([name], retry_failed=True)
        failed = [mv for mv in attempted if not mv.ready]
        if failed:
            reasons = "; ".join(f"version {mv.version}: {mv.reason}" for mv in failed)
            raise ModelNotReady(f"model {name!r} failed to load ({reasons})")
        return self.find(name)

    async def unload(self, name: str) -> None:
        """Stop serving every version of ``name``: new requests get 404 at once; the ones admitted
        finish on the versions they picked, then those stop."""
        if self._control is None:
            self._control = asyncio.Lock()
        async with self._control:
            versions = self._models.get(name, {})
            leaving = [mv for mv in versions.values() if mv.ready]
            unloaded = self._unloaded.setdefault(name, {})
            for version in versions:
                unloaded[version] = "unloaded"
            self._install(name, {}, None)
            self._overrides.pop(name, None)
            self._retire(name, leaving)

    def _retire(self, name: str, leaving: list[ModelVersion]) -> None:
        gate = self._gates.get(name)
        epoch = gate.advance() if gate is not None else 0
        for mv in leaving:
            task = asyncio.get_running_loop().create_task(self._drain(mv, gate, epoch))
            self._retiring[mv] = task

    async def _drain(self, mv: ModelVersion, gate: Gate | None, epoch: int) -> None:
        try:
            if gate is not None and not await gate.drained(epoch, self.settings.unload_timeout_s):
                log.warning(
                    "model %s version %s: unloading with requests still in flight", mv.name, mv.version
                )
            await mv.stop()
            metrics.MODEL_UNLOADS.labels(mv.name).inc()
            log.info("model %s version %s unloaded", mv.name, mv.version)
        finally:
            self._retiring.pop(mv, None)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.reconcile()
            except Exception:  # a scan that fails (the repository unmounted) retries at the next poll
                log.exception("repository poll failed")

    def _load(self, mv: ModelVersion) -> None:
        started = time.perf_counter()
        # Every load and unload series of the model exists from its first load (at 0 until its first
        # event): a series born with its first event loses that event to rate() and increase().
        loaded, failed = (
            metrics.MODEL_LOADS.labels(mv.name, "loaded"),
            metrics.MODEL_LOADS.labels(mv.name, "failed"),
        )
        metrics.MODEL_UNLOADS.labels(mv.name)
        try:
            self._load_or_raise(mv)
            mv.state, mv.reason = READY, None
            loaded.inc()
        except Exception as exc:  # a broken model disables itself, never the server
            mv.state, mv.reason = FAILED, self._reason(exc)
            mv.runners, mv.generator = {}, None
            failed.inc()
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
            # Our own validators' messages name the rule a config broke, never its values: add them.
            rules = sorted(
                {e["msg"].removeprefix("Value error, ") for e in exc.errors() if e["type"] == "value_error"}
            )
            because = f" ({'; '.join(rules)})" if rules else ""
            return f"{exc.title} is invalid: {', '.join(fields)}{because}"
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
        if mv.config.task in ("seq2seq", "diffusion"):  # each holds a search thread between its calls
            return self.settings.max_concurrent_searches
        return mv.config.batching.max_queue_size

    def _load_or_raise(self, mv: ModelVersion) -> None:
        model_dir = mv.path.parent
        config = mv.override or ModelConfig.model_validate_json((model_dir / CONFIG_FILE).read_text())
        if config.name != mv.name:
            raise ValueError(f"config.json names the model {config.name!r}, its folder is {mv.name!r}")
        if not mv.path.is_dir():
            raise FileNotFoundError(f"no version folder in {model_dir}")
        mv.config = config = _effective_config(config, self.settings)
        report_path = mv.path / REPORT_FILE
        mv.report = Report.model_validate_json(report_path.read_text()) if report_path.is_file() else None
        if config.text_input is not None:
            mv.tokenizer = CharTokenizer.from_dict(config.text_input.tokenizer.model_dump())
        missing = set(EMBEDDING_ROLES) - set(config.graphs) if config.task == "embedding" else set()
        if missing:
            raise ValueError(f"an embedding model needs the graphs {sorted(missing)}")
        variant = mv.report.variant if mv.report is not None else None
        options = SessionOptions(
            config.instances.device,
            config.instances.intra_op_threads,
            optimized_offline=variant.optimized_offline if variant is not None else None,
        )
        graphs = mv.report.graphs(config) if mv.report is not None else config.graphs
        for role, graph in graphs.items():
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
            mv.provider = sessions[0].provider
            if role == DECODER_STEP:
                block_size = config.preprocessing.max_length
                mv.generator = TextGenerator(
                    mv.name, sessions[0], mv.tokenizer, block_size, self.limits, config.attention
                )
                if self.settings.warmup:  # through its cache: an in-place graph needs its bindings
                    mv.generator.warmup()
                continue
            if self.settings.warmup:
                for session in sessions:
                    session.warmup()
            runner = Runner(mv.name, graph, sessions, config.batching)
            if self.settings.warmup and runner.needs_cost:
                runner.measure_cost()
            mv.runners[role] = runner
        metrics.PROVIDER.labels(mv.name, mv.provider).set(1)

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._started = True
        for mv in self.all_versions():
            mv.start()
        if self.settings.model_control_mode == "poll":
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="repository-poll")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        for task in list(self._retiring.values()):
            task.cancel()
        for mv in [*self.all_versions(), *self._retiring]:
            await mv.stop()

    # ------------------------------------------------------------------------------ lookup

    def all_versions(self) -> list[ModelVersion]:
        return [mv for versions in self._models.values() for mv in versions.values()]

    def gate(self, name: str) -> Gate:
        """The model's admission gate (ModelNotFound for a name the registry does not serve)."""
        if name not in self._models:
            self.versions(name)  # raises with the list of known models
        return self._gates[name]

    def has(self, name: str) -> bool:
        return name in self._models

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> dict[int, ModelVersion]:
        if name not in self._models:
            known = ", ".join(self.names()) or "none"
            raise ModelNotFound(f"unknown model {name!r}; known models: {known}")
        return self._models[name]

    def served_versions(self, name: str) -> list[int]:
        """The versions of ``name`` that serve requests (ready), ascending."""
        return sorted(v for v, mv in self.versions(name).items() if mv.ready)

    def variant_kinds(self, name: str) -> dict[int, str]:
        """Each served version's kind: fp32 for a trained export, else its variant's (report.json)."""
        versions = self.versions(name)
        return {v: versions[v].report.variant_kind for v in self.served_versions(name) if versions[v].report}

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
        logs.note(model=mv.name, version=mv.version)
        if not mv.ready:
            raise ModelNotReady(f"model {name!r} version {mv.version} is not ready: {mv.reason}")
        return mv

    @property
    def ready(self) -> bool:
        return self.loaded and any(mv.ready for mv in self.all_versions())

    # ------------------------------------------------------------------------------ control API views

    def index(self, ready_only: bool = False) -> list[dict]:
        """Triton's repository index: every model folder, and each version's state and reason."""
        names = sorted(set(self.repository_names()) | set(self._models) | set(self._unloaded))
        rows: list[dict] = []
        for name in names:
            versions = self._models.get(name, {})
            entries: dict[int, dict] = {}
            for version, reason in self._unloaded.get(name, {}).items():
                entries[version] = {"state": "UNAVAILABLE", "reason": reason}
            for version, mv in versions.items():
                if mv.ready:
                    reason = ""
                    if mv.failed_reload is not None:
                        reason = (
                            f"serving the loaded copy; a newer copy failed to load: {mv.failed_reload[1]}"
                        )
                    entries[version] = {"state": "READY", "reason": reason}
                else:
                    entries[version] = {"state": "UNAVAILABLE", "reason": mv.reason or ""}
            for loading, version in self._loading:
                if loading == name and version not in versions:
                    entries[version] = {"state": "LOADING", "reason": ""}
            if not entries and not ready_only:
                rows.append({"name": name})
            for version, entry in sorted(entries.items()):
                if ready_only and entry["state"] != "READY":
                    continue
                rows.append({"name": name, "version": str(version), **entry})
        return rows

    def statistics(self, name: str | None = None, version: int | None = None) -> list[dict]:
        """Triton's statistics extension, per ready version (counts and nanoseconds)."""
        if name is None:
            chosen = [mv for n in self.names() for _, mv in sorted(self._models[n].items())]
        elif version is None:
            chosen = [mv for _, mv in sorted(self.versions(name).items())]
        else:
            chosen = [self.find(name, version)]
        return [_model_stats(mv) for mv in chosen if mv.ready]


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


def _model_stats(mv: ModelVersion) -> dict:
    runners = list(mv.runners.values())
    total = {k: [0, 0] for k in ("queue", "compute_input", "compute_infer", "compute_output")}
    by_size: dict[int, list[int]] = {}
    inferences = executions = 0
    for runner in runners:
        stats = runner.stats
        inferences += stats.inference_count
        executions += stats.execution_count
        for key, pair in total.items():
            own = getattr(stats, key)
            pair[0] += own[0]
            pair[1] += own[1]
        for size, values in stats.by_batch_size.items():
            merged = by_size.setdefault(size, [0, 0, 0, 0])
            for i, value in enumerate(values):
                merged[i] += value
    return {
        "name": mv.name,
        "version": str(mv.version),
        "last_inference": mv.stats.last_inference_ms,
        "inference_count": inferences,
        "execution_count": executions,
        "inference_stats": {
            "success": _duration(*mv.stats.success),
            "fail": _duration(*mv.stats.fail),
            **{key: _duration(*pair) for key, pair in total.items()},
            "cache_hit": _duration(0, 0),
            "cache_miss": _duration(0, 0),
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": _duration(v[0], v[1]),
                "compute_infer": _duration(v[0], v[2]),
                "compute_output": _duration(v[0], v[3]),
            }
            for size, v in sorted(by_size.items())
        ],
    }


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
