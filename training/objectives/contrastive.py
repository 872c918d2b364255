"""The CLIP objective: images and their captions, a symmetric contrastive loss with a learned
temperature; judged by zero-shot classification with held-out prompts and by text-to-image retrieval,
both measured again on the exported graphs through the server's own similarity code
(app/core/embeddings.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from app.core.embeddings import recall_at_k, zero_shot_logits
from app.core.repository_format import CONFIG_FILE, ModelConfig, TextPreprocessing
from training import plots, trainer
from training.captions import (
    ATTRIBUTES,
    RETRIEVAL_TEMPLATES,
    SEEN_RETRIEVAL_TEMPLATE,
    TRAIN_TEMPLATES,
    ZERO_SHOT_TEMPLATES,
    caption,
    caption_batch,
    caption_matches,
    encode_texts,
    prompts,
    retrieval_gallery,
)
from training.data import DatasetBundle
from training.objectives.base import Measured, RecipeObjective, Run, register_objective
from training.objectives.images import _image_preprocessing
from training.trainer import TrainConfig

RECALL_AT = (1, 5, 10)
GALLERY_SEED_OFFSET = 3000  # the gallery's own seed: none of its images is in a training split
EXAMPLE_QUERIES = (0, 53, 106, 151, 202, 262)  # gallery rows shown in retrieval_examples.png
ENCODE_BATCH = 256


def symmetric_info_nce(logits: torch.Tensor, matches: torch.Tensor) -> torch.Tensor:
    """The mean of the image -> text and text -> image cross-entropies of ``logits`` (I, T), each
    row's (column's) target spread evenly over its ``matches`` (I, T, 0/1, at least one per row and
    column). With matches = the identity this is CLIP's loss."""
    image_to_text = -(matches / matches.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    text_to_image = -(matches / matches.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (image_to_text + text_to_image) / 2


class ContrastiveCaptions(trainer.Objective):
    """CLIP's symmetric InfoNCE over a batch of images and one fresh caption per image.

    logits[i, j] = scale * cos(image i, caption j). Each image's softmax over the captions, and each
    caption's over the images, is trained towards the pairs that match: the diagonal, and every other
    pair whose caption names only attributes the image has ("a circle" is true of every circle in the
    batch), so that true descriptions are never pushed apart as negatives. With captions that each
    describe one image this is exactly CLIP's loss.
    """

    def __init__(self, bundle: DatasetBundle, normalize_inputs: bool) -> None:
        super().__init__(bundle, normalize_inputs)
        self.tokenizer = bundle.tokenizer  # the data checked that every caption fits the model's context

    def loss(self, model, x, y, generator):
        if x.dim() == 5:  # minimal pairs (B, 2, C, H, W): both images of a pair in the same batch
            x, y = x.flatten(0, 1), y.flatten(0, 1)
        captions = caption_batch(y, generator)
        ids, mask = encode_texts(self.tokenizer, captions.texts)  # (B, T) each
        image_embeds, text_embeds, scale = model(self.prepare(x), ids, mask)  # (B, D), (B, D), ()
        logits = scale * image_embeds @ text_embeds.T  # (B images, B captions)
        matches = caption_matches(y, y, captions.mentioned).float()  # (B, B), diagonal all 1
        loss = symmetric_info_nce(logits, matches)
        # Whether each image's most similar caption of the batch describes it.
        match_accuracy = matches.gather(1, logits.argmax(1, keepdim=True)).mean()
        return loss, {
            "loss": loss.item(),
            "match_accuracy": match_accuracy.item(),
            "logit_scale": scale.item(),
        }


@dataclass
class Encoders:
    """A dual encoder as two functions, so that one evaluation runs on the PyTorch model and on the
    exported graphs alike. ``images`` takes normalised images (N, C, H, W) and returns unit vectors
    (N, D) and the logit scale per row (N,); ``texts`` takes strings and returns unit vectors."""

    images: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    texts: Callable[[list[str]], np.ndarray]


def _batched(fn: Callable[[np.ndarray], tuple], x: np.ndarray) -> tuple[np.ndarray, ...]:
    parts = [fn(x[i : i + ENCODE_BATCH]) for i in range(0, len(x), ENCODE_BATCH)]
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True))


def torch_encoders(model, tokenizer, max_length: int) -> Encoders:
    @torch.no_grad()
    def images(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        embeds = model.image_encoder(torch.from_numpy(x)).numpy()
        return embeds, np.full(len(x), float(model.scale()), np.float32)

    @torch.no_grad()
    def texts(strings: list[str]) -> np.ndarray:
        ids, mask = encode_texts(tokenizer, strings, max_length)
        return model.text_encoder(ids, mask).numpy()

    return Encoders(lambda x: _batched(images, x), texts)


def onnx_encoders(version_dir: Path, tokenizer, max_length: int) -> Encoders:
    """The exported graphs in ``version_dir`` (onnxruntime, CPU) as :class:`Encoders`."""
    config = ModelConfig.model_validate_json((version_dir.parent / CONFIG_FILE).read_text())
    sessions = {
        role: ort.InferenceSession(
            str(version_dir / config.graphs[role].file), providers=["CPUExecutionProvider"]
        )
        for role in ("image_encoder", "text_encoder")
    }

    def images(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        embeds, scale = sessions["image_encoder"].run(None, {"images": x.astype(np.float32)})
        return embeds, scale

    def texts(strings: list[str]) -> np.ndarray:
        ids, mask = encode_texts(tokenizer, strings, max_length)
        return sessions["text_encoder"].run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[
            0
        ]

    return Encoders(lambda x: _batched(images, x), texts)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass
class Figures:
    metrics: dict[str, float]
    shape_predictions: np.ndarray  # (N,) the headline prompt's zero-shot answer per test image
    queries: list[str]  # one per gallery image
    ranking: np.ndarray  # (G, 10) gallery indices, most similar first


def embedding_figures(encoders: Encoders, bundle: DatasetBundle, prepare, seed: int) -> Figures:
    """Zero-shot accuracy per attribute with the held-out prompts (each template, their mean and
    CLIP's prompt ensemble), and recall@k of held-out queries over the one-per-combination gallery."""
    test_x, test_y = bundle.test.tensors
    image_embeds, scale = encoders.images(prepare(test_x).numpy())
    truth = test_y.numpy()
    metrics: dict[str, float] = {}
    shape_predictions = np.zeros(0)
    for column, (name, _) in enumerate(ATTRIBUTES.items()):
        templates = ZERO_SHOT_TEMPLATES[name]
        label_sets = [encoders.texts(prompts(t, name)) for t in templates]
        accuracies = []
        for i, labels in enumerate(label_sets):
            answer = zero_shot_logits(image_embeds, labels, scale).argmax(1)
            accuracies.append(float((answer == truth[:, column]).mean()))
            if name == "shape" and i == 0:
                shape_predictions = answer
        ensemble = _unit(np.mean(label_sets, axis=0))  # CLIP's prompt ensembling: mean, renormalised
        ensembled = float(
            (zero_shot_logits(image_embeds, ensemble, scale).argmax(1) == truth[:, column]).mean()
        )
        key = "test_zero_shot" if name == "shape" else f"test_zero_shot_{name}"
        if name == "shape":  # the headline: one held-out prompt, as a client would send it
            metrics["test_zero_shot_accuracy"] = accuracies[0]
        metrics[f"{key}_accuracy_mean"] = float(np.mean(accuracies))
        metrics[f"{key}_accuracy_ensemble"] = ensembled

    gallery_x, gallery_y = retrieval_gallery(seed + GALLERY_SEED_OFFSET)
    gallery_embeds, _ = encoders.images(prepare(gallery_x).numpy())
    relevant = np.eye(len(gallery_y), dtype=bool)  # each query names one combination: one image
    rows = gallery_y.numpy()
    queries = [caption(RETRIEVAL_TEMPLATES[0], row) for row in rows]
    query_embeds = encoders.texts(queries)
    for k, value in recall_at_k(query_embeds, gallery_embeds, relevant, RECALL_AT).items():
        metrics[f"test_recall_at_{k}"] = value
    seen = encoders.texts([caption(SEEN_RETRIEVAL_TEMPLATE, row) for row in rows])
    for k, value in recall_at_k(seen, gallery_embeds, relevant, RECALL_AT).items():
        metrics[f"test_recall_at_{k}_seen_template"] = value
    metrics["chance_recall_at_1"] = 1 / len(rows)
    metrics["chance_recall_at_5"] = 5 / len(rows)
    ranking = np.argsort(-(query_embeds @ gallery_embeds.T), axis=1, kind="stable")[:, : max(RECALL_AT)]
    return Figures(metrics, shape_predictions, queries, ranking)


@register_objective("contrastive")
class Contrastive(RecipeObjective):
    """Images and captions -> one embedding space; served as embeddings, zero-shot classification
    and text-to-image retrieval (task "embedding", graphs image_encoder and text_encoder)."""

    task = "embedding"

    def build_loss(self, bundle: DatasetBundle, cfg: TrainConfig) -> trainer.Objective:
        return ContrastiveCaptions(bundle, self.recipe.normalize_inputs)

    def evaluate(self, run: Run) -> Measured:
        metrics, pictures = super().evaluate(run)  # the loss and in-batch match accuracy on the test split
        metrics.pop("test_logit_scale", None)
        tokenizer, max_length = run.bundle.tokenizer, run.model.config.max_len
        figures = embedding_figures(
            torch_encoders(run.model, tokenizer, max_length), run.bundle, run.loss.prepare, run.train_cfg.seed
        )
        metrics.update(figures.metrics)
        metrics["logit_scale"] = float(run.model.scale().detach())
        metrics["chance_accuracy"] = run.bundle.chance_accuracy
        title = f"{self.recipe.name}: zero-shot, prompt {ZERO_SHOT_TEMPLATES['shape'][0]!r}"
        truth = run.bundle.test.tensors[1][:, 0].numpy()
        path = run.out / "zero_shot_confusion_matrix.png"
        pictures["zero_shot_confusion_matrix.png"] = plots.plot_confusion_matrix(
            truth, figures.shape_predictions, run.bundle.labels, path, title=title
        )
        gallery_x, _ = retrieval_gallery(run.train_cfg.seed + GALLERY_SEED_OFFSET)
        shown = list(EXAMPLE_QUERIES)
        ranking = figures.ranking[shown, :5]
        path = run.out / "retrieval_examples.png"
        pictures["retrieval_examples.png"] = plots.plot_retrieval(
            [figures.queries[i] for i in shown],
            gallery_x.numpy(),
            ranking,
            ranking == np.asarray(shown)[:, None],
            path,
            title=f"{self.recipe.name}: text -> image over {len(gallery_x)} held-out images (top 5)",
        )
        return metrics, pictures

    def check_export(self, run: Run, version_dir: Path) -> dict[str, float]:
        """The headline figures again, on the exported graphs."""
        encoders = onnx_encoders(version_dir, run.bundle.tokenizer, run.model.config.max_len)
        figures = embedding_figures(encoders, run.bundle, run.loss.prepare, run.train_cfg.seed)
        keys = ("test_zero_shot_accuracy", "test_recall_at_1", "test_recall_at_5")
        return {f"{key}_onnx": figures.metrics[key] for key in keys}

    def config_fields(self, run: Run) -> dict[str, Any]:
        text = TextPreprocessing(
            tokenizer=run.bundle.tokenizer.to_dict(), max_length=run.model.config.max_len, add_bos=True
        )
        return {
            **super().config_fields(run),
            "preprocessing": _image_preprocessing(run),
            "text_preprocessing": text.model_dump(),
        }

    def notes(self, run: Run) -> list[str]:
        held_out = sorted({t for ts in ZERO_SHOT_TEMPLATES.values() for t in ts} | set(RETRIEVAL_TEMPLATES))
        return [
            f"training caption templates: {list(TRAIN_TEMPLATES)}",
            f"zero-shot prompts (never training captions): {ZERO_SHOT_TEMPLATES}; test_zero_shot_accuracy "
            f"uses {ZERO_SHOT_TEMPLATES['shape'][0]!r}, _mean the mean over the shape templates, _ensemble "
            "CLIP's prompt ensemble (mean embedding of the templates)",
            f"retrieval: one held-out image per attribute combination; queries {list(RETRIEVAL_TEMPLATES)} "
            f"(held out) and {SEEN_RETRIEVAL_TEMPLATE!r} (a training template, _seen_template)",
            f"held-out templates: {held_out}",
            "embeddings are L2-normalised inside both graphs; the image encoder also returns the learned "
            "logit scale per row",
        ]
