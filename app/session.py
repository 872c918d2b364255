"""The onnxruntime wrapper: providers, session options, the provider actually in use, warm-up.

``device="auto"`` asks for CUDA when this onnxruntime build offers it and keeps whatever the session
really got: onnxruntime-gpu lists CUDAExecutionProvider even where the CUDA libraries are missing and
then silently runs on the CPU, so the provider is read back from the session, and a CUDA request that
ended on the CPU is logged as a warning.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.core.ort_options import session_options
from app.core.repository_format import GraphSpec

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
NUMPY_DTYPES = {"float32": np.float32, "int64": np.int64, "bool": np.bool_}


@dataclass(frozen=True)
class SessionOptions:
    device: str = "auto"  # auto | cpu | cuda
    # Measured on the 2-core CPU (docs/ARCHITECTURE.md): one single-threaded session per core beats one
    # session with both threads, and onnxruntime's default (all cores, spinning) starves the HTTP layer.
    intra_op_threads: int = 1
    # The graph was optimized offline at this onnxruntime level and saved (a variant's report says so,
    # training/variants.py): app/core/ort_options.graph_optimization_level.
    optimized_offline: str | None = None


def requested_providers(device: str) -> list[str]:
    available = ort.get_available_providers()
    if device == "cpu" or CUDA not in available:
        return [CPU]
    return [CUDA, CPU]


class Session:
    """One onnxruntime session of one graph. ``run`` is blocking: call it from a worker thread."""

    def __init__(self, path: Path, graph: GraphSpec, options: SessionOptions, label: str = "") -> None:
        so = session_options(options.intra_op_threads, options.optimized_offline)
        providers = requested_providers(options.device)
        if options.device == "cuda" and CUDA not in providers:
            log.warning("%s: device=cuda asked, but this onnxruntime has no CUDA provider; using CPU", label)
        self.graph = graph
        self.session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        self.provider = self.session.get_providers()[0]
        if CUDA in providers and self.provider != CUDA:
            log.warning("%s: CUDA was requested but the session fell back to %s", label, self.provider)
        if options.optimized_offline is not None and self.provider == CUDA:
            # The offline fusions were made for the CPU provider; those without a CUDA kernel run on
            # the CPU, with copies between the devices. The trained (fp32) version is the one for a GPU.
            log.warning("%s: graph optimized offline for the CPU provider, served on CUDA", label)
        self.output_names = [o.name for o in graph.outputs]
        self._check_signature(label)
        self._binding = self.session.io_binding() if self.provider == CUDA else None

    def _check_signature(self, label: str) -> None:
        actual = {i.name for i in self.session.get_inputs()}
        declared = {i.name for i in self.graph.inputs}
        if actual != declared:
            raise ValueError(
                f"{label}: config.json declares inputs {sorted(declared)}, graph has {sorted(actual)}"
            )
        outputs = {o.name for o in self.session.get_outputs()}
        if not set(self.output_names) <= outputs:
            raise ValueError(
                f"{label}: config.json declares outputs {self.output_names}, graph has {sorted(outputs)}"
            )

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self._binding is None:
            return self.session.run(self.output_names, feeds)
        # GPU: bind inputs and let onnxruntime allocate outputs on the device, copying back once per
        # batch. Clearing the binding after each run releases the outputs, which keeps device memory
        # bounded by the largest batch instead of growing with every shape seen.
        binding = self._binding
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        outputs = binding.copy_outputs_to_cpu()
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        return outputs

    def warmup(self) -> None:
        """One run at batch 2 with every dynamic axis at 2: pays lazy initialisation up front."""
        self.run(example_feeds(self.graph, 2))

    def time_run(self, rows: int, repeats: int = 3) -> float:
        """Seconds of the fastest of ``repeats`` runs of ``rows`` rows (dynamic axes at 2), after one
        untimed run: the fastest, because other work on the machine only ever adds time."""
        feeds = example_feeds(self.graph, rows)
        self.run(feeds)
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            self.run(feeds)
            best = min(best, time.perf_counter() - started)
        return best


def example_feeds(graph: GraphSpec, rows: int) -> dict[str, np.ndarray]:
    """Ones of the graph's inputs with ``rows`` rows and every other dynamic axis at 2."""
    feeds = {}
    for spec in graph.inputs:
        shape = [rows, *(2 if d < 0 else d for d in spec.shape[1:])]
        feeds[spec.name] = np.ones(shape, dtype=NUMPY_DTYPES[spec.dtype])
    return feeds
