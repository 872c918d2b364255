"""The onnxruntime session options the server runs every graph with, shared with training so that what
``python -m training variant`` measures (speed of fp32 vs a variant) is measured the way it serves."""

from __future__ import annotations

import onnxruntime as ort

# The offline optimization level a variant's graphs may carry (Variant.optimized_offline).
OFFLINE_EXTENDED = "extended"


def graph_optimization_level(optimized_offline: str | None) -> ort.GraphOptimizationLevel:
    """ORT_ENABLE_ALL for a graph as exported (~2.7x for convnets here). A graph saved after the
    extended level opens at ORT_ENABLE_LAYOUT: the fusions it went through find nothing left to fuse,
    and the layout pass still runs, because what it makes (NCHWc convolutions, blocked to this CPU's
    vector width) is specific to the machine and so is not saved; at ORT_DISABLE_ALL the convnets ran
    at 0.5-0.6x. Measured session creation: 5 ms instead of 16 for AlexNet, 9 instead of 14 for BERT."""
    if optimized_offline is None:
        return ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized_offline != OFFLINE_EXTENDED:
        raise ValueError(f"unknown offline optimization level {optimized_offline!r}")
    return ort.GraphOptimizationLevel.ORT_ENABLE_LAYOUT


def session_options(intra_op_threads: int = 1, optimized_offline: str | None = None) -> ort.SessionOptions:
    """Sequential, ``intra_op_threads`` threads that never spin, the level above, warnings only."""
    so = ort.SessionOptions()
    so.graph_optimization_level = graph_optimization_level(optimized_offline)
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning threads burn the core the event loop and the other instances need.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so
