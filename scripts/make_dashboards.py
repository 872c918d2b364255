"""Write the Grafana dashboards of the serving app to deploy/grafana/dashboards/ (one JSON file each).

    .venv/bin/python scripts/make_dashboards.py [--out DIR]

The JSON files are committed; tests/deploy/test_dashboards.py checks that they equal this script's
output, that their layout is sound, and that every expression returns series from a live Prometheus
scraping the real app. Metric names and labels are those of app/metrics.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # provisioning/datasources/prometheus.yml
M = 'model=~"$model"'  # the per-model filter; "All" means any non-empty model (allValue below)
RI = "$__rate_interval"


# ------------------------------------------------------------------------------------------ PromQL


def rate(metric: str, by: str = "model", match: str = M) -> str:
    return f"sum by ({by}) (rate({metric}{{{match}}}[{RI}]))"


def quantile(q: float, histogram: str, by: str = "model") -> str:
    return f"histogram_quantile({q}, {rate(histogram + '_bucket', by + ', le')})"


def mean(histogram: str, by: str = "model") -> str:
    return f"{rate(histogram + '_sum', by)} / {rate(histogram + '_count', by)}"


def ratio(status: str) -> str:
    """Share of a model's requests with a status matching ``status``; 0 (not "no data") when none do."""
    every = rate("serve_requests_total")
    part = rate("serve_requests_total", match=f'{M}, status=~"{status}"')
    return f"({part} or 0 * {every}) / {every}"


# ------------------------------------------------------------------------------------------ panels


def target(expr: str, legend: str = "", **extra) -> dict:
    return {"datasource": DATASOURCE, "refId": "A", "expr": expr, "legendFormat": legend, **extra}


def panel(kind: str, title: str, description: str, targets: list[dict], unit: str, w: int, h: int, **extra):
    for ref, t in zip("ABCDEFGH", targets, strict=False):
        t["refId"] = ref
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"w": w, "h": h},  # x, y and id are filled in by dashboard()
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": targets,
        **extra,
    }


def timeseries(title, description, targets, unit, w=12, h=8, axis=""):
    p = panel("timeseries", title, description, targets, unit, w, h)
    p["fieldConfig"]["defaults"]["custom"] = {"axisLabel": axis, "fillOpacity": 10, "showPoints": "never"}
    p["options"] = {
        "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return p


def stat(title, description, targets, unit, w=6, h=4):
    return panel(
        "stat",
        title,
        description,
        targets,
        unit,
        w,
        h,
        options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value", "graphMode": "area"},
    )


def table(title, description, expr, w=12, h=8, hide=("Time", "Value", "__name__", "job", "instance")):
    """One row per series of an instant query: its labels as columns (info-style gauges)."""
    return panel(
        "table",
        title,
        description,
        [target(expr, format="table", instant=True)],
        "short",
        w,
        h,
        transformations=[{"id": "organize", "options": {"excludeByName": dict.fromkeys(hide, True)}}],
    )


def heatmap(title, description, histogram, w=8, h=8):
    """Rate of a histogram's buckets over time, one panel per selected model (repeated)."""
    expr = f"sum by (le) (rate({histogram}_bucket{{{M}}}[{RI}]))"
    p = panel("heatmap", title, description, [target(expr, "{{le}}", format="heatmap")], "short", w, h)
    p.update(repeat="model", repeatDirection="h", maxPerRow=3)
    p["options"] = {
        "calculate": False,
        "yAxis": {"unit": "short", "axisLabel": "rows per batch"},
        "cellValues": {"unit": "short"},
        "color": {"scheme": "Blues", "mode": "scheme"},
        "tooltip": {"show": True, "yHistogram": True},
    }
    return p


# ------------------------------------------------------------------------------------------ dashboards


def dashboard(uid: str, title: str, description: str, panels: list[dict]) -> dict:
    """Number the panels and flow them left to right, top to bottom, on Grafana's 24-column grid."""
    x = y = row_height = 0
    for number, p in enumerate(panels, start=1):
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + w > 24:
            x, y, row_height = 0, y + row_height, 0
        p["id"] = number
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        x, row_height = x + w, max(row_height, h)
    model = {
        "name": "model",
        "label": "model",
        "type": "query",
        "datasource": DATASOURCE,
        # serve_model_state lists every model in the repository from start-up, never the "" of
        # requests for unknown models or of /metrics and /health.
        "definition": "label_values(serve_model_state, model)",
        "query": "label_values(serve_model_state, model)",
        "refresh": 2,  # on time-range change
        "includeAll": True,
        "allValue": ".+",
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["deepserve"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [model]},
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": ["deepserve"], "asDropdown": True, "title": "Serving"}],
        "panels": panels,
    }


def overview() -> dict:
    every = f"sum(rate(serve_requests_total{{{M}}}[{RI}]))"
    errors = f'sum(rate(serve_requests_total{{{M}, status=~"5.."}}[{RI}]))'
    latency = "serve_request_duration_seconds"
    return dashboard(
        "serve-overview",
        "Serving / Overview",
        "Traffic, errors and latency of the inference API.",
        [
            stat("Request rate", "Requests answered per second.", [target(every)], "reqps"),
            stat(
                "5xx ratio",
                "Share of requests answered with a 5xx status.",
                [target(f"({errors} or 0 * {every}) / {every}")],
                "percentunit",
            ),
            stat(
                "p99 latency",
                "99th percentile of end-to-end request time, all endpoints.",
                [target(f"histogram_quantile(0.99, {rate(latency + '_bucket', 'le')})")],
                "s",
            ),
            stat(
                "Models ready / failed",
                "Models whose current state is ready, and failed.",
                [
                    target('sum(serve_model_state{state="ready"})', "ready"),
                    target('sum(serve_model_state{state="failed"})', "failed"),
                ],
                "short",
            ),
            timeseries(
                "Request rate by model and endpoint",
                "Requests answered per second.",
                [target(rate("serve_requests_total", "model, endpoint"), "{{model}} {{endpoint}}")],
                "reqps",
            ),
            timeseries(
                "Requests by status",
                "Requests answered per second, by HTTP status.",
                [target(rate("serve_requests_total", "status"), "{{status}}")],
                "reqps",
            ),
            timeseries(
                "Error ratio by model",
                "Share of each model's requests answered with 5xx (server) and 4xx (client) statuses.",
                [target(ratio("5.."), "{{model}} 5xx"), target(ratio("4.."), "{{model}} 4xx")],
                "percentunit",
            ),
            timeseries(
                "Rejected requests by reason",
                "Requests refused before inference: queue_full, generation_queue_full (429/503) and "
                "deadline (504).",
                [target(rate("serve_rejected_requests_total", "model, reason"), "{{model}} {{reason}}")],
                "reqps",
            ),
            timeseries(
                "Latency p50 / p95 / p99 by model",
                "End-to-end request time from routing to response, by model and endpoint.",
                [
                    target(quantile(q, latency, "model, endpoint"), f"{{{{model}}}} {{{{endpoint}}}} p{p}")
                    for q, p in ((0.5, 50), (0.95, 95), (0.99, 99))
                ],
                "s",
                w=24,
                h=9,
            ),
        ],
    )


def batching() -> dict:
    queue, compute = "serve_queue_duration_seconds", "serve_compute_duration_seconds"
    return dashboard(
        "serve-batching",
        "Serving / Batching",
        "The dynamic batcher of every model: queueing, batch sizes, compute.",
        [
            timeseries(
                "Queue depth",
                "Requests waiting in each model's batch queue.",
                [target(f"sum by (model) (serve_queue_depth{{{M}}})", "{{model}}")],
                "short",
            ),
            timeseries(
                "Batches in flight",
                "Batches executing on each model's session instances.",
                [target(f"sum by (model) (serve_batches_in_flight{{{M}}})", "{{model}}")],
                "short",
            ),
            timeseries(
                "Queue time vs compute time (p50 / p99)",
                "Time a request waits for its batch to start, against onnxruntime time of one batch.",
                [
                    target(quantile(q, h), f"{{{{model}}}} {name} p{p}")
                    for h, name in ((queue, "queue"), (compute, "compute"))
                    for q, p in ((0.5, 50), (0.99, 99))
                ],
                "s",
            ),
            timeseries(
                "Queue time vs compute time (mean)",
                "Mean time in the queue per request and mean onnxruntime time per batch.",
                [target(mean(queue), "{{model}} queue"), target(mean(compute), "{{model}} compute")],
                "s",
            ),
            timeseries(
                "Mean batch size",
                "Rows per executed batch, averaged over the interval.",
                [target(mean("serve_batch_size"), "{{model}}")],
                "short",
                axis="rows per batch",
            ),
            timeseries(
                "Batches per second",
                "Batches executed per second.",
                [target(rate("serve_batch_size_count"), "{{model}}")],
                "short",
                axis="batches/s",
            ),
            heatmap(
                "Batch size distribution: $model",
                "Batches per second in each batch-size bucket (le = at most that many rows).",
                "serve_batch_size",
            ),
        ],
    )


def generation() -> dict:
    ttft, tpot, step = (
        "serve_time_to_first_token_seconds",
        "serve_time_per_output_token_seconds",
        "serve_generation_step_seconds",
    )
    return dashboard(
        "serve-generation",
        "Serving / Generation",
        "The continuous-batching decode loop of the language models.",
        [
            timeseries(
                "Tokens per second",
                "Tokens generated per second.",
                [target(rate("serve_generated_tokens_total"), "{{model}}")],
                "short",
                axis="tokens/s",
            ),
            timeseries(
                "Time to first token (p50 / p99)",
                "From a generation's arrival to its first token.",
                [target(quantile(q, ttft), f"{{{{model}}}} p{p}") for q, p in ((0.5, 50), (0.99, 99))],
                "s",
            ),
            timeseries(
                "Time per output token (p50 / p99)",
                "Mean time between a generation's tokens after the first.",
                [target(quantile(q, tpot), f"{{{{model}}}} p{p}") for q, p in ((0.5, 50), (0.99, 99))],
                "s",
            ),
            timeseries(
                "Active and queued sequences",
                "Sequences in the decode loop, and waiting to join it.",
                [
                    target(f"sum by (model) (serve_generation_active_sequences{{{M}}})", "{{model}} active"),
                    target(f"sum by (model) (serve_generation_queued_sequences{{{M}}})", "{{model}} queued"),
                ],
                "short",
            ),
            timeseries(
                "Decode batch size",
                "Sequences per decode step: mean and p99.",
                [
                    target(mean("serve_generation_decode_batch_size"), "{{model}} mean"),
                    target(quantile(0.99, "serve_generation_decode_batch_size"), "{{model}} p99"),
                ],
                "short",
                axis="sequences per step",
            ),
            timeseries(
                "Step time by phase (p50 / p99)",
                "Time of one prefill or decode step.",
                [
                    target(quantile(q, step, "model, phase"), f"{{{{model}}}} {{{{phase}}}} p{p}")
                    for q, p in ((0.5, 50), (0.99, 99))
                ],
                "s",
            ),
            timeseries(
                "Cached tokens",
                "Tokens held in the active KV caches.",
                [target(f"sum by (model) (serve_generation_cached_tokens{{{M}}})", "{{model}}")],
                "short",
            ),
            timeseries(
                "Finish reasons",
                "Generations ended per second, by reason (length, eos, stop, cancelled, error, shutdown).",
                [target(rate("serve_generation_finished_total", "model, reason"), "{{model}} {{reason}}")],
                "short",
                axis="generations/s",
            ),
        ],
    )


def resources() -> dict:
    return dashboard(
        "serve-resources",
        "Serving / Resources",
        "The API process and its models. GPU panels wait for NVML metrics, which the app does not export.",
        [
            timeseries(
                "Process CPU",
                "CPU time of the API process per second (100% = one core).",
                [target(f'rate(process_cpu_seconds_total{{job="api"}}[{RI}])', "{{instance}}")],
                "percentunit",
            ),
            timeseries(
                "Process memory",
                "Resident memory of the API process.",
                [target('process_resident_memory_bytes{job="api"}', "{{instance}}")],
                "bytes",
            ),
            table(
                "Execution provider per model",
                "The onnxruntime execution provider each model actually runs on (CUDA or CPU fallback).",
                f"serve_model_provider_info{{{M}}} == 1",
            ),
            table(
                "Model state",
                "Each model's current state (ready or failed).",
                f"serve_model_state{{{M}}} == 1",
            ),
            panel(
                "bargauge",
                "Model load time",
                "Time to load, verify and warm up each model (its latest load).",
                [target(f"serve_model_load_seconds{{{M}}}", "{{model}}", instant=True)],
                "s",
                24,
                8,
                options={"orientation": "horizontal", "displayMode": "basic", "showUnfilled": True},
            ),
            timeseries(
                "Model loads and unloads",
                "Version loads by result (loaded, failed) and versions unloaded, in each interval: start-up, "
                "polls of the repository and the control API (SERVE_MODEL_CONTROL_MODE).",
                [
                    target(
                        f"sum by (model, result) (increase(serve_model_loads_total{{{M}}}[{RI}]))",
                        "{{model}} {{result}}",
                    ),
                    target(
                        f"sum by (model) (increase(serve_model_unloads_total{{{M}}}[{RI}]))",
                        "{{model}} unloaded",
                    ),
                ],
                "short",
                w=16,
                axis="versions",
            ),
            failing_versions(),
        ],
    )


def failing_versions() -> dict:
    """Per model, its versions whose latest load failed (the serving version stays; the
    ServeModelVersionLoadFailed alert names them): 0 is green, any other number red."""
    p = stat(
        "Versions failing to load",
        "Per model, the versions whose latest load attempt failed (serve_model_version_failed); the "
        "version that served before keeps serving. The alert ServeModelVersionLoadFailed names them.",
        [target(f"sum by (model) (serve_model_version_failed{{{M}}})", "{{model}}")],
        "short",
        w=8,
        h=8,
    )
    p["fieldConfig"]["defaults"]["thresholds"] = {
        "mode": "absolute",
        "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}],
    }
    p["options"]["colorMode"] = "background"
    return p


DASHBOARDS = {"overview": overview, "batching": batching, "generation": generation, "resources": resources}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder for the JSON files (default {OUT})")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        path = args.out / f"{name}.json"
        path.write_text(json.dumps(build(), indent=2) + "\n")
        print(path)


if __name__ == "__main__":
    main()
