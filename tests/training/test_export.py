import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from app.core.repository_format import ModelConfig, Report, sha256_of
from training.export import ExportError, export_to_repository
from training.registry import build_model
from training.repository_policy import RepositoryConflict


def _export(tmp_path, model, labels=tuple(str(i) for i in range(10)), **kwargs):
    return export_to_repository(
        model.graphs(),
        repository=tmp_path,
        config_fields={
            "name": "tiny",
            "family": "mlp",
            "task": "classification",
            "labels": list(labels),
            "description": "tiny test model",
        },
        report_fields={"metrics": {"test_accuracy": 0.5}, "command": "pytest", "seed": 0},
        **kwargs,
    )


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return build_model("mlp", hidden_sizes=(16,)).eval()


def test_export_writes_a_valid_repository_entry(tmp_path, mlp):
    result = _export(tmp_path, mlp)
    model_dir = tmp_path / "tiny"
    config = ModelConfig.model_validate_json((model_dir / "config.json").read_text())
    report = Report.model_validate_json((model_dir / "1" / "report.json").read_text())
    graph = config.graphs["model"]
    assert graph.inputs[0].shape == [-1, 64] and graph.outputs[0].shape == [-1, 10]
    assert graph.inputs[0].name == "input" and graph.outputs[0].name == "logits"
    assert report.sha256 == {"model.onnx": sha256_of(model_dir / "1" / "model.onnx")}
    assert report.parity.max_abs_diff <= 1e-4 and report.parity.batch_sizes == [1, 7, 32]
    assert result.path == model_dir / "1"
    # Single self-contained file, full checker, metadata present.
    assert [p.name for p in (model_dir / "1").iterdir() if p.suffix != ".json"] == ["model.onnx"]
    proto = onnx.load(str(model_dir / "1" / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["labels"]) == [str(i) for i in range(10)] and meta["role"] == "model"
    # The graph really has a dynamic batch: run 5 rows (the export example used 4).
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)
    (logits,) = session.run(None, {"input": x})
    np.testing.assert_allclose(logits, mlp(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_failed_export_leaves_nothing_behind(tmp_path, mlp):
    with pytest.raises(ExportError, match="parity"):
        _export(tmp_path, mlp, tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_reexport_replaces_the_version_atomically(tmp_path, mlp):
    _export(tmp_path, mlp)
    _export(tmp_path, mlp, version=2)
    torch.nn.init.zeros_(mlp.head.weight)
    _export(tmp_path, mlp, overwrite=True)  # version 1 again, new weights
    entries = sorted(p.name for p in (tmp_path / "tiny").iterdir())
    assert entries == ["1", "2", "config.json"]
    report1 = json.loads((tmp_path / "tiny" / "1" / "report.json").read_text())
    report2 = json.loads((tmp_path / "tiny" / "2" / "report.json").read_text())
    assert report1["sha256"] != report2["sha256"]


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_existing_version_or_another_config_is_refused(tmp_path, mlp):
    _export(tmp_path, mlp)
    before = _tree(tmp_path)
    with pytest.raises(RepositoryConflict, match="already exists"):
        _export(tmp_path, mlp)  # version 1 again, without overwrite
    # Labels are in the shared config.json: a new version with others would relabel version 1.
    with pytest.raises(RepositoryConflict, match=r"differs in labels; .*--out runs/models"):
        _export(tmp_path, mlp, labels=[f"class {i}" for i in range(10)], version=2)
    assert _tree(tmp_path) == before  # nothing written, no staging folder left
    _export(tmp_path, mlp, labels=[f"class {i}" for i in range(10)], version=2, overwrite=True)
    config = ModelConfig.model_validate_json((tmp_path / "tiny" / "config.json").read_text())
    assert config.labels[0] == "class 0"


def test_a_new_version_keeps_the_serving_settings(tmp_path, mlp):
    """A version pin, batching and instances are the operator's: kept, and no difference."""
    _export(tmp_path, mlp)
    path = tmp_path / "tiny" / "config.json"
    config = json.loads(path.read_text())
    config.update(version=1, instances={"count": 4, "device": "cpu", "intra_op_threads": 1})
    config["batching"]["max_batch_size"] = 8
    path.write_text(json.dumps(config))
    _export(tmp_path, mlp, version=2)
    kept = ModelConfig.model_validate_json(path.read_text())
    assert kept.version == 1 and kept.instances.count == 4 and kept.batching.max_batch_size == 8
    assert (tmp_path / "tiny" / "2" / "model.onnx").is_file()
