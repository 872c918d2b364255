"""The README is part of the test suite: every fenced ``bash`` and ``python`` example in README.md runs
as written, from the repository root, against the server that the README's own ``make run`` starts.

- Serving examples (they address ``localhost:8000``) run with only the address changed to a free port.
  ``curl`` is wrapped to fail on any HTTP error (``--fail-with-body``) and keep each answer, and every
  JSON key that a comment documents under a call (``# {"model": ...}`` or ``# data: {...}``) must be in
  that call's answer.
- Training examples (``python -m training``, ``torchrun``) run in a copy of the repository's files,
  so a developer's own ``runs/`` is never touched; the committed ``models/`` must come out unchanged.
  The commands of a block that name the same model run in the block's order, one after the other;
  commands that share no model run beside them, two at a time (one per core of the CI machine).
- A block the test cannot run says why in an HTML comment on the line before its fence:
  ``<!-- readme-test: skip: <reason> -->``. There are few, and each is listed in SKIPPED below.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.app.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent
FENCE = re.compile(r"^```(\w*)\s*$")
SKIP = re.compile(r"<!-- readme-test: skip: (.+?) -->")
# The blocks the test may leave alone, by their first command, and why. Nothing else may be skipped.
SKIPPED = {
    "make test": "the test command itself: it runs this test",
    "docker compose up --build": (
        "Grafana's image needs a registry: tests/deploy/test_compose_up.py runs api and prometheus"
    ),
    (
        "cp -r new-version models/mlp-digits/.incoming-2"
        " && mv models/mlp-digits/.incoming-2 models/mlp-digits/2"
    ): ("needs a server in poll mode: tests/app/test_model_control.py publishes this way under load"),
    'eval "$(scripts/make_base_images.sh)"': (
        "builds and runs images: tests/deploy/test_container.py does this"
    ),
}
DOCUMENTED = re.compile(r"^#\s+(\{|data: \{)")  # a comment that shows a call's answer


@dataclass(frozen=True)
class Example:
    language: str
    code: str
    line: int
    skip_reason: str | None

    @property
    def first_command(self) -> str:
        for line in self.code.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                return line.split("#")[0].strip()
        return ""

    @property
    def serving(self) -> bool:
        return "localhost:8000" in self.code

    @property
    def training(self) -> bool:
        return "-m training" in self.code


def readme_examples() -> list[Example]:
    examples, block, language, start, reason = [], None, "", 0, None
    previous = ""
    for number, line in enumerate(README.read_text().splitlines(), 1):
        fence = FENCE.match(line)
        if block is None and fence:
            block, language, start = [], fence.group(1), number
            found = SKIP.search(previous)
            reason = found.group(1) if found else None
        elif block is not None and line.startswith("```"):
            examples.append(Example(language, "\n".join(block) + "\n", start, reason))
            block = None
        elif block is not None:
            block.append(line)
        if line.strip():
            previous = line
    assert block is None, "README.md has an unclosed code fence"
    return examples


EXAMPLES = readme_examples()


def by_kind(predicate) -> list[Example]:
    return [e for e in EXAMPLES if e.skip_reason is None and predicate(e)]


def test_every_example_is_run_or_says_why_not() -> None:
    for example in EXAMPLES:
        where = f"README.md:{example.line}"
        assert example.language in ("bash", "python"), f"{where}: fence language {example.language!r}"
        if example.skip_reason is not None:
            assert SKIPPED.get(example.first_command) == example.skip_reason, (
                f"{where}: skipped block {example.first_command!r} is not in SKIPPED with that reason"
            )
            continue
        runnable = example.serving or example.training or example.first_command.startswith("make ")
        assert runnable, f"{where}: an example this test does not know how to run"
    assert {e.first_command for e in EXAMPLES if e.skip_reason} == set(SKIPPED)


# ------------------------------------------------------------------------------ the served examples


def _clean_env() -> dict[str, str]:
    """The environment a user's shell has: none of the test run's make or server settings."""
    drop = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTHONPATH")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SERVE_")}


def _models_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted((ROOT / "models").rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(ROOT)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory) -> Iterator[str]:
    """`make run` exactly as the README's first command gives it, with HOST and PORT set the way its
    comment says, started in its own process group and stopped by it."""
    (command,) = [e for e in EXAMPLES if e.first_command == "make run"]
    port = free_port()
    log = tmp_path_factory.mktemp("make-run") / "server.log"
    env = {**_clean_env(), "HOST": "127.0.0.1", "PORT": str(port)}
    before = _models_digest()
    with log.open("w") as out:
        process = subprocess.Popen(
            ["bash", "-c", command.first_command],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # make run reinstalls the serving extra first
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert _models_digest() == before, "make run changed the committed models/"


# Every curl call of a block keeps its answer in $README_OUT/<n> and fails on HTTP errors (curl -s
# alone would exit 0 on a 4xx).
CURL_WRAPPER = """
README_N=0
curl() {
  README_N=$((README_N + 1))
  command curl --fail-with-body -o "$README_OUT/$README_N" "$@" || {
    local status=$?
    echo "curl call $README_N failed ($status): $(cat "$README_OUT/$README_N" 2>/dev/null)" >&2
    return $status
  }
  cat "$README_OUT/$README_N"
}
"""


def documented_keys(code: str) -> dict[int, set[str]]:
    """Call number -> the JSON keys that the comments under that curl call show."""
    keys: dict[int, set[str]] = {}
    call, in_answer = 0, False
    for line in code.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if DOCUMENTED.match(stripped) or (in_answer and stripped.startswith("#  ")):
                in_answer = True
                keys.setdefault(call, set()).update(re.findall(r'"(\w+)":', stripped))
            continue
        in_answer = False
        call += len(re.findall(r"(?:^|[;&|(]\s*)curl\s", stripped))
    return keys


def answer_keys(body: bytes) -> set[str]:
    """Every key at any depth of a JSON answer, or of each Server-Sent Event."""
    text = body.decode()
    documents = (
        [
            json.loads(line[6:])
            for line in text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"
        ]
        if text.startswith("data: ")
        else [json.loads(text)]
    )
    found: set[str] = set()

    def walk(value) -> None:
        if isinstance(value, dict):
            found.update(value)
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for document in documents:
        walk(document)
    return found


def _run_bash(code: str, cwd: Path, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        errors="replace",  # an example may fetch a picture
        timeout=timeout,
    )


SERVING_BASH = by_kind(lambda e: e.serving and e.language == "bash")
SERVING_PYTHON = by_kind(lambda e: e.serving and e.language == "python")


@pytest.mark.slow
@pytest.mark.parametrize("example", SERVING_BASH, ids=lambda e: f"README.md:{e.line}")
def test_shell_example(example: Example, readme_server: str, tmp_path: Path) -> None:
    code = example.code.replace("http://localhost:8000", readme_server).replace(
        "localhost:8000", readme_server.removeprefix("http://")
    )
    env = {**_clean_env(), "README_OUT": str(tmp_path)}
    result = _run_bash(CURL_WRAPPER + code, ROOT, env, timeout=120)
    assert result.returncode == 0, f"README.md:{example.line}\n{result.stdout[-2000:]}\n{result.stderr}"
    answers = sorted(tmp_path.iterdir(), key=lambda p: int(p.name))
    assert answers, "the block made no call"
    for call, keys in documented_keys(example.code).items():
        assert 1 <= call <= len(answers), f"README.md:{example.line}: an answer documented before any call"
        missing = keys - answer_keys(answers[call - 1].read_bytes())
        assert not missing, (
            f"README.md:{example.line}, call {call}: documented keys {missing} not in the answer"
        )


@pytest.mark.slow
@pytest.mark.parametrize("example", SERVING_PYTHON, ids=lambda e: f"README.md:{e.line}")
def test_python_example(example: Example, readme_server: str, tmp_path: Path) -> None:
    code = example.code.replace("http://localhost:8000", readme_server).replace(
        "localhost:8000", readme_server.removeprefix("http://")
    )
    script = tmp_path / "example.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"README.md:{example.line}\n{result.stderr}"
    assert result.stdout.strip(), f"README.md:{example.line} printed nothing"


# ----------------------------------------------------------------------------- the training examples


def _copy_of_the_repository(target: Path) -> Path:
    """The tracked files (what a fresh clone has), with the test run's venv where `.venv` is."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(
        b"\0"
    )
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():
            (target / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name.decode())
    (target / ".venv").symlink_to(VENV_BIN.parent)
    return target


TRAINING = by_kind(lambda e: e.training)


@pytest.fixture(scope="module")
def training_installed() -> None:
    """The README's training install, `make train-setup`, run as written in this checkout first (it is
    a subset of what `make test` installed, so here it checks the target rather than adds to it)."""
    assert "make train-setup" in README.read_text()
    result = subprocess.run(
        ["make", "train-setup"], cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _independent_chains(code: str, names: set[str]) -> list[list[str]]:
    """The block's commands (continuation lines joined), grouped so that commands naming a common
    model of ``names`` (which share its checkpoints under runs/) fall in one chain, in the block's
    order; chains are ordered by their first command."""
    commands = [c for c in re.sub(r"\s*\\\n\s*", " ", code).splitlines() if c.strip()]
    chains: list[tuple[set[str], list[int]]] = []  # (models named, command indices)
    for i, command in enumerate(commands):
        named = {n for n in names if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", command)}
        joined = [chain for chain in chains if chain[0] & named]
        for chain in joined:
            chains.remove(chain)
        indices = sorted(j for chain in joined for j in chain[1])
        chains.append((named.union(*(chain[0] for chain in joined)), [*indices, i]))
    return [[commands[i] for i in chain] for _, chain in sorted(chains, key=lambda c: c[1][0])]


def test_commands_naming_one_model_stay_in_one_chain_in_order() -> None:
    code = "a list\nb train x --out r\nc train y \\\n  --epochs 2\n"
    code += "d export runs/x/last.pt\ne build --only y,z\nf z-x\n"
    chains = _independent_chains(code, {"x", "y", "z"})
    assert chains == [
        ["a list"],
        ["b train x --out r", "d export runs/x/last.pt"],
        ["c train y --epochs 2", "e build --only y,z"],
        ["f z-x"],
    ]
    # a command naming the models of two chains joins them, each command still in the block's order
    assert _independent_chains(code + "g compare x y\n", {"x", "y", "z"})[1:3] == [
        [
            "b train x --out r",
            "c train y --epochs 2",
            "d export runs/x/last.pt",
            "e build --only y,z",
            "g compare x y",
        ],
        ["f z-x"],
    ]


@pytest.mark.slow
@pytest.mark.parametrize("example", TRAINING, ids=lambda e: f"README.md:{e.line}")
def test_training_example(example: Example, tmp_path: Path, training_installed: None) -> None:
    clone = _copy_of_the_repository(tmp_path / "clone")
    models = {p.relative_to(clone): p.read_bytes() for p in (clone / "models").rglob("*") if p.is_file()}
    env = {**_clean_env(), "OMP_NUM_THREADS": "1"}
    names = {p.name for p in (clone / "models").iterdir() if p.is_dir()}
    chains = _independent_chains(example.code, names)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda chain: _run_bash("\n".join(chain), clone, env, 900), chains))
    for chain, result in zip(chains, results, strict=True):
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"README.md:{example.line}: {chain}\n{output[-4000:]}"
        assert "Traceback" not in output, output[-4000:]
    after = {p.relative_to(clone): p.read_bytes() for p in (clone / "models").rglob("*") if p.is_file()}
    assert after == models, "a README training example changed the committed models/"


MAKE_EXAMPLES = by_kind(lambda e: e.first_command.startswith("make ") and e.first_command != "make run")


@pytest.mark.slow
@pytest.mark.parametrize("example", MAKE_EXAMPLES, ids=lambda e: f"README.md:{e.line}")
def test_make_example(example: Example, tmp_path: Path) -> None:
    """`make format` and the like, in a copy of the repository (they may rewrite files)."""
    clone = _copy_of_the_repository(tmp_path / "clone")
    result = _run_bash(example.code, clone, _clean_env(), timeout=300)
    assert result.returncode == 0, f"README.md:{example.line}\n{result.stdout}\n{result.stderr}"
