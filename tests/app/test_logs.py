"""SERVE_LOG_FORMAT=json with the real ``python -m app``: every line on stderr is a JSON object, each
request writes one access line with its X-Request-Id, and lines logged while a request runs carry
that request's id; a V2 answer without a client id carries the request id."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import httpx

from tests.app.conftest import ZOO, copy_models, free_port


def test_json_lines_carry_the_request_id(tmp_path) -> None:
    root = copy_models(tmp_path / "models", ("mlp-digits",))
    shutil.copytree(ZOO / "mlp-digits", root / "tampered")
    config = json.loads((root / "tampered" / "config.json").read_text())
    (root / "tampered" / "config.json").write_text(json.dumps({**config, "name": "tampered"}))
    graph = root / "tampered" / "1" / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:-1] + b"\x00")
    port = free_port()
    env = {
        **os.environ,
        "SERVE_MODEL_REPOSITORY": str(root),
        "SERVE_PORT": str(port),
        "SERVE_LOG_FORMAT": "json",
    }
    server = subprocess.Popen([sys.executable, "-m", "app"], env=env, stderr=subprocess.PIPE, text=True)
    ids: dict[str, int] = {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if c.get("/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline and server.poll() is None
                time.sleep(0.1)
            for i in range(5):
                r = c.post(
                    "/predict",
                    json={"model": "mlp-digits", "inputs": [[0.0] * 64] * (i + 1)},
                    headers={"X-Request-Id": f"client-{i}"},
                )
                assert r.headers["x-request-id"] == f"client-{i}"
                ids[f"client-{i}"] = r.status_code
            v2 = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
            r = c.post("/v2/models/mlp-digits/infer", json=v2)
            assert r.json()["id"] == r.headers["x-request-id"]  # no client id: the request's
            ids[r.headers["x-request-id"]] = r.status_code
            r = c.post("/predict", json={"model": "tampered", "inputs": [[0.0] * 64]})
            assert r.status_code == 503
            ids[r.headers["x-request-id"]] = 503
            r = c.post("/predict", json={"model": "nosuch", "inputs": [[0.0] * 64]})
            ids[r.headers["x-request-id"]] = r.status_code
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=60)
    lines = [line for line in stderr.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # 100% of the lines parse
    assert all({"ts", "level", "logger", "message", "request_id"} <= set(r) for r in records)
    access = {r["request_id"]: r for r in records if r["logger"] == "app.access" and r["request_id"] in ids}
    assert set(access) == set(ids)
    for request_id, status in ids.items():
        assert access[request_id]["status"] == status
    first = access["client-4"]
    assert (first["model"], first["version"], first["batch_size"]) == ("mlp-digits", 1, 5)
    assert first["queue_ms"] >= 0 and first["compute_ms"] > 0 and first["latency_ms"] > 0
    failed = next(i for i, s in ids.items() if s == 503)
    warnings = [r for r in records if r["level"] == "WARNING" and "-> 503" in r["message"]]
    assert warnings and all(r["request_id"] == failed for r in warnings)
