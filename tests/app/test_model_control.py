"""Model control: version policies, the repository / statistics / configuration extensions through the
real tritonclient, the admin token and name checks of the control plane (with an audit hook proving
that no file outside the repository is opened), and poll mode under steady load: a version published
by the documented convention (copy into a dot folder, rename into place) is served with no failed
request, a corrupt one leaves the serving one in place, a removed one drains."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from app.settings import Settings
from tests.app.conftest import LiveServer, copy_models

TOKEN = "test-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
ROW = [0.0] * 64


def _set_config(root: Path, name: str, **fields) -> None:
    path = root / name / "config.json"
    config = json.loads(path.read_text())
    config.update(fields)
    path.write_text(json.dumps(config))


def _publish(model_dir: Path, source: int, version: int, corrupt: bool = False) -> None:
    """The documented convention: write the version into a dot folder, then rename it into place."""
    staging = model_dir / f".incoming-{version}"
    shutil.copytree(model_dir / str(source), staging)
    if corrupt:
        graph = staging / "model.onnx"
        data = bytearray(graph.read_bytes())
        data[len(data) // 2] ^= 0x01
        graph.write_bytes(bytes(data))
    os.rename(staging, model_dir / str(version))


def _remove(model_dir: Path, version: int) -> None:
    """Removal, by the same convention: rename out of sight first, then delete."""
    trash = model_dir / f".removed-{version}"
    os.rename(model_dir / str(version), trash)
    shutil.rmtree(trash)


def _wait(predicate, timeout_s: float = 30.0, step_s: float = 0.02) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError("condition not met in time")
        time.sleep(step_s)
    return time.monotonic() - started


# ---------------------------------------------------------------------------------------- version policy


def test_version_policies(tmp_path) -> None:
    root = copy_models(tmp_path, ("mlp-digits", "lstm-order", "lenet5-digits"))
    for name in ("mlp-digits", "lstm-order", "lenet5-digits"):
        for version in (2, 3):
            shutil.copytree(root / name / "1", root / name / str(version))
    _set_config(root, "lstm-order", version_policy={"latest": {"num_versions": 2}})
    _set_config(root, "lenet5-digits", version_policy={"specific": {"versions": [1, 3]}})
    with LiveServer(Settings(model_repository=root)) as live, live.client() as c:
        served = {m["name"]: (m["version"], m["served_versions"]) for m in c.get("/models").json()["models"]}
        # Default (no policy): the highest only. latest 2. specific [1, 3].
        assert served == {"mlp-digits": (3, [3]), "lstm-order": (3, [2, 3]), "lenet5-digits": (3, [1, 3])}
        assert c.get("/v2/models/lstm-order").json()["versions"] == ["2", "3"]
        assert c.get("/v2/models/lenet5-digits").json()["versions"] == ["1", "3"]
        one = c.post("/predict", json={"model": "lenet5-digits", "version": 1, "inputs": [[[0.0] * 28] * 28]})
        assert one.status_code == 200 and one.json()["version"] == 1
        assert (
            c.post("/predict", json={"model": "lenet5-digits", "version": 2, "inputs": [ROW]}).status_code
            == 404
        )
        v2 = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW}]}
        answer = c.post("/v2/models/mlp-digits/versions/3/infer", json=v2)
        assert answer.status_code == 200 and answer.json()["model_version"] == "3"
        assert c.post("/v2/models/mlp-digits/versions/1/infer", json=v2).status_code == 404
        config = c.get("/v2/models/lstm-order/config").json()
        assert config["version_policy"] == {"latest": {"num_versions": 2}}


# ---------------------------------------------------------------------------------------- tritonclient


@pytest.fixture(scope="module")
def control_root(tmp_path_factory) -> Path:
    return copy_models(tmp_path_factory.mktemp("control"), ("mlp-digits", "lenet5-digits", "lstm-order"))


@pytest.fixture(scope="module")
def control_server(control_root):
    settings = Settings(model_repository=control_root, model_control_mode="explicit", admin_token=TOKEN)
    with LiveServer(settings) as live:
        yield live


@pytest.fixture()
def tc(control_server):
    client = triton.InferenceServerClient(control_server.url.removeprefix("http://"), network_timeout=30)
    yield client
    client.close()


def _infer(tc, rows: int, model: str = "mlp-digits") -> None:
    tensor = triton.InferInput("input", [rows, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((rows, 64), np.float32))
    tc.infer(model, [tensor])


def test_index_load_unload_agree_with_models(tc, control_server) -> None:
    index = tc.get_model_repository_index(headers=ADMIN)
    assert {(e["name"], e["version"], e["state"]) for e in index} == {
        ("lenet5-digits", "1", "READY"),
        ("lstm-order", "1", "READY"),
        ("mlp-digits", "1", "READY"),
    }
    tc.unload_model("lstm-order", headers=ADMIN)
    with control_server.client() as c:
        assert "lstm-order" not in {m["name"] for m in c.get("/models").json()["models"]}
        assert c.post("/predict", json={"model": "lstm-order", "inputs": "ABC"}).status_code == 404
    entry = next(e for e in tc.get_model_repository_index(headers=ADMIN) if e["name"] == "lstm-order")
    assert entry["state"] == "UNAVAILABLE" and entry["reason"] == "unloaded"
    assert not tc.is_model_ready("lstm-order")
    tc.load_model("lstm-order", headers=ADMIN)
    assert tc.is_model_ready("lstm-order")
    with control_server.client() as c:
        assert c.post("/predict", json={"model": "lstm-order", "inputs": "ABC"}).status_code == 200
    ready = tc.get_model_repository_index(headers=ADMIN)
    assert all(e["state"] == "READY" for e in ready)


def test_statistics_count_the_requests_sent(tc) -> None:
    tc.unload_model("mlp-digits", headers=ADMIN)
    tc.load_model("mlp-digits", headers=ADMIN)  # a fresh version: its statistics start at 0
    sizes = [1, 3, 1, 2, 5, 1]
    for rows in sizes:
        _infer(tc, rows)
    with pytest.raises(InferenceServerException):
        bad = triton.InferInput("input", [1, 63], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 63), np.float32))
        tc.infer("mlp-digits", [bad])
    (stats,) = tc.get_inference_statistics("mlp-digits")["model_stats"]
    assert (stats["name"], stats["version"]) == ("mlp-digits", "1")
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == len(sizes) and inference["fail"]["count"] == 1
    assert inference["queue"]["count"] == len(sizes) and inference["compute_infer"]["count"] == len(sizes)
    assert inference["success"]["ns"] > 0 and inference["compute_infer"]["ns"] > 0
    assert stats["inference_count"] == sum(sizes) and stats["execution_count"] == len(sizes)
    by_size = {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}
    assert by_size == {1: 3, 2: 1, 3: 1, 5: 1}
    assert stats["last_inference"] > 0
    assert tc.get_inference_statistics("mlp-digits", "1") == {"model_stats": [stats]}
    everything = tc.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in everything} == {"mlp-digits", "lenet5-digits", "lstm-order"}


def test_config_agrees_with_models_and_accepts_an_override(tc, control_server, control_root) -> None:
    config = tc.get_model_config("lenet5-digits")
    with control_server.client() as c:
        meta = c.get("/models/lenet5-digits").json()
    assert config["name"] == "lenet5-digits" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == meta["batching"]["max_batch_size"]
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, 28, 28]}]
    assert [o["name"] for o in config["output"]] == [o["name"] for o in meta["graphs"]["model"]["outputs"]]
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    assert tc.get_model_config("lenet5-digits", "1") == config
    override = json.loads((control_root / "mlp-digits" / "config.json").read_text())
    override["batching"]["max_batch_size"] = 4
    tc.load_model("mlp-digits", headers=ADMIN, config=json.dumps(override))
    assert tc.get_model_config("mlp-digits")["max_batch_size"] == 4
    with control_server.client() as c:
        assert c.get("/models/mlp-digits").json()["batching"]["max_batch_size"] == 4
    tc.load_model("mlp-digits", headers=ADMIN)  # without one: config.json again
    assert tc.get_model_config("mlp-digits")["max_batch_size"] == 32
    wrong = {**override, "name": "lenet5-digits"}
    with pytest.raises(InferenceServerException, match="names the model"):
        tc.load_model("mlp-digits", headers=ADMIN, config=json.dumps(wrong))
    with pytest.raises(InferenceServerException, match="file uploads are refused"):
        upload = {"file:1/model.onnx": b"x"}
        tc.load_model("mlp-digits", headers=ADMIN, config=json.dumps(override), files=upload)


def test_a_version_that_fails_to_load_leaves_the_serving_one(tc, control_server, control_root) -> None:
    _publish(control_root / "lenet5-digits", 1, 2, corrupt=True)
    try:
        with pytest.raises(InferenceServerException, match="sha256 does not match"):
            tc.load_model("lenet5-digits", headers=ADMIN)
        assert tc.is_model_ready("lenet5-digits", "1")
        entries = {
            e["version"]: e
            for e in tc.get_model_repository_index(headers=ADMIN)
            if e["name"] == "lenet5-digits"
        }
        assert entries["1"]["state"] == "READY"
        assert entries["2"]["state"] == "UNAVAILABLE" and "sha256 does not match" in entries["2"]["reason"]
        with control_server.client() as c:
            assert c.get("/models/lenet5-digits").json()["version"] == 1
    finally:
        _remove(control_root / "lenet5-digits", 2)
    tc.load_model("lenet5-digits", headers=ADMIN)
    assert [
        e["version"] for e in tc.get_model_repository_index(headers=ADMIN) if e["name"] == "lenet5-digits"
    ] == ["1"]


# ---------------------------------------------------------------------------------------- security

CONTROL_PATHS = (
    "/v2/repository/index",
    "/v2/repository/models/mlp-digits/load",
    "/v2/repository/models/mlp-digits/unload",
)
# (raw path segment in place of the name, expected status): paths never reach the name check (404 from
# routing, as they are no single segment), other bad names fail the pattern (400).
HOSTILE_NAMES = (
    ("..", 400),
    ("%2e%2e", 400),
    ("..%2Fetc", 404),
    ("../x", 404),
    ("a/b", 404),
    ("a%2Fb", 404),
    ("%2Fetc%2Fpasswd", 404),
    ("/etc/passwd", 404),
    ("http:%2F%2Fevil.example%2Fm", 404),
    ("http:evil.example", 400),
    ("MLP-DIGITS", 400),
    ("mlp-digits%00", 400),
    ("~root", 400),
    ("-rf", 400),
    ("a" * 65, 400),
    ("nosuch", 404),
)


def _raw(server: LiveServer, path: str, headers: dict | None = None, body: bytes = b"") -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("POST", path, body=body, headers=headers or {})
        response = connection.getresponse()
        payload = response.read()
        return response.status, json.loads(payload) if payload else {}
    finally:
        connection.close()


def test_control_api_is_off_without_a_token(server) -> None:
    for path in CONTROL_PATHS:
        status, body = _raw(server, path, ADMIN)
        assert status == 403 and "SERVE_ADMIN_TOKEN" in body["error"]
    with server.client() as c:  # the read-only views stay open
        assert c.get("/v2/models/mlp-digits/stats").status_code == 200
        assert c.get("/v2/models/mlp-digits/config").status_code == 200


def test_control_api_needs_the_token(control_server) -> None:
    for path in CONTROL_PATHS:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": TOKEN},
            {"Authorization": "Basic " + TOKEN},
        ):
            status, body = _raw(control_server, path, headers)
            assert status == 401 and "admin token" in body["error"], (path, headers)
    with pytest.raises(InferenceServerException) as refused:
        triton.InferenceServerClient(control_server.url.removeprefix("http://")).get_model_repository_index()
    assert refused.value.status() == "401"


def test_a_control_body_over_the_json_limit_is_413(control_server) -> None:
    """Bodies of the control API are bounded like every JSON body (SERVE_MAX_JSON_BYTES), before
    they are parsed."""
    limit = control_server.app.state.registry.settings.max_json_bytes
    body = b'{"parameters": {"x": "' + b"a" * limit + b'"}}'
    for path in ("/v2/repository/index", "/v2/repository/models/mlp-digits/load"):
        status, answer = _raw(control_server, path, {**ADMIN, "Content-Type": "application/json"}, body)
        assert status == 413 and "at most" in answer["error"], (path, status, answer)


_AUDIT: dict = {"on": False, "paths": []}


def _audit(event: str, args: tuple) -> None:
    if _AUDIT["on"] and event in ("open", "os.listdir", "os.scandir") and args:
        _AUDIT["paths"].append((event, args[0]))


sys.addaudithook(_audit)


def _hostile_round(server: LiveServer) -> None:
    for name, expected in HOSTILE_NAMES:
        for action in ("load", "unload"):
            status, body = _raw(server, f"/v2/repository/models/{name}/{action}", ADMIN)
            assert status == expected, (name, action, status, body)
            assert "error" in body
    status, body = _raw(
        server,
        "/v2/repository/models/mlp-digits/load",
        ADMIN,
        b'{"parameters": {"file:1/model.onnx": "eA=="}}',
    )
    assert status == 400 and "file uploads are refused" in body["error"]
    status, body = _raw(
        server,
        "/v2/repository/models/mlp-digits/load",
        ADMIN,
        b'{"parameters": {"config": "{\\"name\\": 1}"}}',
    )
    assert status == 422 and "parameters.config is invalid" in body["error"]
    status, _ = _raw(server, "/v2/repository/models/mlp-digits/unload", ADMIN)
    assert status == 200
    status, _ = _raw(server, "/v2/repository/models/mlp-digits/load", ADMIN)
    assert status == 200
    status, _ = _raw(server, "/v2/repository/index", ADMIN)
    assert status == 200


def test_hostile_names_and_no_file_outside_the_repository(control_server, control_root) -> None:
    _hostile_round(control_server)  # the first round imports whatever the handlers import lazily
    _AUDIT["paths"].clear()
    _AUDIT["on"] = True
    try:
        _hostile_round(control_server)
    finally:
        _AUDIT["on"] = False
    root = control_root.resolve()
    opened = [(event, path) for event, path in _AUDIT["paths"] if not isinstance(path, int)]
    assert any(event == "open" for event, _ in opened), "the audit hook saw no file opened"
    outside = [
        (event, path) for event, path in opened if not Path(os.fsdecode(path)).resolve().is_relative_to(root)
    ]
    assert not outside, outside
    assert sorted(control_server.app.state.registry.names()) == ["lenet5-digits", "lstm-order", "mlp-digits"]


def test_load_and_unload_need_explicit_mode(server) -> None:
    settings = Settings(
        model_repository=server.app.settings.model_repository, admin_token=TOKEN, model_control_mode="poll"
    )
    with LiveServer(settings) as live:
        for path in CONTROL_PATHS[1:]:
            status, body = _raw(live, path, ADMIN)
            assert status == 400 and "SERVE_MODEL_CONTROL_MODE=explicit" in body["error"]
        assert _raw(live, CONTROL_PATHS[0], ADMIN)[0] == 200


# ---------------------------------------------------------------------------------------- poll mode


class Load:
    """~``rate`` /predict requests per second from one thread; every answer's status and version."""

    def __init__(self, server: LiveServer, rate: float = 20.0) -> None:
        self.server, self.period = server, 1 / rate
        self.answers: list[tuple[float, int, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.server.client() as c:
            next_at = time.monotonic()
            while not self._stop.is_set():
                response = c.post("/predict", json={"model": "mlp-digits", "inputs": [ROW]})
                version = response.json().get("version") if response.status_code == 200 else None
                self.answers.append((time.monotonic(), response.status_code, version))
                next_at += self.period
                time.sleep(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def failed(self) -> list:
        return [a for a in self.answers if a[1] != 200]


def _metric(c: httpx.Client, line: str) -> float:
    """A sample of /metrics (process-wide: other tests' servers count too, so tests compare deltas)."""
    for sample in c.get("/metrics").text.splitlines():
        if sample.startswith(line + " "):
            return float(sample.rsplit(" ", 1)[1])
    return 0.0


FAILED_LOADS = 'serve_model_loads_total{model="mlp-digits",result="failed"}'
UNLOADS = 'serve_model_unloads_total{model="mlp-digits"}'


def _served(c: httpx.Client) -> int:
    return c.get("/models/mlp-digits").json()["version"]


def test_poll_mode_under_load(tmp_path) -> None:
    root = copy_models(tmp_path, ("mlp-digits",))
    model_dir = root / "mlp-digits"
    interval = 0.5
    settings = Settings(model_repository=root, model_control_mode="poll", poll_interval_s=interval)
    with LiveServer(settings) as live, live.client() as c, Load(live) as load:
        failed_before, unloads_before = _metric(c, FAILED_LOADS), _metric(c, UNLOADS)
        time.sleep(1.0)
        _publish(model_dir, 1, 2)
        to_served = _wait(lambda: _served(c) == 2)
        time.sleep(0.5)
        assert load.answers[-1][2] == 2  # the load's own requests now reach version 2
        _publish(model_dir, 1, 3, corrupt=True)
        _wait(lambda: c.get("/models/mlp-digits", params={"version": 3}).status_code == 200)
        failed = c.get("/models/mlp-digits", params={"version": 3}).json()
        assert failed["state"] == "failed" and "sha256 does not match" in failed["reason"]
        time.sleep(2 * interval)
        assert _served(c) == 2  # the broken version is not retried, the serving one stays
        _remove(model_dir, 3)
        _remove(model_dir, 2)
        to_fallback = _wait(lambda: _served(c) == 1)
        time.sleep(1.0)
        failed_loads = _metric(c, FAILED_LOADS) - failed_before
        unloads = _metric(c, UNLOADS) - unloads_before
        version_3_failed = _metric(c, 'serve_model_version_failed{model="mlp-digits",version="3"}')
    sent = len(load.answers)
    print(
        f"\npoll mode: {sent} requests, publish -> served {to_served:.2f} s (poll {interval} s), "
        f"removal -> previous version served {to_fallback:.2f} s, failed {len(load.failed())}"
    )
    assert not load.failed(), load.failed()[:5]
    assert to_served < interval + 5.0
    assert sent >= 20 * 3
    versions = [v for _, _, v in load.answers]
    assert versions[0] == 1 and 2 in versions and versions[-1] == 1
    assert failed_loads == 1  # the corrupt version, tried once
    assert unloads == 2  # version 1 when 2 came, version 2 when it was removed
    assert version_3_failed == 0  # its folder was removed: the alert clears
