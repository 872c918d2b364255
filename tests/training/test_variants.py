"""``python -m training variant`` on the committed mlp-digits (copied: small, real data, a real recipe):
the published versions, their reports, the rules they are published by, and a real server serving
them side by side."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.core.repository_format import (
    REPORT_FILE,
    Report,
    VersionPolicy,
    policy_versions,
    served_version,
    sha256_of,
)
from app.settings import Settings
from tests.app.conftest import LiveServer
from training.cli import main

ZOO = Path(__file__).resolve().parents[2] / "models"
MODEL = "mlp-digits"


def run_cli(*args: str) -> tuple[int, str, str]:
    """``python -m training`` in this process (the imports are paid once): exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def _copy_trained(repo: Path) -> Path:
    """config.json and the trained version 1 of the committed model, not its committed variants."""
    (repo / MODEL).mkdir(parents=True)
    shutil.copyfile(ZOO / MODEL / "config.json", repo / MODEL / "config.json")
    shutil.copytree(ZOO / MODEL / "1", repo / MODEL / "1")
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """Version 1 (trained), 2 (int8), 3 (optimized), made by the CLI as a user runs it."""
    repo = _copy_trained(tmp_path_factory.mktemp("variants") / "models")
    for kind in ("int8", "optimized"):
        code, out, err = run_cli("variant", MODEL, "--kind", kind, "--out", str(repo), "--speed-rounds", "1")
        assert code == 0, err[-3000:]
        assert "published" in out
    return repo


def _report(repo: Path, version: int) -> Report:
    return Report.model_validate_json((repo / MODEL / str(version) / REPORT_FILE).read_text())


def test_a_variant_is_the_next_version_with_a_valid_report(repo):
    source, int8, optimized = (_report(repo, v) for v in (1, 2, 3))
    assert source.variant is None and source.variant_kind == "fp32"
    assert int8.variant.kind == "int8" and int8.variant.source_version == 1
    assert "dynamic int8" in int8.variant.method
    assert optimized.variant.kind == "optimized" and optimized.variant.optimized_offline == "extended"
    for version, report in ((2, int8), (3, optimized)):
        # Every graph's sha256, of the files in place.
        assert report.sha256 == {"model.onnx": sha256_of(repo / MODEL / str(version) / "model.onnx")}
        quality = report.variant.quality["test_accuracy"]
        assert quality.fp32 == pytest.approx(source.metrics["test_accuracy"], abs=1e-6)  # same data
        assert report.metrics["test_accuracy"] == quality.variant  # the bars judge the variant
        assert {(t.graph, t.batch_size) for t in report.variant.speed} == {("model", 1), ("model", 32)}
        assert all(t.fp32 > 0 and t.variant > 0 for t in report.variant.speed)
    # int8 within half an accuracy point of fp32; the optimized graph computes the same function.
    assert abs(int8.variant.quality["test_accuracy"].variant - source.metrics["test_accuracy"]) <= 0.005
    assert 0 < int8.variant.max_abs_diff < 0.5
    assert optimized.variant.max_abs_diff < 1e-4
    # config.json is shared by every version: a variant leaves it as it was, byte for byte.
    assert (repo / MODEL / "config.json").read_bytes() == (ZOO / MODEL / "config.json").read_bytes()


def test_verify_checks_the_variants_too(repo):
    code, out, err = run_cli("verify", str(repo))
    assert code == 0, out + err
    assert "/2 int8" in out and "/3 optimized" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--kind", "int16"], "unknown variant kind 'int16'"),
        (["--kind", "int8", "--from", "2"], "version 2 is itself a variant"),
        (["--kind", "int8", "--from", "9"], "has no version 9"),
        (["--kind", "int8", "--version", "1"], "already exists"),
    ],
)
def test_refusals_write_nothing(repo, args, message):
    before = sorted(p.name for p in (repo / MODEL).iterdir())
    code, _, err = run_cli("variant", MODEL, *args, "--out", str(repo))
    assert code == 2 and message in err, err[-2000:]
    assert sorted(p.name for p in (repo / MODEL).iterdir()) == before
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_default_policy_serves_the_trained_version_with_its_variants():
    variants = {2: 1, 3: 1, 5: 4}
    assert policy_versions([1, 2, 3], None, None, {2: 1, 3: 1}) == [1, 2, 3]
    assert served_version([1, 2, 3], None, {2: 1, 3: 1}) == 1  # a variant answers only when pinned
    assert served_version([1, 2, 3], 3, {2: 1, 3: 1}) == 3
    # A newer trained version retires the older one's variants and serves its own.
    assert policy_versions([1, 2, 3, 4, 5], None, None, variants) == [4, 5]
    assert served_version([1, 2, 3, 4, 5], None, variants) == 4
    # An explicit policy is Triton's: the folders it names, whatever they hold.
    assert policy_versions([1, 2, 3, 4, 5], VersionPolicy(latest={"num_versions": 1}), None, variants) == [5]


def _held_out_rows(count: int) -> np.ndarray:
    """Rows of the held-out split as the graph takes them (normalised, flattened)."""
    from training.variants import load_context

    ctx = load_context(ZOO / MODEL, 1, Path("/nonexistent"))
    x = ctx.loss.prepare(ctx.bundle.test.tensors[0][:count])
    return x.reshape(count, -1).numpy().astype(np.float32)


def _logits(client, rows: np.ndarray, version: int | None) -> tuple[str, np.ndarray]:
    path = f"/v2/models/{MODEL}" + (f"/versions/{version}" if version is not None else "") + "/infer"
    body = {
        "inputs": [
            {"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}
        ]
    }
    answer = client.post(path, json=body)
    assert answer.status_code == 200, answer.text
    out = answer.json()
    return out["model_version"], np.array(out["outputs"][0]["data"]).reshape(len(rows), -1)


def test_a_server_serves_every_version_and_answers_within_the_reported_difference(repo):
    rows = _held_out_rows(64)
    int8 = _report(repo, 2).variant
    with LiveServer(Settings(model_repository=repo, warmup=False)) as live, live.client() as client:
        info = client.get(f"/models/{MODEL}").json()
        assert info["version"] == 1 and info["variant"] == "fp32"
        assert info["variants"] == {"1": "fp32", "2": "int8", "3": "optimized"}
        detail = client.get(f"/models/{MODEL}", params={"version": 2}).json()
        assert detail["variant"] == "int8" and detail["variant_report"]["source_version"] == 1
        assert client.get(f"/v2/models/{MODEL}").json()["variants"] == info["variants"]
        default_version, default = _logits(client, rows, None)
        assert default_version == "1"  # the trained version answers requests naming none
        _, fp32 = _logits(client, rows, 1)
        _, quantized = _logits(client, rows, 2)
        _, optimized = _logits(client, rows, 3)
        np.testing.assert_array_equal(default, fp32)
        assert 0 < np.abs(quantized - fp32).max() <= int8.max_abs_diff + 1e-6
        assert np.abs(optimized - fp32).max() <= 1e-4
        # /predict picks the variant by the same field.
        answer = client.post("/predict", json={"model": MODEL, "version": 2, "inputs": [rows[0].tolist()]})
        assert answer.status_code == 200 and answer.json()["version"] == 2, answer.text


def test_a_variant_whose_report_lies_about_sha256_is_refused(repo, tmp_path):
    lying = tmp_path / "models"
    shutil.copytree(repo, lying)
    path = lying / MODEL / "2" / REPORT_FILE
    report = json.loads(path.read_text())
    report["sha256"]["model.onnx"] = "0" * 64
    path.write_text(json.dumps(report))
    with LiveServer(Settings(model_repository=lying, warmup=False)) as live, live.client() as client:
        info = client.get(f"/models/{MODEL}", params={"version": 2}).json()
        assert info["state"] == "failed" and "sha256 does not match" in info["reason"]
        assert client.get(f"/models/{MODEL}").json()["served_versions"] == [1, 3]
        _, fp32 = _logits(client, _held_out_rows(2), 1)
        assert fp32.shape == (2, 10)


def test_an_offline_optimized_graph_opens_at_the_layout_level():
    """The server skips the passes such a graph went through but keeps the machine-specific layout
    pass (NCHWc convolutions are not saved); an unknown level in a report fails the load."""
    import onnxruntime as ort

    from app.core.ort_options import graph_optimization_level

    assert graph_optimization_level(None) == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert graph_optimization_level("extended") == ort.GraphOptimizationLevel.ORT_ENABLE_LAYOUT
    with pytest.raises(ValueError, match="unknown offline optimization level"):
        graph_optimization_level("all")
