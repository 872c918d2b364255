"""The CLI as users run it: real child processes, real files."""

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


# The tiny build runs as two builds side by side into one repository, one per core (~4 min in one on
# the 2-core CI machine): the sequence models, and the rest in build order (the digits classifier
# before the generators it judges).
SEQUENCE_HALF = {"order-task", "dates", "corpus", "scrambled-words"}  # datasets of the first half


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Every default recipe, tiny: one build exercises all objectives, plots and exports."""
    from training.recipes import list_recipes

    root = tmp_path_factory.mktemp("zoo")
    recipes = list_recipes()
    halves = [
        [r.name for r in recipes if r.dataset in SEQUENCE_HALF],
        [r.name for r in recipes if r.dataset not in SEQUENCE_HALF],
    ]
    out = ["--out", str(root / "models"), "--runs", str(root / "runs")]
    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(lambda names: run_cli("build", *TINY, "--only", ",".join(names), *out), halves))
    for proc in procs:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return root


@pytest.mark.timeout(900)  # its fixture trains every recipe (tiny); a shared 2-core machine took > 300 s
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
    # The classifiers report what they cost; the lightweight CNN is the cheapest shapes classifier.
    cost = {
        name: json.loads((zoo / "models" / name / "1" / "report.json").read_text())["metrics"]
        for name in ("resnet-shapes", "alexnet-shapes", "mobilenet-shapes")
    }
    assert all(c["parameters"] > 0 and c["multiply_adds"] > 0 for c in cost.values())
    assert cost["mobilenet-shapes"]["multiply_adds"] < cost["resnet-shapes"]["multiply_adds"]
    assert cost["mobilenet-shapes"]["parameters"] < cost["alexnet-shapes"]["parameters"]
    # The conditional GAN takes a class and is judged on it; the CycleGAN exports both directions.
    cgan = ModelConfig.model_validate_json((zoo / "models" / "cgan-digits" / "config.json").read_text())
    assert [i.name for i in cgan.graphs["generator"].inputs] == ["latent", "class"]
    assert cgan.labels == [str(d) for d in range(10)] and cgan.generation.num_samples == 10
    cgan_report = json.loads((zoo / "models" / "cgan-digits" / "1" / "report.json").read_text())
    assert 0 <= cgan_report["metrics"]["judge_requested_class_accuracy"] <= 1
    cycle = ModelConfig.model_validate_json((zoo / "models" / "cyclegan-strokes" / "config.json").read_text())
    assert cycle.task == "image_translation" and set(cycle.graphs) == {"thin_to_thick", "thick_to_thin"}
    cycle_report = json.loads((zoo / "models" / "cyclegan-strokes" / "1" / "report.json").read_text())
    assert set(cycle_report["parity"]["per_graph"]) == {"thin_to_thick", "thick_to_thin"}
    metrics = cycle_report["metrics"]
    assert metrics["stroke_thin"] < metrics["stroke_thick"]  # the domains differ as made
    assert {"judge_accuracy_thin_to_thick", "judge_accuracy_thick_to_thin", "test_cycle_l1"} <= set(metrics)
    assert {"translations.png", "stroke_thickness.png"} <= set(cycle_report["plots"])
    # The diffusion model: one denoiser graph, its schedule in config.json, judged beside the GAN.
    diffusion = ModelConfig.model_validate_json(
        (zoo / "models" / "diffusion-digits" / "config.json").read_text()
    )
    assert [i.name for i in diffusion.graphs["denoiser"].inputs] == ["x", "t", "class"]
    assert (
        diffusion.task == "diffusion"
        and diffusion.diffusion.conditional
        and diffusion.diffusion.null_class == 10
    )
    diffusion_report = json.loads((zoo / "models" / "diffusion-digits" / "1" / "report.json").read_text())
    assert {"samples.png", "denoising.png"} <= set(diffusion_report["plots"])
    figures = diffusion_report["metrics"]
    assert 0 <= figures["judge_requested_class_accuracy"] <= 1 and figures["judge_frechet_distance"] > 0
    assert figures["judge_frechet_distance_dcgan_digits"] > 0  # the GAN, judged on the same real digits
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
    # The dual encoder: two graphs, image and text preprocessing, its figures on the ONNX graphs too.
    clip = ModelConfig.model_validate_json((zoo / "models" / "clip-shapes" / "config.json").read_text())
    assert clip.task == "embedding" and list(clip.graphs) == ["image_encoder", "text_encoder"]
    assert [t.name for t in clip.graphs["image_encoder"].outputs] == ["image_embeds", "logit_scale"]
    assert clip.preprocessing.kind == "image" and clip.text_preprocessing.add_bos
    clip_report = json.loads((zoo / "models" / "clip-shapes" / "1" / "report.json").read_text())
    assert set(clip_report["parity"]["per_graph"]) == {"image_encoder", "text_encoder"}
    for key in ("test_zero_shot_accuracy", "test_recall_at_1", "test_recall_at_5"):
        assert abs(clip_report["metrics"][f"{key}_onnx"] - clip_report["metrics"][key]) <= 0.02, key
    assert {"retrieval_examples.png", "zero_shot_confusion_matrix.png"} <= set(clip_report["plots"])


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
        "--experiment",
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
        "--experiment",  # two steps miss the bar
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "m" / "mlp-digits" / "1" / "report.json").read_text())
    assert report["model_config"]["hidden_sizes"] == [8, 8] and report["model_config"]["activation"] == "gelu"
    assert report["train_config"]["optimizer"] == "sgd"


DATASETS = ("digits", "digits28", "shapes", "mnist", "cifar10", "image-folder")
SEQUENCE_DATASETS = ("order-task", "dates", "scrambled-words", "corpus")


def test_list_shows_recipes_models_and_datasets():
    proc = run_cli("list")
    assert proc.returncode == 0
    for word in ("lenet5-digits", "dcgan-digits", "resnet20", "vit"):
        assert word in proc.stdout
    listed = proc.stdout.split("datasets")[-1]
    for name in DATASETS + SEQUENCE_DATASETS:  # one line each, with what it holds
        assert any(line.split()[:1] == [name] and len(line.split()) > 3 for line in listed.splitlines()), name


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


# ------------------------------------------------------------------ where a run's model goes (versions)

ROOT_MODELS = Path(__file__).resolve().parents[2] / "models"  # the committed zoo: only ever copied


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, with its bytes (hidden staging folders too)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _train(repo: Path, runs: Path, *extra: str):
    return run_cli("train", "mlp-digits", *TINY, "--out", str(repo), "--runs", str(runs), *extra)


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """mlp-digits trained twice into an empty repository, without --version: versions 1 then 2.
    Tiny runs miss the 0.97 bar, but nothing there meets it: both are exported."""
    root = tmp_path_factory.mktemp("versions")
    repo = root / "models"
    first = _train(repo, root / "runs")
    after_first = _files(repo)
    second = _train(repo, root / "runs", "--experiment")
    return {"repo": repo, "first": first, "second": second, "after_first": after_first}


def test_runs_without_version_write_the_next_one(two_versions):
    repo, first, second = two_versions["repo"], two_versions["first"], two_versions["second"]
    # A missed bar with nothing better there: exported, and exit 1 (0 with --experiment), one line each.
    assert first.returncode == 1 and second.returncode == 0, second.stderr[-3000:]
    for proc, kind in ((first, "error: "), (second, "note (--experiment): ")):
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(kind), proc.stderr
        assert "test_accuracy=" in lines[0] and "(>= 0.97)" in lines[0] and "exported" in lines[0]
        assert "torchvision" not in proc.stderr  # the exporter's notice about an unused extra is gone
    assert "mlp-digits/1 " in first.stdout and "mlp-digits/2 " in second.stdout
    model_dir = repo / "mlp-digits"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2", "config.json"]
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]  # no staging folder left
    # Version 1 and the shared config.json are untouched, byte for byte.
    before = two_versions["after_first"]
    after = _files(repo)
    assert {k: v for k, v in after.items() if not k.startswith("mlp-digits/2/")} == before


def test_an_existing_version_needs_overwrite(two_versions, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(two_versions["repo"], repo)
    before = _files(repo)
    started = time.perf_counter()
    line = _one_error_line(_train(repo, tmp_path / "runs", "--version", "1"))
    assert "mlp-digits/1 already exists" in line and "--overwrite" in line and "version 3" in line
    assert _files(repo) == before
    # Refused before any data is loaded or run folder made: no training happened.
    assert not (tmp_path / "runs").exists() and time.perf_counter() - started < 30


def test_overwrite_replaces_the_version(two_versions, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(two_versions["repo"], repo)
    before = _files(repo)
    proc = _train(repo, tmp_path / "runs", "--version", "1", "--overwrite", "--experiment")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((repo / "mlp-digits" / "1" / "report.json").read_text())
    assert "--overwrite" in report["command"]
    after = _files(repo)
    assert after["mlp-digits/1/report.json"] != before["mlp-digits/1/report.json"]
    assert {k: v for k, v in after.items() if k.startswith("mlp-digits/2/")} == {
        k: v for k, v in before.items() if k.startswith("mlp-digits/2/")
    }


@pytest.mark.parametrize(
    "change, field",
    [
        (["--limit", "32"], "preprocessing"),  # another training split: another input normalisation
        (["--dataset", "digits28"], "preprocessing"),  # another input size
    ],
)
def test_a_config_change_needs_overwrite(two_versions, tmp_path, change, field):
    repo = tmp_path / "models"
    shutil.copytree(two_versions["repo"], repo)
    before = _files(repo)
    args = [a for a in TINY if a not in ("--limit", "64")] + change
    proc = run_cli("train", "mlp-digits", *args, "--out", str(repo), "--runs", str(tmp_path / "runs"))
    line = _one_error_line(proc)
    assert f"differs in {field}" in line and "--out runs/models" in line and "--overwrite" in line
    assert _files(repo) == before
    assert not (tmp_path / "runs" / "mlp-digits" / "checkpoints").exists()  # refused before training


@pytest.fixture
def passing_repo(tmp_path):
    """A repository holding a copy of the committed mlp-digits, which meets its bar (never the
    committed folder itself)."""
    repo = tmp_path / "models"
    shutil.copytree(ROOT_MODELS / "mlp-digits", repo / "mlp-digits")
    return repo


@pytest.mark.parametrize("experiment, code", [([], 1), (["--experiment"], 0)])
def test_a_missed_bar_never_supersedes_a_passing_version(passing_repo, tmp_path, experiment, code):
    before = _files(passing_repo)
    runs = tmp_path / "runs"
    # No --limit: the committed model was trained on the whole split, so the config.json is the same.
    args = [a for a in TINY if a not in ("--limit", "64")]
    proc = run_cli("train", "mlp-digits", *args, "--out", str(passing_repo), "--runs", str(runs), *experiment)
    assert proc.returncode == code, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "misses its quality bar: test_accuracy=" in lines[0], proc.stderr
    assert "not exported" in lines[0] and "mlp-digits/1 meets its bars" in lines[0]
    checkpoint = runs / "mlp-digits" / "checkpoints" / "last.pt"
    assert f"python -m training export {checkpoint} --out {runs / 'models'}" in lines[0]
    assert _files(passing_repo) == before  # no version 2, no staging folder, config untouched
    assert checkpoint.is_file() and (runs / "mlp-digits" / "curves.png").is_file()


def test_build_checks_every_version_before_training(passing_repo, tmp_path):
    before = _files(passing_repo)
    proc = run_cli(
        "build",
        "--only",
        "lenet5-digits,mlp-digits",
        "--version",
        "1",
        *TINY,
        "--out",
        str(passing_repo),
        "--runs",
        str(tmp_path / "runs"),
    )
    assert "mlp-digits/1 already exists" in _one_error_line(proc)
    assert _files(passing_repo) == before and not (tmp_path / "runs").exists()  # lenet5 never trained
