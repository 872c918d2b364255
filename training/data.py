"""Datasets for the trainer: built-in tasks that need no download, and loaders for users' files.

Built in (nothing is downloaded, ever):

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images).
* ``digits28``: the same digits resized to 28x28, for the CNNs and generators written for MNIST.
* ``shapes``: a generated 3x32x32 colour task whose class is the geometric shape, with colour,
  size, position, rotation, noise and a distractor blob as nuisance variables.

Loaders for the real formats users bring (``root`` required):

* ``mnist``: the four IDX files (optionally gzipped); also fits Fashion-MNIST/KMNIST via ``labels``.
* ``cifar10``: the CIFAR-10 "python version" pickle batches.
* ``image-folder``: ``root/<class_name>/*.png|jpg|jpeg|bmp``.

Every bundle holds float32 images in [0, 1] (not normalised) and int64 labels; the train split's
per-channel mean/std travel with it so that the exporter can record the normalisation the model was
trained with. Every problem a user can cause raises :class:`DataError` naming the path and the fault.
"""

from __future__ import annotations

import gzip
import math
import pickle
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import TensorDataset

__all__ = [
    "SHAPE_LABELS",
    "DataError",
    "DatasetBundle",
    "add_noise",
    "dataset_summaries",
    "generate_shapes",
    "list_datasets",
    "load_dataset",
    "make_augment",
    "normalize",
    "read_idx",
]


class DataError(ValueError):
    """A data problem the user can fix: bad name, option, path or file. The message says which."""


@dataclass
class DatasetBundle:
    """Three splits of one dataset plus what the trainer and exporter need to know about it."""

    name: str
    train: TensorDataset  # (x float32 in [0, 1], y int64); not normalised
    val: TensorDataset
    test: TensorDataset
    labels: list[str]
    input_shape: tuple[int, ...]  # per example, e.g. (1, 28, 28)
    mean: tuple[float, ...]  # per channel, of the train split
    std: tuple[float, ...]
    description: str
    chance_accuracy: float  # what always answering the train split's majority class scores
    tokenizer: Any = None  # token-input datasets: the training.text.CharTokenizer of the ids

    @property
    def num_classes(self) -> int:
        return len(self.labels)


# ----------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class _Spec:
    loader: Callable[..., _Raw]
    options: tuple[str, ...]
    needs_root: bool
    summary: str


@dataclass
class _Raw:
    """What a loader returns before splitting; ``test_x`` is set where the format has a fixed test set."""

    x: Tensor
    y: Tensor
    labels: list[str]
    description: str
    test_x: Tensor | None = None
    test_y: Tensor | None = None


_DATASETS: dict[str, _Spec] = {}


def _register(
    name: str, *, options: tuple[str, ...] = (), needs_root: bool = False, summary: str
) -> Callable[[Callable[..., _Raw]], Callable[..., _Raw]]:
    def wrap(fn: Callable[..., _Raw]) -> Callable[..., _Raw]:
        _DATASETS[name] = _Spec(fn, options, needs_root, summary)
        return fn

    return wrap


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`; the built-in ones (no ``root`` needed) first. The
    token-input datasets are training.sequence_data's (``all_datasets`` there lists both)."""
    return list(_DATASETS)


def dataset_summaries() -> dict[str, str]:
    """Name -> one line on what it holds (and, for the file-based ones, that they need ``root``)."""
    return {
        name: spec.summary + (" (--data-root)" if spec.needs_root else "") for name, spec in _DATASETS.items()
    }


def load_dataset(
    name: str,
    *,
    seed: int = 0,
    root: str | Path | None = None,
    limit: int | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    **options: Any,
) -> DatasetBundle:
    """Load ``name`` and split it into train/val/test, fixed by ``seed``.

    ``root`` is required by the file-based datasets and ignored by the built-in ones. ``limit``
    caps the train split (val and test shrink in proportion) for quick runs. Where the format ships
    an official test set (mnist, cifar10) that set is the test split, ``test_fraction`` is unused
    and val is carved from the official train set. Splits are stratified by class, so any prefix
    of a split (which is what ``limit`` takes) keeps the class proportions.
    """
    spec = _DATASETS.get(name)
    if spec is None:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(_DATASETS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    for label, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(frac, int | float) or not 0.0 <= frac < 1.0:
            raise DataError(f"{label} must be in [0, 1), got {frac!r}")
    if val_fraction + test_fraction >= 1.0:
        raise DataError(
            f"val_fraction + test_fraction must leave a train split, got {val_fraction} + {test_fraction}"
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive integer or None, got {limit!r}")
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        accepted = ", ".join(spec.options) or "none"
        raise DataError(f"dataset {name!r} got unknown option(s) {', '.join(unknown)}; accepted: {accepted}")

    kwargs = dict(options)
    if spec.needs_root:
        kwargs["root"] = _check_root(name, root)
    else:
        kwargs["seed"] = seed
    raw = spec.loader(**kwargs)

    if raw.test_x is not None and raw.test_y is not None:
        tr, va, _ = _stratified_split(raw.y.numpy(), seed, val_fraction, 0.0)
        te = _stratified_order(raw.test_y.numpy(), seed + 1)
        parts = [(raw.x, raw.y, tr), (raw.x, raw.y, va), (raw.test_x, raw.test_y, te)]
    else:
        tr, va, te = _stratified_split(raw.y.numpy(), seed, val_fraction, test_fraction)
        parts = [(raw.x, raw.y, tr), (raw.x, raw.y, va), (raw.x, raw.y, te)]

    if limit is not None and limit < len(tr):
        # Val/test keep their size relative to train so a tiny run still evaluates on a few examples.
        ratio = limit / len(tr)
        parts = [
            (x, y, idx[: limit if i == 0 else math.ceil(len(idx) * ratio)])
            for i, (x, y, idx) in enumerate(parts)
        ]
    (trx, tr_y), (vax, va_y), (tex, te_y) = [(x[idx], y[idx]) for x, y, idx in parts]
    if len(tr_y) == 0:
        raise DataError(f"dataset {name!r}: the train split is empty")

    mean, std = _channel_stats(trx)
    counts = torch.bincount(tr_y, minlength=len(raw.labels))
    chance = float(counts.max()) / len(tr_y)
    description = (
        f"{raw.description} Splits (seed {seed}): train {len(tr_y)}, val {len(va_y)}, test {len(te_y)}."
    )
    return DatasetBundle(
        name=name,
        train=TensorDataset(trx, tr_y),
        val=TensorDataset(vax, va_y),
        test=TensorDataset(tex, te_y),
        labels=list(raw.labels),
        input_shape=tuple(trx.shape[1:]),
        mean=mean,
        std=std,
        description=description,
        chance_accuracy=chance,
    )


def _check_root(name: str, root: str | Path | None) -> Path:
    if root is None:
        raise DataError(f"dataset {name!r} reads files: root is required (the folder that holds them)")
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"dataset {name!r}: root {path} does not exist")
    if not path.is_dir():
        raise DataError(f"dataset {name!r}: root {path} is not a directory")
    return path


# ----------------------------------------------------------------------------------------------
# Splits and statistics


def _split_rng(seed: int) -> np.random.Generator:
    # A stream of its own, so that generating ``shapes`` from the same seed does not correlate
    # with how it is split.
    return np.random.default_rng([seed, 0x5917])


def _interleave(groups: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Merge per-class index lists so that every prefix holds the classes in proportion.

    Each example's key is its (jittered) relative position in its class; sorting by the key
    deals the classes out like cards, which keeps ``limit``'s prefixes stratified.
    """
    if not groups or sum(len(g) for g in groups) == 0:
        return np.zeros(0, dtype=np.int64)
    keys = [(np.arange(len(g)) + rng.random(len(g))) / len(g) for g in groups if len(g)]
    order = np.argsort(np.concatenate(keys), kind="stable")
    return np.concatenate([g for g in groups if len(g)])[order].astype(np.int64)


def _stratified_split(
    y: np.ndarray, seed: int, val_fraction: float, test_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = _split_rng(seed)
    train, val, test = [], [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = round(len(idx) * test_fraction)
        n_val = round(len(idx) * val_fraction)
        test.append(idx[:n_test])
        val.append(idx[n_test : n_test + n_val])
        train.append(idx[n_test + n_val :])
    return _interleave(train, rng), _interleave(val, rng), _interleave(test, rng)


def _stratified_order(y: np.ndarray, seed: int) -> np.ndarray:
    rng = _split_rng(seed)
    return _interleave([rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)], rng)


def _channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # float64 because summing ~10^8 float32 pixels (CIFAR) loses digits.
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, unbiased=False)
    # A constant channel would divide by zero when normalising; 1.0 leaves it merely centred.
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return tuple(mean.tolist()), tuple(std.tolist())


# ----------------------------------------------------------------------------------------------
# Built-in: scikit-learn digits


def _digits_arrays() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits  # deferred: scikit-learn is slow to import

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # pixel values are 0..16
    return x, torch.from_numpy(d.target.astype(np.int64))


_DIGIT_LABELS = [str(i) for i in range(10)]


@_register("digits", summary="scikit-learn's bundled 8x8 handwritten digits, 1x8x8, 10 classes")
def _load_digits(*, seed: int) -> _Raw:
    x, y = _digits_arrays()
    return _Raw(x, y, _DIGIT_LABELS, "scikit-learn handwritten digits, 1x8x8, 10 classes (chance 10%).")


@_register("digits28", summary="the same digits resized to 1x28x28 for MNIST-sized models")
def _load_digits28(*, seed: int) -> _Raw:
    x, y = _digits_arrays()
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
    return _Raw(
        x.clamp_(0.0, 1.0),  # interpolation can overshoot by float error; the contract is [0, 1]
        y,
        _DIGIT_LABELS,
        "scikit-learn handwritten digits resized bilinearly to 1x28x28, 10 classes (chance 10%).",
    )


# ----------------------------------------------------------------------------------------------
# Built-in: generated shapes

SHAPE_LABELS = ["circle", "square", "triangle", "cross", "ring", "star"]
_SHAPE_SIZE = 32


def _shape_sdf(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) of shape ``kind`` in local units where the radius is ~1.

    The distances are exact or close enough for a one-pixel anti-aliased edge, which is all they
    are used for. Each shape reaches about radius 1 so that size alone does not give it away.
    """
    if kind == 0:  # circle
        return np.hypot(u, v) - 0.9
    if kind == 1:  # square (any rotation, so it also covers "diamond")
        return np.maximum(np.abs(u), np.abs(v)) - 0.7
    if kind == 2:  # equilateral triangle, circumradius 1 -> inradius 0.5
        d = None
        for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            side = u * np.cos(a) + v * np.sin(a) - 0.5
            d = side if d is None else np.maximum(d, side)
        return d
    if kind == 3:  # plus-shaped cross: union (min) of two bars
        bar_h = np.maximum(np.abs(u) - 0.95, np.abs(v) - 0.3)
        bar_v = np.maximum(np.abs(u) - 0.3, np.abs(v) - 0.95)
        return np.minimum(bar_h, bar_v)
    if kind == 4:  # ring: a circle with a hole, the same outline as the circle
        return np.abs(np.hypot(u, v) - 0.67) - 0.25
    if kind == 5:  # five-pointed star: radius zig-zags between 0.45 and 1 with the angle
        t = np.mod(np.arctan2(v, u) * (5 / (2 * np.pi)), 1.0)
        reach = 0.45 + 0.55 * np.abs(2 * t - 1)
        return np.hypot(u, v) - reach
    raise AssertionError(kind)


def _contrasting_colours(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random background and foreground colours that differ in hue *and* brightness.

    Both are uniform over RGB so colour carries no class information; pairs too close to see the
    shape (RGB distance < 0.45 or luminance gap < 0.15) are redrawn, and the rare stubborn rest
    get the complementary colour.
    """
    lum = np.array([0.299, 0.587, 0.114])
    bg = rng.random((n, 3))
    fg = rng.random((n, 3))
    for _ in range(20):
        bad = (np.linalg.norm(fg - bg, axis=1) < 0.45) | (np.abs((fg - bg) @ lum) < 0.15)
        if not bad.any():
            break
        fg[bad] = rng.random((int(bad.sum()), 3))
    bad = (np.linalg.norm(fg - bg, axis=1) < 0.45) | (np.abs((fg - bg) @ lum) < 0.15)
    fg[bad] = 1.0 - bg[bad]
    return bg, fg


def generate_shapes(
    n_per_class: int = 1200, *, seed: int = 0, noise: float = 0.05, distractor: bool = True
) -> tuple[Tensor, Tensor]:
    """Generate the ``shapes`` images ``(N, 3, 32, 32)`` float32 in [0, 1] and labels ``(N,)`` int64.

    Per image: shape radius 6-12 px, mild aspect jitter (0.85-1.15 per axis), any rotation, any
    position that keeps it in frame, random colours on a random background with a faint random
    gradient, a Gaussian colour blob under the shape, and pixel noise. Drawing is vectorised per
    class through signed-distance masks, so the default 7200 images take well under a second.
    """
    size = _SHAPE_SIZE
    n = n_per_class * len(SHAPE_LABELS)
    rng = np.random.default_rng([seed, 0x54A9E5])
    # Every random draw is made up-front for all images, so the output depends only on the seed.
    radius = rng.uniform(6.0, 12.0, n)
    margin = radius + 1.0
    cx = margin + rng.random(n) * (size - 1 - 2 * margin)
    cy = margin + rng.random(n) * (size - 1 - 2 * margin)
    theta = rng.uniform(0.0, 2 * np.pi, n)
    aspect = rng.uniform(0.85, 1.15, (n, 2))
    bg, fg = _contrasting_colours(rng, n)
    grad_dir = rng.uniform(0.0, 2 * np.pi, n)
    grad_amp = rng.uniform(0.0, 0.15, n)
    blob_xy = rng.uniform(0.0, size - 1, (n, 2))
    blob_sigma = rng.uniform(1.5, 3.0, n)
    blob_colour = rng.random((n, 3))
    blob_alpha = rng.uniform(0.6, 0.95, n) * distractor
    pixel_noise = rng.standard_normal((n, 3, size, size), dtype=np.float32)  # float32: 4x faster

    coord = np.arange(size, dtype=np.float32)
    gy, gx = np.meshgrid(coord, coord, indexing="ij")
    gx, gy = gx[None], gy[None]
    out = np.empty((n, 3, size, size), dtype=np.float32)
    labels = np.repeat(np.arange(len(SHAPE_LABELS)), n_per_class)
    for kind in range(len(SHAPE_LABELS)):
        s = slice(kind * n_per_class, (kind + 1) * n_per_class)

        def col(a: np.ndarray, s: slice = s) -> np.ndarray:
            return a[s].astype(np.float32)[:, None, None]

        dx, dy = gx - col(cx), gy - col(cy)
        cos, sin = col(np.cos(theta)), col(np.sin(theta))
        r = col(radius)
        u = (cos * dx + sin * dy) / (r * col(aspect[:, 0]))
        v = (-sin * dx + cos * dy) / (r * col(aspect[:, 1]))
        # sdf * radius is the distance in pixels; a one-pixel ramp anti-aliases the edge.
        alpha = np.clip(0.5 - _shape_sdf(kind, u, v) * r, 0.0, 1.0)[:, None]

        ramp = (gx - size / 2) * col(np.cos(grad_dir)) + (gy - size / 2) * col(np.sin(grad_dir))
        img = bg[s].astype(np.float32)[:, :, None, None] + (col(grad_amp) * ramp / size)[:, None]
        d2 = (gx - col(blob_xy[:, 0])) ** 2 + (gy - col(blob_xy[:, 1])) ** 2
        blob = (col(blob_alpha) * np.exp(-d2 / (2 * col(blob_sigma) ** 2)))[:, None]
        img = img * (1 - blob) + blob_colour[s].astype(np.float32)[:, :, None, None] * blob
        img = img * (1 - alpha) + fg[s].astype(np.float32)[:, :, None, None] * alpha
        out[s] = img
    out += pixel_noise * np.float32(noise)
    np.clip(out, 0.0, 1.0, out=out)
    return torch.from_numpy(out), torch.from_numpy(labels.astype(np.int64))


@_register(
    "shapes",
    options=("n_per_class", "noise", "distractor"),
    summary="generated 3x32x32 colour shapes (6 classes); colour/size/position/rotation are nuisances",
)
def _load_shapes(*, seed: int, n_per_class: int = 1200, noise: float = 0.05, distractor: bool = True) -> _Raw:
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 1:
        raise DataError(f"shapes: n_per_class must be a positive integer, got {n_per_class!r}")
    if not isinstance(noise, int | float) or not 0.0 <= noise <= 1.0:
        raise DataError(f"shapes: noise must be a standard deviation in [0, 1], got {noise!r}")
    x, y = generate_shapes(n_per_class, seed=seed, noise=float(noise), distractor=bool(distractor))
    k = len(SHAPE_LABELS)
    return _Raw(
        x,
        y,
        list(SHAPE_LABELS),
        f"Generated colour shapes, 3x32x32, {k} balanced classes ({', '.join(SHAPE_LABELS)}); "
        f"chance accuracy 1/{k} = {100 / k:.1f}%. The class is the shape only: colours, background "
        "gradient, size, aspect, position, rotation, a distractor blob and pixel noise are random.",
    )


# ----------------------------------------------------------------------------------------------
# MNIST IDX files

_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        # gzip reports truncation as EOFError and damage as BadGzipFile/zlib.error.
        raise DataError(f"{path}: cannot read file: {exc}") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format; ``.gz`` is decompressed) and check it against its header.

    The header is two zero bytes, a type code, the number of dimensions, then each dimension as a
    big-endian uint32; the data must fill exactly the bytes those promise.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: not an IDX file: {len(raw)} bytes, shorter than the 4-byte magic")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(
            f"{path}: bad IDX magic 0x{raw[:4].hex()} (expected 0x0000, a type code of "
            "08/09/0b/0c/0d/0e and a dimension count); is this an MNIST file?"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header: expected {header} bytes, got {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(
            f"{path}: IDX file {what}: header says shape {dims} of {dtype.name}, "
            f"so expected {expected} bytes, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find_mnist_file(root: Path, stem: str) -> Path:
    # Plain or gzipped, with the official '-idx' names or the '.idx' spelling some mirrors use,
    # directly in root or in torchvision's MNIST/raw layout.
    names = [stem, stem.replace("-idx", ".idx")]
    for folder in (root, root / "MNIST" / "raw", root / "raw"):
        for name in names:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
    raise DataError(f"mnist: {stem} (or {stem}.gz) not found in {root}")


def _mnist_pair(root: Path, prefix: str, num_classes: int) -> tuple[Tensor, Tensor]:
    img_path = _find_mnist_file(root, f"{prefix}-images-idx3-ubyte")
    lbl_path = _find_mnist_file(root, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{img_path}: expected 3-D uint8 images, got shape {images.shape} of {images.dtype}")
    if labels.ndim != 1:
        raise DataError(f"{lbl_path}: expected 1-D labels, got shape {labels.shape}")
    if len(labels) != len(images):
        raise DataError(f"{lbl_path}: {len(labels)} labels for {len(images)} images in {img_path.name}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{lbl_path}: labels range {labels.min()}..{labels.max()}, expected 0..{num_classes - 1}"
        )
    x = torch.from_numpy(images.copy()).unsqueeze(1).float().div_(255.0)
    return x, torch.from_numpy(labels.astype(np.int64))


@_register(
    "mnist",
    options=("labels",),
    needs_root=True,
    summary="MNIST IDX files (also Fashion-MNIST with labels=...), 1x28x28",
)
def _load_mnist(*, root: Path, labels: Sequence[str] | None = None) -> _Raw:
    names = [str(i) for i in range(10)] if labels is None else [str(s) for s in labels]
    if len(names) < 2 or isinstance(labels, str):
        raise DataError(f"mnist: labels must be a list of at least two class names, got {labels!r}")
    x, y = _mnist_pair(root, "train", len(names))
    tx, ty = _mnist_pair(root, "t10k", len(names))
    if x.shape[1:] != tx.shape[1:]:
        raise DataError(f"mnist: train images are {tuple(x.shape[2:])} but test images {tuple(tx.shape[2:])}")
    h, w = x.shape[2:]
    return _Raw(
        x,
        y,
        names,
        f"MNIST-format IDX files from {root}, 1x{h}x{w}, {len(names)} classes; the official test set "
        "is the test split.",
        tx,
        ty,
    )


# ----------------------------------------------------------------------------------------------
# CIFAR-10 pickle batches

# Only what numpy arrays (and Python 3's encoding of bytes) need: a batch file cannot run code.
_PICKLE_ALLOWED = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # Files pickled by numpy 1.x (the official ones) name numpy.core, which numpy 2 renamed.
        if module.startswith("numpy.core."):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"cifar10: {path.name} not found in {path.parent}")
    try:
        with path.open("rb") as f:
            # latin1 decodes the Python 2 strings of the official files the way numpy expects.
            obj = _SafeUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # pickle raises a zoo of types on damaged input
        raise DataError(f"{path}: not a readable CIFAR-10 pickle: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _cifar_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_pickle(path)
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path}: missing 'data' or 'labels' (keys: {sorted(batch)})")
    data, labels = batch["data"], np.asarray(batch["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {shape}")
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {labels.size} labels for {len(data)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels range {labels.min()}..{labels.max()}, expected 0..{num_classes - 1}")
    return data, labels


def _cifar_tensors(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[Tensor, Tensor]:
    data = np.concatenate([d for d, _ in parts])
    labels = np.concatenate([lab for _, lab in parts]).astype(np.int64)
    # Rows store the 1024 red, then green, then blue values of a 32x32 image, row-major.
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32)).float().div_(255.0)
    return x, torch.from_numpy(labels)


@_register("cifar10", needs_root=True, summary="CIFAR-10 python pickle batches, 3x32x32, 10 classes")
def _load_cifar10(*, root: Path) -> _Raw:
    # Accept the tarball's folder itself or the folder it was extracted into.
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    meta = _load_pickle(folder / "batches.meta")
    names = meta.get("label_names")
    if not isinstance(names, list) or len(names) < 2:
        raise DataError(f"{folder / 'batches.meta'}: 'label_names' must be a list of class names")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    train = [_cifar_batch(folder / f"data_batch_{i}", len(names)) for i in range(1, 6)]
    x, y = _cifar_tensors(train)
    tx, ty = _cifar_tensors([_cifar_batch(folder / "test_batch", len(names))])
    return _Raw(
        x,
        y,
        names,
        f"CIFAR-10 batches from {folder}, 3x32x32, {len(names)} classes; the official test batch is "
        "the test split.",
        tx,
        ty,
    )


# ----------------------------------------------------------------------------------------------
# Image folder

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


@_register(
    "image-folder",
    options=("image_size", "channels"),
    needs_root=True,
    summary="root/<class_name>/*.png|jpg|jpeg|bmp, resized to image_size, 1 or 3 channels",
)
def _load_image_folder(*, root: Path, image_size: int = 32, channels: int = 3) -> _Raw:
    from PIL import Image  # deferred: only this loader needs Pillow

    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 4 <= image_size <= 1024:
        raise DataError(f"image-folder: image_size must be an integer in 4..1024, got {image_size!r}")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise DataError(f"image-folder: channels must be 1 or 3, got {channels!r}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"image-folder: {root} has no class sub-folders (expected root/<class_name>/*.png)")
    mode = "L" if channels == 1 else "RGB"
    arrays: list[np.ndarray] = []
    targets: list[int] = []
    for label, folder in enumerate(class_dirs):
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
        if not files:
            raise DataError(
                f"image-folder: class folder {folder} holds no images ({', '.join(sorted(_IMAGE_SUFFIXES))})"
            )
        for file in files:
            try:
                with Image.open(file) as im:
                    # Bilinear resampling in Pillow filters when shrinking, so small sizes don't alias.
                    im = im.convert(mode).resize((image_size, image_size), Image.Resampling.BILINEAR)
                    arr = np.asarray(im, dtype=np.uint8)
            except Exception as exc:  # Pillow raises OSError, ValueError, DecompressionBombError, ...
                raise DataError(f"image-folder: cannot read image {file}: {exc}") from None
            arrays.append(arr.reshape(image_size, image_size, channels))
            targets.append(label)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
    names = [p.name for p in class_dirs]
    return _Raw(
        x,
        torch.tensor(targets, dtype=torch.int64),
        names,
        f"Image folder {root}, {len(targets)} images resized to {channels}x{image_size}x{image_size}, "
        f"{len(names)} classes ({', '.join(names)}).",
    )


# ----------------------------------------------------------------------------------------------
# Normalisation, augmentation, noise


def normalize(x: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """``(x - mean) / std`` per channel: dim 1 of ``(B, C, H, W)`` or per feature of ``(B, F)``.

    ``mean``/``std`` hold one value per channel (or a single value for all).
    """
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(-1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(-1)
    if x.dim() < 2:
        raise DataError(f"normalize expects a batch (B, C, ...) or (B, F), got shape {tuple(x.shape)}")
    for label, t in (("mean", m), ("std", s)):
        if t.numel() not in (1, x.shape[1]):
            raise DataError(f"normalize: {label} has {t.numel()} values for {x.shape[1]} channels")
    view = (1, -1) + (1,) * (x.dim() - 2)
    return (x - m.reshape(view)) / s.reshape(view)


_AUGMENTS = ("none", "shift", "shift-flip")


def make_augment(name: str | None) -> Callable[[Tensor, torch.Generator], Tensor] | None:
    """A batch augmentation ``(x (B, C, H, W), generator) -> x``, or None for no augmentation.

    * ``shift``: every image moves by its own random offset of up to 2 px on each axis (digits);
    * ``shift-flip``: that, plus a random horizontal flip (shapes, CIFAR, photos).

    Exposed border is filled with the edge pixels: zero for digits, the background colour for
    shapes, so the shift introduces no black bars the model could learn.
    """
    if name is None or name == "none":
        return None
    if name not in _AUGMENTS:
        raise DataError(f"unknown augmentation {name!r}; known: {', '.join(_AUGMENTS)}")
    flip = name == "shift-flip"

    def augment(x: Tensor, generator: torch.Generator) -> Tensor:
        return _shift(x, generator, max_shift=2, flip=flip)

    return augment


def _shift(x: Tensor, generator: torch.Generator, *, max_shift: int, flip: bool) -> Tensor:
    if x.dim() != 4:
        raise DataError(f"augmentation expects images (B, C, H, W), got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    # Draw on the generator's device (CPU generators are the norm), then move: a CPU generator
    # cannot sample on CUDA.
    offsets = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator, device=generator.device)
    dy, dx = offsets.to(x.device)
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    # One gather for the whole batch: each image reads its own shifted window of the padded copy.
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, None, :]
    out = padded.gather(2, rows.expand(b, x.shape[1], h, padded.shape[3]))
    out = out.gather(3, cols.expand(b, x.shape[1], h, w))
    if flip:
        mask = torch.rand(b, generator=generator, device=generator.device).to(x.device) < 0.5
        out = torch.where(mask[:, None, None, None], out.flip(-1), out)
    return out


def add_noise(x: Tensor, std: float, generator: torch.Generator | None = None) -> Tensor:
    """``x`` plus Gaussian noise of standard deviation ``std``, clamped to [0, 1] (denoising AE input)."""
    if std < 0:
        raise DataError(f"noise std must be >= 0, got {std}")
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
    return (x + std * noise).clamp_(0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Two unpaired stroke domains made from one set of images (the CycleGAN's data)


def _dilate(x: Tensor) -> Tensor:
    return F.max_pool2d(x, 3, stride=1, padding=1)  # grey dilation by a 3x3 square


def _erode(x: Tensor) -> Tensor:
    return -F.max_pool2d(-x, 3, stride=1, padding=1)  # grey erosion: a min filter


# Domain name -> how an image of that domain is made from a source image (B, C, H, W) in [0, 1]. One
# 3x3 step each way: on digits28 two steps cost the zoo's LeNet-5 a third of its accuracy (measured:
# 0.99 on the digits, 0.96 eroded, 0.97 dilated, 0.65 eroded twice, 0.78 dilated twice).
STROKE_DOMAINS: dict[str, Callable[[Tensor], Tensor]] = {"thin": _erode, "thick": _dilate}


def stroke_thickness(x: Tensor, threshold: float = 0.5) -> Tensor:
    """Per image (B, 1, H, W) in [0, 1]: the mean chessboard distance from an ink pixel (> ``threshold``)
    to the background, in pixels: 1 for hairlines, about a quarter of the width for wide strokes.

    Counted by erosion: a pixel at distance d survives d - 1 erosions by the 3x3 square, so the mean
    distance is 1 + (ink left after each erosion, summed) / ink. An image without ink scores 0.
    """
    ink = (x > threshold).to(x.dtype)
    area = ink.sum(dim=(1, 2, 3))
    total, layer = area.clone(), ink
    for _ in range(max(x.shape[-2:]) // 2):  # nothing survives more erosions than half the side
        layer = _erode(layer)
        total += layer.sum(dim=(1, 2, 3))
    return torch.where(area > 0, total / area.clamp(min=1), torch.zeros_like(area))


def unpaired_domains(
    split: TensorDataset, domains: tuple[str, str], seed: int
) -> tuple[TensorDataset, TensorDataset]:
    """Split ``split``'s images into two halves (stratified by class, so both halves hold every class
    alike) and make each half one of ``domains`` (names in STROKE_DOMAINS): no image appears in both,
    so a model trained on them never sees a pair. Labels travel with their images."""
    unknown = [d for d in domains if d not in STROKE_DOMAINS]
    if unknown:
        raise DataError(f"unknown stroke domain(s) {unknown}; known: {', '.join(STROKE_DOMAINS)}")
    x, y = split.tensors
    rng = np.random.default_rng([seed, 0xC7C1E])
    halves: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    for c in np.unique(y.numpy()):
        idx = rng.permutation(np.flatnonzero(y.numpy() == c))
        cut = (len(idx) + rng.integers(2)) // 2  # odd classes give the extra image to either half
        halves[0].append(idx[:cut])
        halves[1].append(idx[cut:])
    parts = []
    for domain, groups in zip(domains, halves, strict=True):
        idx = torch.from_numpy(_interleave(groups, rng))
        parts.append(TensorDataset(STROKE_DOMAINS[domain](x[idx]).clamp_(0.0, 1.0), y[idx]))
    return parts[0], parts[1]
