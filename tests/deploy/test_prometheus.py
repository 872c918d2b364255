"""Prometheus config and rules (promtool), and end to end: the app under traffic, scraped by a real
Prometheus, gives the series the dashboards and alerts read, with the right labels and values."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

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


def test_traffic_arrives_in_prometheus(app_and_prometheus) -> None:
    app, prometheus = app_and_prometheus
    wait_for(prometheus, 'up{job="api"}', lambda r: r and r[0]["value"][1] == "1")
    with app.client() as c:
        for _ in range(7):
            assert c.post("/predict", json={"model": "mlp-digits", "inputs": [0.0] * 64}).status_code == 200
        assert c.post("/predict", json={"model": "mlp-digits", "inputs": [1.0]}).status_code == 422
        body = {"model": "gpt-corpus", "prompt": "The ", "max_new_tokens": 25, "temperature": 0}
        for _ in range(2):
            assert c.post("/generate", json=body).json()["usage"]["completion_tokens"] == 25

    ok = 'serve_requests_total{model="mlp-digits",endpoint="/predict",status="200"}'
    wait_for(prometheus, ok, lambda r: r and float(r[0]["value"][1]) == 7)
    bad = query(prometheus, 'serve_requests_total{model="mlp-digits",status="422"}')
    assert [float(s["value"][1]) for s in bad] == [1.0]
    tokens = wait_for(prometheus, 'serve_generated_tokens_total{model="gpt-corpus"}', lambda r: bool(r))
    assert float(tokens[0]["value"][1]) == 50
    generate = query(prometheus, 'serve_requests_total{model="gpt-corpus",endpoint="/generate",status="200"}')
    assert float(generate[0]["value"][1]) == 2
    batch = query(prometheus, 'serve_batch_size_sum{model="mlp-digits"}')
    assert float(batch[0]["value"][1]) == 7  # one row per request
    ready = query(prometheus, 'serve_model_state{state="ready"} == 1')
    assert {s["metric"]["model"] for s in ready} == {"mlp-digits", "gpt-corpus"}
    provider = query(prometheus, "serve_model_provider_info")
    assert {s["metric"]["provider"] for s in provider} == {"CPUExecutionProvider"}
    ttft = query(prometheus, 'serve_time_to_first_token_seconds_count{model="gpt-corpus"}')
    assert float(ttft[0]["value"][1]) == 2
    # The recording rules evaluate against the live series too.
    wait_for(prometheus, 'model:serve_request_errors:ratio_rate5m{model="mlp-digits"}', lambda r: bool(r))
    alerts = query(prometheus, "ALERTS")
    assert not [a for a in alerts if a["metric"].get("alertstate") == "firing"]
