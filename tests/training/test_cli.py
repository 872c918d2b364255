"""The CLI as users run it: real child processes, real files."""

import json
import shutil

import pytest

from app.core.repository_format import ModelConfig
from tests.conftest import run_cli

TINY = ["--epochs", "1", "--max-steps", "2", "--limit", "64", "--no-progress"]


def _one_error_line(proc):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Every default recipe, tiny: one build exercises all objectives, plots and exports."""
    root = tmp_path_factory.mktemp("zoo")
    proc = run_cli("build", *TINY, "--out", str(root / "models"), "--runs", str(root / "runs"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root


def test_build_exports_every_recipe(zoo):
    from training.recipes import list_recipes

    for recipe in list_recipes():
        model_dir = zoo / "models" / recipe.name
        config = ModelConfig.model_validate_json((model_dir / "config.json").read_text())
        report = json.loads((model_dir / "1" / "report.json").read_text())
        assert report["parity"]["max_abs_diff"] <= 1e-4, recipe.name
        assert set(report["sha256"]) == {g.file for g in config.graphs.values()}
        assert "curves.png" in report["plots"] and (model_dir / "1" / "curves.png").stat().st_size > 1000
        assert report["seed"] == 0 and "build" in report["command"]
    vae = ModelConfig.model_validate_json((zoo / "models" / "vae-digits" / "config.json").read_text())
    assert set(vae.graphs) == {"encoder", "decoder"} and vae.generation.latent_dim > 0
    gan = json.loads((zoo / "models" / "dcgan-digits" / "1" / "report.json").read_text())
    assert 0.1 <= gan["metrics"]["judge_mean_max_prob"] <= 1.0  # scored by the exported lenet5
    dae = json.loads((zoo / "models" / "dae-digits" / "1" / "report.json").read_text())
    assert {"test_mse_noisy", "test_mse_clean", "noisy_input_mse"} <= set(dae["metrics"])
    assert (
        "confusion_matrix.png"
        in json.loads((zoo / "models" / "lenet5-digits" / "1" / "report.json").read_text())["plots"]
    )
    # Token-input models carry their tokenizer; padding never changes a row's answer.
    lstm = ModelConfig.model_validate_json((zoo / "models" / "lstm-order" / "config.json").read_text())
    assert (
        lstm.preprocessing.kind == "text" and lstm.labels and lstm.graphs["model"].inputs[1].name == "lengths"
    )
    lstm_report = json.loads((zoo / "models" / "lstm-order" / "1" / "report.json").read_text())
    assert lstm_report["metrics"]["padding_max_abs_diff"] <= 1e-4
    s2s = json.loads((zoo / "models" / "seq2seq-dates" / "1" / "report.json").read_text())
    assert {"test_exact_match_greedy_onnx", "test_exact_match_beam4_onnx"} <= set(s2s["metrics"])
    gpt = ModelConfig.model_validate_json((zoo / "models" / "gpt-corpus" / "config.json").read_text())
    assert set(gpt.graphs) == {"model", "decoder_step"} and gpt.task == "text_generation"
    gpt_report = json.loads((zoo / "models" / "gpt-corpus" / "1" / "report.json").read_text())
    assert gpt_report["metrics"]["unigram_nats_per_token"] > 2.0
    assert gpt_report["metrics"]["kv_cache_max_abs_diff"] <= 1e-4  # ONNX step graph vs full forward
    assert any(note.startswith("sample") for note in gpt_report["notes"])


def test_verify_checks_bars_and_hashes(zoo, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(zoo / "models", repo)
    proc = run_cli("verify", str(repo))
    # Two training steps cannot reach the quality bars: verify must say so.
    assert proc.returncode == 1 and "FAIL" in proc.stdout
    assert "sha256 mismatch" not in proc.stdout
    with open(repo / "mlp-digits" / "1" / "model.onnx", "ab") as fh:
        fh.write(b"tampered")
    proc = run_cli("verify", str(repo))
    assert "sha256 mismatch: model.onnx" in proc.stdout


def test_export_of_checkpoint_and_resume(zoo, tmp_path):
    checkpoint = zoo / "runs" / "mlp-digits" / "checkpoints" / "last.pt"
    proc = run_cli(
        "export",
        str(checkpoint),
        "--out",
        str(tmp_path / "m"),
        "--runs",
        str(tmp_path / "r"),
        "--limit",
        "64",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "m" / "mlp-digits" / "1" / "model.onnx").is_file()


def test_train_one_recipe_with_overrides(tmp_path):
    proc = run_cli(
        "train",
        "mlp-digits",
        *TINY,
        "--set",
        "hidden_sizes=[8,8]",
        "--set",
        "activation=gelu",
        "--optimizer",
        "sgd",
        "--out",
        str(tmp_path / "m"),
        "--runs",
        str(tmp_path / "r"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "m" / "mlp-digits" / "1" / "report.json").read_text())
    assert report["model_config"]["hidden_sizes"] == [8, 8] and report["model_config"]["activation"] == "gelu"
    assert report["train_config"]["optimizer"] == "sgd"


def test_list_shows_recipes_models_and_datasets():
    proc = run_cli("list")
    assert proc.returncode == 0
    for word in ("lenet5-digits", "dcgan-digits", "resnet20", "vit", "shapes", "mnist"):
        assert word in proc.stdout


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "no-such-recipe"], "unknown recipe"),
        (["train", "mlp-digits", "--lr", "-1"], "lr"),
        (["train", "mlp-digits", "--set", "activation=swishy"], "activation"),
        (["train", "mlp-digits", "--set", "no_such_field=1"], "no_such_field"),
        (["train", "mlp-digits", "--dataset", "mnist"], "root"),
        (["export", "/nonexistent/last.pt"], "does not exist"),
        (["verify", "/nonexistent/models"], "does not exist"),
    ],
)
def test_bad_input_is_one_clear_error_line(args, expected, tmp_path):
    line = _one_error_line(
        run_cli(*args, "--out", str(tmp_path), cwd=tmp_path)
        if args[0] != "verify"
        else run_cli(*args, cwd=tmp_path)
    )
    assert expected in line
    assert not any(p.name != "runs" for p in tmp_path.iterdir())  # nothing half-written


def test_truncated_mnist_file_is_a_clear_error(tmp_path):
    import struct

    data = tmp_path / "mnist"
    data.mkdir()
    n = 16
    images = struct.pack(">IIII", 0x0803, n, 28, 28) + bytes(n * 28 * 28)
    labels = struct.pack(">II", 0x0801, n) + bytes(range(10)) + bytes(n - 10)
    for prefix in ("train", "t10k"):
        (data / f"{prefix}-images-idx3-ubyte").write_bytes(images)
        (data / f"{prefix}-labels-idx1-ubyte").write_bytes(labels)
    (data / "train-images-idx3-ubyte").write_bytes(images[:-100])  # a download cut short
    proc = run_cli(
        "train",
        "lenet5-digits",
        "--dataset",
        "mnist",
        "--data-root",
        str(data),
        *TINY,
        "--out",
        str(tmp_path / "m"),
        cwd=tmp_path,
    )
    line = _one_error_line(proc)
    assert "train-images-idx3-ubyte" in line
    assert not (tmp_path / "m").exists()


def test_checkpoint_that_does_not_match_its_config(zoo, tmp_path):
    import torch

    state = torch.load(zoo / "runs" / "mlp-digits" / "checkpoints" / "last.pt", weights_only=False)
    state["model_config"]["hidden_sizes"] = [7]
    torch.save(state, tmp_path / "bad.pt")
    line = _one_error_line(
        run_cli(
            "export", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "m"), "--limit", "64", cwd=tmp_path
        )
    )
    assert "does not match" in line
    assert not (tmp_path / "m").exists()


def test_sample_uses_the_kv_cache_graph_and_matches_pytorch(zoo):
    """Greedy text from the ONNX step graph (KV cache) equals greedy text from the PyTorch model."""
    import torch

    from training.registry import build_model
    from training.text import CharTokenizer

    model_dir = zoo / "models" / "gpt-corpus"
    args = ("sample", str(model_dir), "--prompt", "The ", "--max-new-tokens", "40")
    greedy = run_cli(*args, "--temperature", "0")
    assert greedy.returncode == 0, greedy.stderr[-2000:]
    onnx_text = greedy.stdout.splitlines()[1:]

    state = torch.load(zoo / "runs" / "gpt-corpus" / "checkpoints" / "last.pt", weights_only=False)
    model = build_model("gpt", **state["model_config"]).eval()
    model.load_state_dict(state["best_state"])
    config = ModelConfig.model_validate_json((model_dir / "config.json").read_text())
    tokenizer = CharTokenizer.from_dict(config.preprocessing.tokenizer.model_dump())
    ids = tokenizer.encode("The ")
    with torch.no_grad():
        for _ in range(40):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert "\n".join(onnx_text) == tokenizer.decode(ids, stop_at_eos=False)

    sampled = [run_cli(*args, "--seed", seed).stdout for seed in ("1", "1", "2")]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]
