"""/metrics: the serve_* series move with real traffic, and promtool accepts the exposition."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
from prometheus_client.parser import text_string_to_metric_families


def scrape(client) -> dict[tuple[str, tuple], float]:
    text = client.get("/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_follow_traffic(client) -> None:
    before = scrape(client)
    body = {"model": "mlp-digits", "inputs": np.zeros((3, 64)).tolist()}
    for _ in range(5):
        assert client.post("/predict", json=body).status_code == 200
    assert client.post("/predict", json={"model": "mlp-digits", "inputs": [1.0]}).status_code == 422
    assert client.post("/predict", json={"model": "no-such-model", "inputs": [1.0]}).status_code == 404
    assert client.get("/openapi.json").status_code == 200 and client.get("/docs").status_code == 200
    assert client.get("/no/such/path").status_code == 404
    after = scrape(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("serve_requests_total", model="mlp-digits", endpoint="/predict", status="200") == 5
    assert delta("serve_requests_total", model="mlp-digits", endpoint="/predict", status="422") == 1
    # Unknown names never become label values.
    assert delta("serve_requests_total", model="", endpoint="/predict", status="404") == 1
    assert delta("serve_request_duration_seconds_count", model="mlp-digits", endpoint="/predict") == 6
    # The documentation's routes have their own label; only paths no route matches are "unmatched".
    assert delta("serve_requests_total", model="", endpoint="/openapi.json", status="200") == 1
    assert delta("serve_requests_total", model="", endpoint="/docs", status="200") == 1
    assert delta("serve_requests_total", model="", endpoint="unmatched", status="404") == 1
    assert delta("serve_batch_size_sum", model="mlp-digits") == 15  # 5 requests x 3 rows
    assert delta("serve_queue_duration_seconds_count", model="mlp-digits") == 5
    assert delta("serve_compute_duration_seconds_count", model="mlp-digits") >= 1
    assert value(after, "serve_model_state", model="mlp-digits", state="ready") == 1
    assert value(after, "serve_model_provider_info", model="mlp-digits", provider="CPUExecutionProvider") == 1
    assert value(after, "serve_model_load_seconds", model="mlp-digits") > 0
    assert ("serve_queue_depth", (("model", "mlp-digits"),)) in after


def test_promtool_accepts_the_exposition(client) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: the test command installs Debian's prometheus package"
    client.post("/predict", json={"model": "mlp-digits", "inputs": [0.0] * 64})
    text = client.get("/metrics").text
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
