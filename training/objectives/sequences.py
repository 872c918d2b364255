"""Objectives on token sequences: RNN and BERT classifiers, the GPT language model, seq2seq translation."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort
import torch

from app.core.kv_cache import KVCache
from app.core.repository_format import CONFIG_FILE, GenerationDefaults, ModelConfig, TextPreprocessing
from app.core.sampling import SamplingParams, select_next_tokens
from training import plots, trainer
from training.bert_data import mlm_bundle
from training.data import DatasetBundle
from training.objectives.base import (
    Measured,
    RecipeObjective,
    Run,
    classifier_figures,
    epoch_logger,
    register_objective,
)
from training.recipes import Recipe
from training.registry import build_model
from training.trainer import TrainConfig


class _TextObjective(RecipeObjective):
    """Token ids in: config.json carries the tokenizer and the longest sequence the graphs take."""

    add_bos: ClassVar[bool] = False
    add_eos: ClassVar[bool] = False

    def config_fields(self, run: Run) -> dict[str, Any]:
        # A model without a position table (an RNN) takes any length: cap it at the data's.
        max_length = run.model.config.context_length or run.bundle.input_shape[0]
        preprocessing = TextPreprocessing(
            tokenizer=run.bundle.tokenizer.to_dict(),
            max_length=max_length,
            add_bos=self.add_bos,
            add_eos=self.add_eos,
        )
        return {**super().config_fields(run), "preprocessing": preprocessing.model_dump()}


@register_objective("sequence_classification")
class SequenceClassification(_TextObjective):
    """Right-padded token ids -> class (the RNNs, which also get each row's length)."""

    task = "classification"

    def build_loss(self, bundle: DatasetBundle, cfg: TrainConfig) -> trainer.Objective:
        return trainer.SequenceClassification(label_smoothing=cfg.label_smoothing)

    def evaluate(self, run: Run) -> Measured:
        metrics, pictures = super().evaluate(run)
        figures, confusion = classifier_figures(run, self.recipe.name)
        figures["padding_max_abs_diff"] = _padding_difference(run)
        return {**metrics, **figures}, {**pictures, **confusion}

    def config_fields(self, run: Run) -> dict[str, Any]:
        return {**super().config_fields(run), "labels": run.bundle.labels}


@torch.no_grad()
def _padding_difference(run: Run, rows: int = 32) -> float:
    """max |logits of a row in a padded batch - logits of the same row run alone|."""
    x = run.bundle.test.tensors[0][:rows]
    lengths = (x != 0).sum(1)
    batched = run.loss.logits(run.model, x)
    worst = 0.0
    for i in range(len(x)):
        alone = run.loss.logits(run.model, x[i : i + 1, : lengths[i]])
        worst = max(worst, float((alone - batched[i : i + 1]).abs().max()))
    return worst


@register_objective("masked_sequence_classification")
class MaskedSequenceClassification(SequenceClassification):
    """BERT: token ids and an attention mask -> class, optionally after masked-LM pre-training
    (``recipe.pretrain``); then it also fine-tunes a from-scratch copy to report what pre-training gained."""

    add_bos = True  # BERT classifies from its bos ([CLS]) position

    def __init__(self, recipe: Recipe) -> None:
        super().__init__(recipe)
        self.pretrained: Measured | None = None  # pre-training's figures and curves, for the report

    def build_loss(self, bundle: DatasetBundle, cfg: TrainConfig) -> trainer.Objective:
        return trainer.MaskedSequenceClassification(label_smoothing=cfg.label_smoothing)

    def pretrain(self, run: Run) -> None:
        """Masked-LM pre-training of ``run.model`` in place on the corpus windows. The run's seed,
        progress and step cap apply to it too."""
        if self.recipe.pretrain is None:
            return
        run_cfg = run.train_cfg
        cfg = dataclasses.replace(
            self.recipe.pretrain, seed=run_cfg.seed, progress=run_cfg.progress, max_steps=run_cfg.max_steps
        )
        tokenizer = run.bundle.tokenizer
        windows = mlm_bundle(
            max_len=run.model.config.context_length, seed=run_cfg.seed, limit=run.limit, tokenizer=tokenizer
        )
        loss = trainer.MaskedLanguageModeling(
            tokenizer.vocab_size, mask_id=tokenizer.mask_id, pad_id=tokenizer.pad_id
        )
        label = f"{self.recipe.name} pre-training"
        result = trainer.fit(run.model, windows, loss, cfg, on_epoch=epoch_logger(label))
        last = result.history[-1]
        metrics = {
            "pretrain_mlm_val_nats": last["val_loss"],
            "pretrain_mlm_val_masked_accuracy": last["val_masked_accuracy"],
            "pretrain_seconds": round(result.seconds, 2),
        }
        title = f"{self.recipe.name}: masked-LM pre-training"
        curves = plots.plot_history(result.history, run.out / "pretrain_curves.png", title=title)
        self.pretrained = metrics, {"pretrain_curves.png": curves}

    def evaluate(self, run: Run) -> Measured:
        metrics, pictures = super().evaluate(run)
        if self.pretrained is None:
            return metrics, pictures
        metrics.update(self.pretrained[0])
        pictures.update(self.pretrained[1])
        scratch = self._accuracy_without_pretraining(run)  # trains: not under no_grad like the rest
        metrics["test_accuracy_without_pretraining"] = scratch
        metrics["pretraining_gain"] = metrics["test_accuracy"] - scratch
        return metrics, pictures

    def _accuracy_without_pretraining(self, run: Run) -> float:
        """Test accuracy of the same model fine-tuned from random weights with the same settings."""
        trainer.seed_everything(run.train_cfg.seed)
        scratch = build_model(self.recipe.model, **run.model_kwargs)
        trainer.fit(scratch, run.bundle, run.loss, dataclasses.replace(run.train_cfg, progress=False))
        return trainer.evaluate(scratch, run.loss, run.bundle.test)["accuracy"]


@register_objective("language_model")
class LanguageModel(_TextObjective):
    """GPT: next-token cross-entropy; served with a full-sequence and a KV-cache step graph."""

    task = "text_generation"
    sample_prompts = ("The ", "If the ", "A list ")

    def build_loss(self, bundle: DatasetBundle, cfg: TrainConfig) -> trainer.Objective:
        return trainer.LanguageModeling()

    def evaluate(self, run: Run) -> Measured:
        metrics, pictures = super().evaluate(run)
        metrics["val_nats_per_token"] = metrics.pop("test_loss")
        metrics["unigram_nats_per_token"] = _unigram_cross_entropy(run.bundle)
        return metrics, pictures

    def notes(self, run: Run) -> list[str]:
        samples = _sample_text(run.model, run.bundle.tokenizer, self.sample_prompts, 120, run.train_cfg.seed)
        return [f"sample (temperature 0.8, top-k 20): {text!r}" for text in samples]

    def config_fields(self, run: Run) -> dict[str, Any]:
        generation = GenerationDefaults(max_new_tokens=200, temperature=0.8, top_k=20)
        fields = {**super().config_fields(run), "generation": generation.model_dump()}
        window = run.model.config.window
        if window is not None:  # the server's cache follows the step graph's ring
            fields["attention"] = window.as_format().model_dump()
        return fields

    def check_export(self, run: Run, version_dir: Path) -> dict[str, float]:
        return {"kv_cache_max_abs_diff": _kv_cache_difference(run.model, version_dir, run.bundle)}


def _unigram_cross_entropy(bundle: DatasetBundle) -> float:
    """Nats per token of the best context-free model: train-split token frequencies scored on the
    held-out windows (add-one smoothing for tokens unseen in training)."""
    vocab = bundle.tokenizer.vocab_size
    train = torch.bincount(bundle.train.tensors[0][:, 1:].flatten(), minlength=vocab).double() + 1
    log_p = (train / train.sum()).log()
    held_out = bundle.test.tensors[0][:, 1:].flatten()
    return float(-log_p[held_out].mean())


@torch.no_grad()
def _sample_text(model, tokenizer, prompts: tuple[str, ...], max_new_tokens: int, seed: int) -> list[str]:
    """A few samples for the report (full-sequence forward, the app's sampling rules)."""
    params = SamplingParams(temperature=0.8, top_k=20)
    rng = np.random.default_rng(seed)
    context = model.config.context_length
    out = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt)
        for _ in range(max_new_tokens):
            logits = model(torch.tensor([ids[-context:]]))[:, -1].numpy()
            ids.append(int(select_next_tokens(logits, params, rng)[0]))
        out.append(tokenizer.decode(ids))
    return out


@torch.no_grad()
def _kv_cache_difference(
    model, version_dir: Path, bundle: DatasetBundle, steps: int = 64, prefill: int = 16
) -> float:
    """max |logits of the ONNX decoder_step graph fed one token at a time with its own KV cache -
    logits of the PyTorch full-sequence forward|, from an empty cache and after a prefill."""
    config = ModelConfig.model_validate_json((version_dir.parent / CONFIG_FILE).read_text())
    graph = config.graphs["decoder_step"]
    session = ort.InferenceSession(str(version_dir / graph.file), providers=["CPUExecutionProvider"])
    tokens = bundle.test.tensors[0][0, : prefill + steps].numpy()  # (prefill + steps,) held-out text
    full = model(torch.from_numpy(tokens)[None]).numpy()[0]  # (T, V)
    worst = 0.0
    for start in (1, prefill):  # empty cache (prompt of one token), then a prefill of `prefill`
        cache = KVCache(graph, window=config.attention)
        logits, *entries = session.run(cache.output_names, cache.empty_feeds(tokens[None, :start]))
        cache.add(entries, [start])
        worst = max(worst, float(np.abs(logits[0] - full[:start]).max()))
        for pos in range(start, start + steps):
            logits, *entries = session.run(cache.output_names, cache.feeds(tokens[None, pos : pos + 1]))
            cache.append(entries)
            worst = max(worst, float(np.abs(logits[0, 0] - full[pos]).max()))
    return worst


@register_objective("seq2seq")
class Seq2Seq(_TextObjective):
    """Transformer encoder-decoder: teacher-forced cross-entropy; exact match measured on the ONNX graphs."""

    task = "seq2seq"
    add_eos = True  # the encoder reads the source up to its eos

    def build_loss(self, bundle: DatasetBundle, cfg: TrainConfig) -> trainer.Objective:
        return trainer.SequenceToSequence(label_smoothing=cfg.label_smoothing)

    def config_fields(self, run: Run) -> dict[str, Any]:
        generation = GenerationDefaults(max_new_tokens=16, temperature=0.0, num_beams=1)
        return {**super().config_fields(run), "generation": generation.model_dump()}

    def check_export(self, run: Run, version_dir: Path) -> dict[str, float]:
        """Held-out exact match, decoded greedily and with beam 4 over the exported graphs."""
        from training.dates import exact_match, translate
        from training.models.seq2seq import onnx_callables

        tokenizer = run.bundle.tokenizer
        src, tgt = run.bundle.test.tensors
        sources = [tokenizer.decode(row) for row in src.tolist()]
        targets = [tokenizer.decode(row[1:]) for row in tgt.tolist()]
        encode, decode = onnx_callables(version_dir)
        greedy = translate(encode, decode, sources, tokenizer)
        beam = translate(encode, decode, sources, tokenizer, beam_size=4)
        return {
            "test_exact_match_greedy_onnx": exact_match(greedy, targets),
            "test_exact_match_beam4_onnx": exact_match(beam, targets),
        }
