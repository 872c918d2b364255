"""The zoo's exported digit classifier as the judge of generated images, and the Fréchet distance in
its feature space.

The judge runs in onnxruntime on the version the server serves. Besides its class probabilities it
returns the input of its last layer (its penultimate features: LeNet-5's 84 F6 units), where the
Fréchet distance between two sets of images is measured, as FID (Heusel et al. 2017) does with
Inception's pool features: fit a Gaussian to each set's features and compare the two,
``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``. A classifier trained on these digits sees
what makes a digit here; Inception never saw 28x28 greyscale strokes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import scipy.linalg
import torch

from app.core.repository_format import CONFIG_FILE, ModelConfig, default_version
from training.data import normalize


class Judge:
    """``judge(images)`` -> (probabilities (N, K), penultimate features (N, F)) for ``images``
    (N, C, H, W) in [0, 1], with the classifier's own pre-processing. With ``labels``, the judge's
    classes must be those."""

    def __init__(self, repository: Path, name: str, labels: list[str] | None = None) -> None:
        model_dir = Path(repository) / name
        if not (model_dir / CONFIG_FILE).is_file():
            raise FileNotFoundError(
                f"judge {name!r} not found in {repository}; build it first (python -m training train {name})"
            )
        self.name = name
        self.config = ModelConfig.model_validate_json((model_dir / CONFIG_FILE).read_text())
        if labels is not None and self.config.labels != labels:  # its answers are compared with labels
            raise ValueError(f"judge {name!r} has labels {self.config.labels}; the data has {labels}")
        version = default_version(model_dir, self.config.version)  # the one the server serves
        graph = self.config.graphs["model"]
        proto = onnx.load(str(model_dir / str(version) / graph.file))
        # The penultimate features: the first input of the node that writes the logits.
        logits = proto.graph.output[0].name
        last = next(node for node in proto.graph.node if logits in node.output)
        self.feature_name = last.input[0]
        proto.graph.output.append(
            onnx.helper.make_tensor_value_info(self.feature_name, onnx.TensorProto.FLOAT, None)
        )
        self.session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        self.input_name = graph.inputs[0].name

    @property
    def labels(self) -> list[str]:
        return self.config.labels or []

    def __call__(self, images: torch.Tensor | np.ndarray, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
        pre = self.config.preprocessing
        images = torch.as_tensor(np.asarray(images, np.float32))
        if tuple(images.shape[1:]) != (pre.channels, pre.height, pre.width):
            raise ValueError(f"judge {self.name!r} expects {pre.channels}x{pre.height}x{pre.width} images")
        feed = normalize(images, pre.mean, pre.std).numpy().astype(np.float32)
        probs, features = [], []
        for start in range(0, len(feed), batch):
            logits, feats = self.session.run(None, {self.input_name: feed[start : start + batch]})
            probs.append(torch.softmax(torch.from_numpy(logits), -1).numpy())
            features.append(feats.reshape(len(feats), -1))
        return np.concatenate(probs), np.concatenate(features).astype(np.float64)


def sample_scores(probs: np.ndarray | torch.Tensor) -> dict[str, float]:
    """How digit-like samples are (the judge's mean max-probability) and how many classes they cover
    (mode collapse shows as classes missing or one class's share near 0)."""
    probs = np.asarray(probs)
    counts = np.bincount(probs.argmax(-1), minlength=probs.shape[1])
    return {
        "judge_mean_max_prob": float(probs.max(-1).mean()),
        "judge_classes_present": float((counts > 0).sum()),
        "judge_min_class_share": float(counts.min() / len(probs)),
    }


def class_accuracy(
    probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, prefix: str
) -> dict[str, float]:
    """The judge's accuracy against ``labels`` (the classes asked for), overall and on the worst class."""
    labels = np.asarray(labels)
    hits = np.asarray(probs).argmax(-1) == labels
    per_class = [float(hits[labels == c].mean()) for c in np.unique(labels)]
    return {f"{prefix}accuracy": float(hits.mean()), f"{prefix}worst_class_accuracy": min(per_class)}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (N_a, F) and (N_b, F)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real  # rounding leaves tiny imaginary parts
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))
