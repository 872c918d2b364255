"""Captioned shapes for the CLIP-style dual encoder: generated images whose attributes are known, and
captions written from those attributes with templates (nothing downloaded).

Every image has four attributes: its shape (the ``shapes`` task's six), a named colour, a size and a
horizontal position. The drawing is the ``shapes`` dataset's (training.data.render_shapes); unlike
there, the colour is drawn from a named palette (with jitter) on a neutral grey background, and size
and position come in named classes, so that a caption can say them. A training step captions each
image anew with a random training template (:func:`caption_batch`), so the model sees every image
under many wordings. Templates mention some attributes or all of them; a caption that leaves an
attribute out also describes every other image that agrees on the attributes it names, which
:func:`caption_matches` records for the loss.

Held-out templates (zero-shot prompts such as "a photo of a {shape}", retrieval queries) never appear
as training captions; :data:`ZERO_SHOT_TEMPLATES` and :data:`RETRIEVAL_TEMPLATES` say which they are.
"""

from __future__ import annotations

import itertools
import string
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from app.core.tokenizer import CharTokenizer
from training.data import SHAPE_LABELS, DataError, DatasetBundle, ShapeScenes, _channel_stats, render_shapes

# Named colours (RGB in [0, 1]); every image's colour is one of them plus a little jitter.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.7, 0.15),
    "blue": (0.1, 0.25, 0.95),
    "yellow": (0.95, 0.88, 0.1),
    "purple": (0.58, 0.15, 0.8),
    "orange": (1.0, 0.55, 0.05),
    "white": (0.97, 0.97, 0.97),
    "black": (0.04, 0.04, 0.04),
}
SIZES = ("small", "large")
POSITIONS = ("left", "middle", "right")
# The phrase a caption uses for each position.
WHERE = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
# Attribute columns of a dataset's y, in this order; each holds an index into its names.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": tuple(SHAPE_LABELS),
    "colour": tuple(COLOURS),
    "size": SIZES,
    "position": POSITIONS,
}
_FIELDS = {"shape": "shape", "colour": "colour", "size": "size", "where": "position"}  # template -> column

TRAIN_TEMPLATES = (
    "a {size} {colour} {shape} {where}",
    "{size} {colour} {shape} {where}",
    "there is a {colour} {shape} {where}",
    "the {size} {shape} {where} is {colour}",
    "a {colour} {shape}",
    "{colour} {shape}, {size}",
    "a {size} {shape}",
    "the {shape} is {colour}",
    "a {shape} {where}",
    "a {shape}",
    "it is {colour}",
    "it is {size}",
    "it is {where}",
    "{size} and {colour}",
)
# Filler: a training caption may get up to MAX_PREFIX_WORDS made-up words before it and one after it
# (letters drawn at random, FILLER_LETTERS long), so that the text encoder learns that words it does
# not know say nothing; the held-out prompts' own words ("photo", "image") are such words to it.
FILLER_PROBABILITY = 0.5  # of a prefix; a suffix word comes with half this probability
MAX_PREFIX_WORDS = 3
FILLER_LETTERS = (2, 5)
# Never training captions. Zero-shot prompts per attribute: the answer is the attribute's value whose
# prompt is most similar to the image ("shape" is the reported task).
ZERO_SHOT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "shape": ("a photo of a {shape}", "an image of a {shape}", "a drawing of one {shape}"),
    "colour": ("a photo of something {colour}", "an image of a {colour} object"),
    "size": ("a photo of a {size} object", "an image of something {size}"),
    "position": ("a photo of an object {where}", "an image with something {where}"),
}
# Queries that name all four attributes: each picks out one image of the one-per-combination gallery.
RETRIEVAL_TEMPLATES = ("a photo of a {size} {colour} {shape} {where}",)
# A training template as a query, for comparison with the held-out wording.
SEEN_RETRIEVAL_TEMPLATE = TRAIN_TEMPLATES[0]

# Lower-case letters, space and comma: every template above, and any lower-case prompt a client sends.
CAPTION_CHARACTERS = " ," + string.ascii_lowercase


def caption_tokenizer() -> CharTokenizer:
    return CharTokenizer(chars=list(CAPTION_CHARACTERS))


def template_fields(template: str) -> tuple[str, ...]:
    """The attribute columns a template mentions, e.g. ("colour", "shape")."""
    return tuple(_FIELDS[name] for _, name, _, _ in string.Formatter().parse(template) if name)


def caption(template: str, attributes: np.ndarray) -> str:
    """One image's caption: ``attributes`` is its row of y (indices per ATTRIBUTES column)."""
    names = {column: values[int(attributes[i])] for i, (column, values) in enumerate(ATTRIBUTES.items())}
    return template.format(
        shape=names["shape"], colour=names["colour"], size=names["size"], where=WHERE[names["position"]]
    )


def longest_caption() -> int:
    """Characters in the longest caption or prompt any template here can write, filler included."""
    widest = {
        "shape": max(SHAPE_LABELS, key=len),
        "colour": max(COLOURS, key=len),
        "size": max(SIZES, key=len),
        "where": max(WHERE.values(), key=len),
    }

    def width(template: str) -> int:
        return len(template.format(**{k: v for k, v in widest.items() if k in template}))

    held_out = (*RETRIEVAL_TEMPLATES, *itertools.chain(*ZERO_SHOT_TEMPLATES.values()))
    filler = (MAX_PREFIX_WORDS + 1) * (FILLER_LETTERS[1] + 1)
    return max(max(width(t) + filler for t in TRAIN_TEMPLATES), max(width(t) for t in held_out))


def prompts(template: str, column: str) -> list[str]:
    """The template filled with each value of one attribute: a zero-shot classifier's label prompts."""
    values = ATTRIBUTES[column]
    key = next(k for k, v in _FIELDS.items() if v == column)
    return [template.format(**{key: WHERE[v] if column == "position" else v}) for v in values]


def encode_texts(
    tokenizer: CharTokenizer, texts: list[str], max_length: int | None = None
) -> tuple[Tensor, Tensor]:
    """Texts -> right-padded ids with a leading bos (the text encoder pools there) and the attention
    mask, both (B, T) int64, as the server builds them."""
    rows = [tokenizer.encode(text, bos=True) for text in texts]
    longest = max(len(r) for r in rows)
    if max_length is not None and longest > max_length:
        raise DataError(f"a caption is {longest} tokens; the text encoder takes at most {max_length}")
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    return ids, (ids != tokenizer.pad_id).long()


@dataclass
class CaptionBatch:
    texts: list[str]
    mentioned: Tensor  # (B, 4) bool: which attributes each caption names


def _words(templates: tuple[str, ...]) -> set[str]:
    return {word for t in templates for word in t.replace(",", "").split() if "{" not in word}


# The held-out prompts' words that no training template has ("photo", "of", "an", ...): never drawn
# as filler either, so no training caption ever holds one.
HELD_OUT_WORDS = frozenset(
    _words((*RETRIEVAL_TEMPLATES, *itertools.chain(*ZERO_SHOT_TEMPLATES.values()))) - _words(TRAIN_TEMPLATES)
)


def _filler_word(generator: torch.Generator) -> str:
    while True:
        length = int(torch.randint(FILLER_LETTERS[0], FILLER_LETTERS[1] + 1, (), generator=generator))
        letters = torch.randint(len(string.ascii_lowercase), (length,), generator=generator).tolist()
        word = "".join(string.ascii_lowercase[i] for i in letters)
        if word not in HELD_OUT_WORDS:
            return word


def _with_filler(text: str, generator: torch.Generator) -> str:
    draw = torch.rand(2, generator=generator).tolist()
    if draw[0] < FILLER_PROBABILITY:
        count = int(torch.randint(1, MAX_PREFIX_WORDS + 1, (), generator=generator))
        text = " ".join(_filler_word(generator) for _ in range(count)) + " " + text
    if draw[1] < FILLER_PROBABILITY / 2:
        text = text + " " + _filler_word(generator)
    return text


def caption_batch(attributes: Tensor, generator: torch.Generator, filler: bool = True) -> CaptionBatch:
    """A random training caption for each image of a batch (B, 4), with made-up filler words."""
    choice = torch.randint(len(TRAIN_TEMPLATES), (len(attributes),), generator=generator).tolist()
    rows = attributes.numpy()
    texts = [caption(TRAIN_TEMPLATES[c], row) for c, row in zip(choice, rows, strict=True)]
    if filler:
        texts = [_with_filler(text, generator) for text in texts]
    columns = list(ATTRIBUTES)
    mentioned = torch.tensor(
        [[column in template_fields(TRAIN_TEMPLATES[c]) for column in columns] for c in choice]
    )
    return CaptionBatch(texts, mentioned)


def caption_matches(image_attributes: Tensor, caption_attributes: Tensor, mentioned: Tensor) -> Tensor:
    """(I, T) bool: caption j describes image i, i.e. they agree on every attribute caption j names.
    A caption is always true of its own image; "a circle" is true of every circle in the batch."""
    agree = image_attributes[:, None, :] == caption_attributes[None, :, :]  # (I, T, 4)
    return (agree | ~mentioned[None, :, :]).all(-1)


# ---------------------------------------------------------------------------------------- images


def _scenes(attributes: np.ndarray, rng: np.random.Generator) -> ShapeScenes:
    """Geometry and colours that realise each row of ``attributes``, the rest random."""
    n = len(attributes)
    size = 32
    shape, colour, large, position = attributes.T
    radius = np.where(large == 1, rng.uniform(8.0, 9.5, n), rng.uniform(5.0, 6.0, n))
    aspect = rng.uniform(0.9, 1.1, (n, 2))
    margin = radius * 1.1 + 1.0  # the widest the stretched, rotated shape reaches, plus a pixel
    low, span = margin, size - 1 - 2 * margin
    # Left, middle and right thirds of the centre's allowed range, with gaps between them, so that a
    # position is never a judgement call.
    start, width = np.array([0.0, 0.43, 0.72])[position], np.array([0.28, 0.14, 0.28])[position]
    cx = low + span * (start + width * rng.random(n))
    cy = margin + rng.random(n) * span
    palette = np.array(list(COLOURS.values()))
    foreground = np.clip(palette[colour] + rng.uniform(-0.05, 0.05, (n, 3)), 0.0, 1.0)
    # A neutral grey background (slightly tinted) and a grey distractor blob: no colour but the
    # shape's own can be named.
    background = rng.uniform(0.25, 0.75, (n, 1)) + rng.uniform(-0.04, 0.04, (n, 3))
    blob = rng.uniform(0.2, 0.8, (n, 1)) + rng.uniform(-0.04, 0.04, (n, 3))
    return ShapeScenes(
        kind=shape,
        radius=radius,
        cx=cx,
        cy=cy,
        theta=rng.uniform(0.0, 2 * np.pi, n),
        aspect=aspect,
        background=background,
        foreground=foreground,
        gradient_direction=rng.uniform(0.0, 2 * np.pi, n),
        gradient_amplitude=rng.uniform(0.0, 0.12, n),
        blob_xy=rng.uniform(0.0, size - 1, (n, 2)),
        blob_sigma=rng.uniform(1.5, 3.0, n),
        blob_colour=blob,
        blob_alpha=rng.uniform(0.3, 0.6, n),
        pixel_noise=rng.standard_normal((n, 3, size, size), dtype=np.float32),
    )


def render_captioned(attributes: np.ndarray, seed: int, noise: float = 0.03) -> Tensor:
    """Images (N, 3, 32, 32) in [0, 1] showing the attributes (N, 4) of each row."""
    rng = np.random.default_rng([seed, 0xC11B])
    return torch.from_numpy(render_shapes(_scenes(attributes, rng), noise))


def random_attributes(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 0xA77])
    return np.stack([rng.integers(0, len(values), n) for values in ATTRIBUTES.values()], axis=1)


def minimal_pairs(n: int, seed: int) -> np.ndarray:
    """(n, 2, 4) attributes: pairs of images that differ in exactly one attribute, drawn at random.
    Trained together in one batch, each pair is a hard negative for the attribute it differs in:
    without them a batch holds about one image per caption that differs in a single attribute, too
    weak a signal to learn the horizontal position at all (measured: position at chance, the three
    others learned, after 12 epochs of random batches)."""
    rng = np.random.default_rng([seed, 0x9A15])
    first = random_attributes(n, seed)
    second = first.copy()
    sizes = np.array([len(values) for values in ATTRIBUTES.values()])
    rows, column = np.arange(n), rng.integers(0, len(sizes), n)
    shift = 1 + (rng.random(n) * (sizes[column] - 1)).astype(int)  # another value, uniformly
    second[rows, column] = (first[rows, column] + shift) % sizes[column]
    return np.stack([first, second], axis=1)


def every_combination() -> np.ndarray:
    """One row per combination of attribute values (6 x 8 x 2 x 3 = 288), in product order."""
    return np.array(list(itertools.product(*(range(len(v)) for v in ATTRIBUTES.values()))))


def retrieval_gallery(seed: int) -> tuple[Tensor, Tensor]:
    """A held-out gallery with one image per attribute combination, so that a query naming all four
    attributes has exactly one right answer: images (288, 3, 32, 32) and attributes (288, 4)."""
    attributes = every_combination()
    return render_captioned(attributes, seed), torch.from_numpy(attributes)


def _pairs_split(n_pairs: int, seed: int) -> TensorDataset:
    attributes = minimal_pairs(n_pairs, seed)  # (n, 2, 4)
    images = render_captioned(attributes.reshape(-1, 4), seed)
    return TensorDataset(images.view(n_pairs, 2, *images.shape[1:]), torch.from_numpy(attributes))


def captioned_shapes_bundle(
    *, seed: int, limit: int | None, context_length: int, n_train: int = 14_400, n_eval: int = 1_440
) -> DatasetBundle:
    """Train / val / test splits of captioned shapes. Train and val hold minimal pairs: x (N / 2, 2,
    3, 32, 32) and y (N / 2, 2, 4), one pair per example (the loss flattens them); test holds single
    images (N, 3, 32, 32) and their attributes (N, 4). Each split is drawn from its own seed, so no
    image is in two splits."""
    n_train = min(limit, n_train) if limit else n_train
    n_eval = max(min(n_eval, n_train // 4), 16) if limit else n_eval
    test_attributes = random_attributes(2 * n_eval, seed + 2000)
    splits = {
        "train": _pairs_split(max(n_train // 2, 2), seed),
        "val": _pairs_split(max(n_eval // 2, 2), seed + 1000),
        "test": TensorDataset(
            render_captioned(test_attributes, seed + 2000), torch.from_numpy(test_attributes)
        ),
    }
    tokenizer = caption_tokenizer()
    longest = longest_caption() + 1  # with the bos
    if longest > context_length:
        raise DataError(f"captions need up to {longest} tokens; the model's context is {context_length}")
    train_images = splits["train"].tensors[0].flatten(0, 1)
    mean, std = _channel_stats(train_images)
    combinations = len(every_combination())
    return DatasetBundle(
        name="shapes-captions",
        **splits,
        labels=list(SHAPE_LABELS),  # the zero-shot task's classes
        input_shape=tuple(train_images.shape[1:]),  # one image
        mean=mean,
        std=std,
        description=(
            "generated captioned shapes: 3x32x32 images of one shape (6), named colour (8), size (2) and "
            f"horizontal position (3), {combinations} combinations, on grey backgrounds with a grey "
            f"distractor blob and pixel noise; captions from {len(TRAIN_TEMPLATES)} training templates "
            "with made-up filler words. Train and val in minimal pairs (two images that differ in one "
            f"attribute). Splits (seed {seed}): train {len(train_images)}, val {2 * len(splits['val'])}, "
            f"test {2 * n_eval} images; a held-out gallery of one image per combination ({combinations}) "
            "for retrieval."
        ),
        chance_accuracy=1 / len(SHAPE_LABELS),
        tokenizer=tokenizer,
    )
