"""Prometheus config and rules (promtool), and end to end: the app under traffic, scraped by a real
Prometheus, gives the series the dashboards and alerts read, with the right labels and values."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.settings import Settings
from tests.app.conftest import LiveServer, copy_models
from tests.deploy.prom import query, running_prometheus, wait_for

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: the test command installs Debian's prometheus package"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_config_and_rules_are_valid() -> None:
    config = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool("check", "rules", *map(str, sorted((PROMETHEUS / "rules").glob("*.yml"))))
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_alert_and_recording_rules_unit_tests() -> None:
    result = promtool("test", "rules", "alerts_test.yml", cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def app_and_prometheus(tmp_path_factory):
    root = copy_models(tmp_path_factory.mktemp("e2e-models"), ("mlp-digits", "gpt-corpus"))
    with LiveServer(Settings(model_repository=root)) as app:
        target = app.url.removeprefix("http://")
        with running_prometheus(target, tmp_path_factory.mktemp("prometheus")) as prometheus:
            yield app, prometheus


def _value(prometheus: str, expr: str) -> float:
    result = query(prometheus, expr)
    return sum(float(s["value"][1]) for s in result)


def _app_value(client, expr: str) -> float:
    """The same series read from the app's own /metrics (exact now, unlike the last scrape)."""
    name, _, rest = expr.partition("{")
    wanted = dict(part.split("=") for part in rest.rstrip("}").split(",")) if rest else {}
    wanted = {k: v.strip('"') for k, v in wanted.items()}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in wanted.items()):
                return sample.value
    return 0.0


def test_traffic_arrives_in_prometheus(app_and_prometheus) -> None:
    app, prometheus = app_and_prometheus
    wait_for(prometheus, 'up{job="api"}', lambda r: r and r[0]["value"][1] == "1")
    # The metric registry is the process's: other tests may already have counted. Compare deltas.
    series = {
        "ok": 'serve_requests_total{model="mlp-digits",endpoint="/predict",status="200"}',
        "bad": 'serve_requests_total{model="mlp-digits",endpoint="/predict",status="422"}',
        "generate": 'serve_requests_total{model="gpt-corpus",endpoint="/generate",status="200"}',
        "tokens": 'serve_generated_tokens_total{model="gpt-corpus"}',
        "rows": 'serve_batch_size_sum{model="mlp-digits"}',
        "ttft": 'serve_time_to_first_token_seconds_count{model="gpt-corpus"}',
    }
    with app.client() as c:
        before = {name: _app_value(c, expr) for name, expr in series.items()}
        for _ in range(7):
            assert c.post("/predict", json={"model": "mlp-digits", "inputs": [0.0] * 64}).status_code == 200
        assert c.post("/predict", json={"model": "mlp-digits", "inputs": [1.0]}).status_code == 422
        body = {"model": "gpt-corpus", "prompt": "The ", "max_new_tokens": 25, "temperature": 0}
        for _ in range(2):
            assert c.post("/generate", json=body).json()["usage"]["completion_tokens"] == 25
    expected = {"ok": 7, "bad": 1, "generate": 2, "tokens": 50, "rows": 7, "ttft": 2}
    wait_for(prometheus, series["tokens"], lambda r: r and float(r[0]["value"][1]) == before["tokens"] + 50)
    wait_for(prometheus, series["ok"], lambda r: r and float(r[0]["value"][1]) == before["ok"] + 7)
    after = {name: _value(prometheus, expr) for name, expr in series.items()}
    assert {name: after[name] - before[name] for name in series} == expected
    ready = query(prometheus, 'serve_model_state{state="ready"} == 1')
    assert {"mlp-digits", "gpt-corpus"} <= {s["metric"]["model"] for s in ready}
    provider = query(prometheus, 'serve_model_provider_info{model="mlp-digits"}')
    assert [s["metric"]["provider"] for s in provider] == ["CPUExecutionProvider"]
    # The recording rules evaluate against the live series too.
    wait_for(prometheus, 'model:serve_request_errors:ratio_rate5m{model="mlp-digits"}', lambda r: bool(r))
    firing = [a for a in query(prometheus, "ALERTS") if a["metric"].get("alertstate") == "firing"]
    assert not firing
