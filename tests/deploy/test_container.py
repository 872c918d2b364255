"""The images built and run on a real Docker engine (marker ``docker``; `make test` runs these as their
own step). The serve image on the host network at a free port of 127.0.0.1: non-root, its
HEALTHCHECK turns healthy, the whole zoo ready, and /predict, /generate (streamed too) and V2 infer
answer exactly as `python -m app` on the host does from the same code and models; SIGTERM stops it
within docker's grace period with exit code 0; no torch, tests or build tools inside, no host path in
its configuration, <= 600 MB. A code change rebuilds only the last layers. The gpu target builds on
the stand-in base when the CUDA image is not there, and serves (on the CPU, no GPU here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.app.conftest import free_port
from tests.deploy.engine import (
    ROOT,
    build,
    docker,
    figure,
    get,
    inspect,
    logs,
    remove_container,
    run_container,
    wait_ready,
)

# The first test of a run also waits for the session's base images and serve build (cold: a few
# minutes on a slow mirror), inside its own timeout.
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]

IMAGE_SIZE_LIMIT_MB = 600
N_MODELS = len(list((ROOT / "models").glob("*/config.json")))
STOP_TIMEOUT_S = 10  # `docker stop`'s default; the image's SERVE_SHUTDOWN_GRACE_S (8) fits inside it


def container_name(what: str) -> str:
    return f"deepserve-test-{what}-{os.getpid()}"


@pytest.fixture(scope="module")
def serve_container(serve_image: str) -> Iterator[str]:
    """The serve image as `docker run` starts it, moved to 127.0.0.1:<free port> (host networking)."""
    port = free_port()
    name = run_container(
        serve_image, container_name("serve"), {"SERVE_HOST": "127.0.0.1", "SERVE_PORT": str(port)}
    )
    try:
        url = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        wait_ready(
            url, 120, alive=lambda: inspect("container", name)["State"]["Running"], why=lambda: logs(name)
        )
        figure(f"serve container: ready {time.perf_counter() - started:.1f} s after docker run")
        yield url
    finally:
        remove_container(name)


@pytest.fixture(scope="module")
def host_server(tmp_path_factory) -> Iterator[str]:
    """`python -m app` on the host (this interpreter's environment) from the same code and models."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_") and k != "PYTHONPATH"}
    env.update(
        SERVE_MODEL_REPOSITORY=str(ROOT / "models"),
        SERVE_HOST="127.0.0.1",
        SERVE_PORT=str(port),
        SERVE_DEVICE="cpu",
        SERVE_VERIFY_SHA256="true",
        SERVE_WARMUP="true",
    )
    log = tmp_path_factory.mktemp("host-server") / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, 120, alive=lambda: process.poll() is None, why=log.read_text)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


# ------------------------------------------------------------------------------------ the same answers
MLP_INPUTS = [[((i * 7 + k * 3) % 17) / 8 - 1 for i in range(64)] for k in range(2)]
REQUESTS = {
    "predict-mlp-digits": ("/predict", {"model": "mlp-digits", "inputs": MLP_INPUTS, "top_k": 3}),
    "predict-lstm-order": ("/predict", {"model": "lstm-order", "inputs": ["eAfgBhCijD", "fBgAhDeCij"]}),
    "generate-gpt-greedy": (
        "/generate",
        {"model": "gpt-corpus", "prompt": "The ", "max_new_tokens": 48, "temperature": 0},
    ),
    "generate-gpt-seeded": (
        "/generate",
        {
            "model": "gpt-corpus",
            "prompt": "If ",
            "max_new_tokens": 48,
            "temperature": 0.8,
            "top_k": 20,
            "seed": 1,
        },
    ),
    "generate-gpt-stream": (
        "/generate",
        {"model": "gpt-corpus", "prompt": "The ", "max_new_tokens": 32, "seed": 5, "stream": True},
    ),
    "generate-seq2seq-beams": (
        "/generate",
        {"model": "seq2seq-dates", "input": "3rd of March 2021", "num_beams": 3},
    ),
    "generate-dcgan-seeded": ("/generate", {"model": "dcgan-digits", "num_samples": 2, "seed": 7}),
    "v2-infer-mlp-digits": (
        "/v2/models/mlp-digits/infer",
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 64],
                    "datatype": "FP32",
                    "data": [x for row in MLP_INPUTS for x in row],
                }
            ]
        },
    ),
}


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k != "timings"}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def post(url: str, body: dict) -> tuple[int, str, list]:
    """Status, content type, and the answer: one JSON value, or the list of a stream's events."""
    # One request id on both sides: a V2 answer without an id of its own carries it.
    headers = {"Content-Type": "application/json", "X-Request-Id": "same-inside-and-outside"}
    request = urllib.request.Request(url, json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        kind = response.headers.get("content-type", "")
        text = response.read().decode()
    if kind.startswith("text/event-stream"):
        events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
        return response.status, kind, without_timings(events)
    return response.status, kind, without_timings(json.loads(text))


@pytest.mark.parametrize("case", list(REQUESTS))
def test_answers_as_on_the_host(serve_container: str, host_server: str, case: str) -> None:
    path, body = REQUESTS[case]
    inside = post(serve_container + path, body)
    outside = post(host_server + path, body)
    assert inside[0] == 200, inside
    if body.get("stream"):
        assert inside[1].startswith("text/event-stream")
        events = inside[2]
        assert len(events) == body["max_new_tokens"] + 1 and events[-1]["finish_reason"] == "length"
        assert "".join(e["token"] for e in events[:-1]) == events[-1]["text"]
    assert inside == outside  # bit for bit: the same onnxruntime, numpy and code on the same CPU


# ------------------------------------------------------------------------------------------ running
def test_every_model_of_the_zoo_is_ready(serve_container: str) -> None:
    status, body = get(f"{serve_container}/health/ready")
    ready = json.loads(body)
    assert status == 200 and ready["status"] == "ready"
    assert list(ready["models"].values()).count("ready") == N_MODELS == len(ready["models"]), ready
    assert get(f"{serve_container}/v2/health/ready")[0] == 200
    assert b"serve_requests_total" in get(f"{serve_container}/metrics")[1]


def test_runs_as_a_non_root_user(serve_image: str, serve_container: str) -> None:
    assert inspect("image", serve_image)["Config"]["User"] == "10001:10001"
    name = container_name("serve")
    ids = docker("exec", name, "sh", "-c", "id -u; id -g; grep '^Uid:' /proc/1/status").stdout.split()
    assert ids[:2] == ["10001", "10001"], ids
    assert ids[3:] == ["10001"] * 4, f"PID 1 (the server) runs as {ids[3:]}"
    # The code and models are root's: the server cannot change what it serves.
    assert (
        docker("exec", name, "sh", "-c", "test -w /srv/app || test -w /srv/models", check=False).returncode
        == 1
    )


def test_healthcheck_turns_healthy(serve_container: str) -> None:
    """The image's own HEALTHCHECK (interval 15 s), which follows SERVE_PORT, as docker runs it."""
    name = container_name("serve")
    deadline = time.monotonic() + 90
    while (health := inspect("container", name)["State"]["Health"])["Status"] != "healthy":
        assert health["Status"] == "starting" and time.monotonic() < deadline, health
        time.sleep(1)
    assert health["Log"][-1]["ExitCode"] == 0, health["Log"]


def test_holds_no_torch_no_tests_no_build_tools(serve_image: str) -> None:
    script = r"""
        for tool in gcc cc g++ c++ clang make cmake ld as cpp; do command -v $tool && echo "tool: $tool"; done
        python -c 'import importlib.util as u; print("torch:", u.find_spec("torch"), u.find_spec("training"))'
        find /srv /opt/venv -name tests | sed 's/^/test: /'
        find /srv \( -name conftest.py -o -name 'test_*.py' \) | sed 's/^/test: /'
        find / -xdev -path /proc -prune -o -type f -name '*.py' -print 2>/dev/null | sed 's|.*/|file: |'
        ls /srv
        python -m pip list --format freeze 2>/dev/null | cut -d= -f1
    """
    out = docker("run", "--rm", "--network", "none", "--entrypoint", "sh", serve_image, "-c", script).stdout
    lines = out.splitlines()
    assert not [line for line in lines if line.startswith("tool: ")], out
    assert "torch: None None" in lines, out
    assert not [line for line in lines if line.startswith("test: ")], out
    # None of this project's test modules anywhere (the dependencies' test suites are dropped too).
    files = {line[6:] for line in lines if line.startswith("file: ")}
    ours = {p.name for p in (ROOT / "tests").rglob("test_*.py")}
    assert len(files) > 1000 and not files & ours, sorted(files & ours)
    lines = [line for line in lines if not line.startswith("file: ")]
    assert "app" in lines and "models" in lines and "tests" not in lines
    packages = {line.lower() for line in lines}
    assert {"onnxruntime", "fastapi", "uvicorn", "numpy"} <= packages, out
    assert not packages & {"torch", "onnx", "onnxscript", "scikit-learn", "matplotlib", "deepserve"}, out


def test_no_host_path_or_secret_in_the_image(serve_image: str) -> None:
    config = inspect("image", serve_image)["Config"]
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", serve_image).stdout
    text = json.dumps(config) + history
    for leak in (str(ROOT), str(Path.home()), "/tmp/", "/work/", "ca-certificates.crt", "PIP_CERT"):
        assert leak not in text, f"{leak!r} in the image's configuration or history"
    env = dict(item.split("=", 1) for item in config["Env"])
    secretish = [
        k for k in env if any(w in k.upper() for w in ("PIP_", "PROXY", "TOKEN", "SECRET", "PASSWORD"))
    ]
    assert not secretish, secretish
    assert env["SERVE_MODEL_REPOSITORY"] == "/srv/models" and env["SERVE_DEVICE"] == "cpu"
    assert env["SERVE_SHUTDOWN_GRACE_S"] == "8"


def test_image_size(serve_image: str) -> None:
    size_mb = int(docker("image", "inspect", "-f", "{{.Size}}", serve_image).stdout) / 1e6
    layers = docker("history", "--format", "{{.Size}}\t{{.CreatedBy}}", serve_image).stdout.splitlines()
    print("\n" + "\n".join(line[:110] for line in layers))
    assert size_mb <= IMAGE_SIZE_LIMIT_MB


def test_sigterm_stops_it_within_the_grace_period_with_exit_code_0(serve_image: str) -> None:
    port = free_port()
    name = run_container(
        serve_image, container_name("sigterm"), {"SERVE_HOST": "127.0.0.1", "SERVE_PORT": str(port)}
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", 120, why=lambda: logs(name))
        started = time.perf_counter()
        docker("stop", "-t", str(STOP_TIMEOUT_S), name, timeout=60)  # SIGTERM, SIGKILL after 10 s
        seconds = time.perf_counter() - started
        state = inspect("container", name)["State"]
        figure(f"docker stop: {seconds:.1f} s, exit code {state['ExitCode']}")
        assert state["ExitCode"] == 0 and not state["OOMKilled"], (state, logs(name))
        assert seconds < STOP_TIMEOUT_S
        assert "Finished server process" in logs(name)
    finally:
        remove_container(name)


# ------------------------------------------------------------------------------- build and rebuild
def test_a_code_change_rebuilds_only_the_last_layers(base_images: dict[str, str]) -> None:
    """In a copy of the build context (others may edit the tree meanwhile): built once (from the cache
    where it can), built again unchanged (everything cached), then with one app/ file changed: only
    COPY app/ and compileall run again, the dependency and model layers come from the cache."""
    context = Path(tempfile.mkdtemp(prefix="deepserve-context-"))
    tags = [f"deepserve-test:rebuild-{os.getpid()}-{i}" for i in range(3)]
    try:
        for name in ("Dockerfile", ".dockerignore", "pyproject.toml"):
            shutil.copy2(ROOT / name, context / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for name in ("app", "models", "training"):
            shutil.copytree(ROOT / name, context / name, ignore=ignore)
        args = {"PYTHON_IMAGE": base_images["PYTHON_IMAGE"]}
        first = build("serve", tags[0], args, context=context)
        same = build("serve", tags[1], args, context=context)
        assert same.ran("serve-deps") == [] and same.ran("serve") == [], same.log[-3000:]

        with (context / "app" / "server.py").open("a") as f:
            f.write(f"# a change never built before: {time.time_ns()}\n")  # else cached from the last run
        changed = build("serve", tags[2], args, context=context)
        steps = changed.step_lines("serve")
        assert changed.ran("serve-deps") == [], "the dependency layer was rebuilt"
        assert sorted(changed.ran("serve")) == [
            "COPY app/ /srv/app/",
            "RUN /opt/venv/bin/python -m compileall -q /srv/app",
        ], steps
        deps = len(first.ran("serve-deps"))
        figure(
            f"rebuild after one app/ file changed: {changed.seconds:.1f} s (unchanged: {same.seconds:.1f} s; "
            f"first build of the copy: {first.seconds:.1f} s, {deps} dependency steps)"
        )
    finally:
        shutil.rmtree(context, ignore_errors=True)
        docker("rmi", *tags, check=False)


def test_gpu_target_builds_and_serves_without_a_gpu(base_images: dict[str, str]) -> None:
    """`--target gpu` with CUDA_IMAGE as the engine has it: the real CUDA image when present, else the
    Debian stand-in (python3.11 and python3.11-venv have those names on Ubuntu 22.04 and Debian 12
    alike, so the stage runs unchanged). `.[gpu]` installs, the image starts with SERVE_DEVICE=cuda and,
    with no GPU, serves on the CPU and says so."""
    tag = f"deepserve-test:gpu-{os.getpid()}"
    name = container_name("gpu")
    try:
        result = build("gpu", tag, {"CUDA_IMAGE": base_images["CUDA_IMAGE"]})
        size = int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout) / 1e6
        figure(f"gpu image on {base_images['CUDA_IMAGE']}: built in {result.seconds:.1f} s, {size:.0f} MB")
        assert "build-models" not in result.log, "the gpu target built the torch stage"
        config = inspect("image", tag)["Config"]
        assert config["User"] == "10001:10001" and "SERVE_DEVICE=cuda" in config["Env"]

        packages = docker(
            "run", "--rm", "--network", "none", tag, "python", "-m", "pip", "list", "--format", "freeze"
        ).stdout
        names = {line.split("==")[0].lower() for line in packages.split()}
        assert "onnxruntime-gpu" in names and "onnxruntime" not in names and "torch" not in names, names

        port = free_port()
        run_container(tag, name, {"SERVE_HOST": "127.0.0.1", "SERVE_PORT": str(port)})
        url = f"http://127.0.0.1:{port}"
        ready = wait_ready(
            url, 180, alive=lambda: inspect("container", name)["State"]["Running"], why=lambda: logs(name)
        )
        assert list(ready["models"].values()).count("ready") == N_MODELS, ready
        status, answer = post(f"{url}/predict", REQUESTS["predict-mlp-digits"][1])[0::2]
        assert status == 200 and len(answer["outputs"]) == 2, answer
        model = json.loads(get(f"{url}/models/mlp-digits")[1])
        assert model["provider"] == "CPUExecutionProvider", model  # no GPU on this machine
        assert "fell back to CPUExecutionProvider" in logs(name, tail=10**6), logs(name)
    finally:
        remove_container(name)
        docker("rmi", tag, check=False)
