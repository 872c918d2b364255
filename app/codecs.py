"""Request items -> graph feeds, and graph outputs -> response items, as each model's config says.

Items for ``POST /predict``: a base64 PNG/JPEG string (image models: decoded, converted to the
model's channels, resized and normalised here), a string of text (text models: tokenized with the
model's own vocabulary), or a nested list of numbers fed to the graph as it is (shape and dtype
checked). Every message names the offending item, e.g. ``inputs[3]``.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from app.core.repository_format import (
    GraphSpec,
    ImagePostprocessing,
    ImagePreprocessing,
    TensorSpec,
    TextPreprocessing,
)
from app.core.sampling import softmax
from app.core.tokenizer import CharTokenizer
from app.errors import BadRequest, InvalidInput
from app.registry import ModelVersion
from app.session import NUMPY_DTYPES

log = logging.getLogger(__name__)

ACCEPTED_IMAGE_FORMATS = ("PNG", "JPEG")


def _depth(value: Any) -> int:
    depth = 0
    while isinstance(value, list):
        depth += 1
        if not value:
            break
        value = value[0]
    return depth


def as_items(inputs: str | list, item_rank: int, expects_strings: bool) -> list:
    """One item or a list of items -> a list of items. A string is one item; a list is a list of
    items when it holds strings or is one level deeper than an item."""
    if isinstance(inputs, str):
        return [inputs]
    if not inputs:
        raise InvalidInput("inputs is empty")
    if any(isinstance(x, str) for x in inputs):
        return inputs
    if expects_strings:
        raise InvalidInput("inputs must be a string or a list of strings for this model")
    depth = _depth(inputs)
    if depth == item_rank:
        return [inputs]
    if depth == item_rank + 1:
        return inputs
    raise InvalidInput(
        f"inputs must be one item of rank {item_rank} (a nested list) or a list of them; "
        f"got nesting depth {depth}"
    )


def _outer_size(value: Any) -> int:
    """Elements along the outer nesting, without walking every leaf (an upper-bound estimate)."""
    size = 1
    while isinstance(value, list) and value:
        size *= len(value)
        value = value[0]
    return size


def _shape_matches(shape: tuple[int, ...], spec: list[int]) -> bool:
    return len(shape) == len(spec) and all(s == d or d < 0 for s, d in zip(shape, spec, strict=True))


def tensor_item(value: Any, spec: TensorSpec, where: str, max_elements: int) -> np.ndarray:
    """A nested list -> one item of ``spec`` (its shape without the batch axis), checked."""
    dtype = NUMPY_DTYPES[spec.dtype]
    fixed = [d for d in spec.shape[1:] if d >= 0]
    if any(d < 0 for d in spec.shape[1:]) and _outer_size(value) * math.prod(fixed) > max_elements:
        raise InvalidInput(f"{where}: more than the {max_elements} elements allowed per tensor")
    try:
        array = np.asarray(value, dtype=np.float64 if dtype is np.float32 else dtype)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"{where}: not a rectangular list of {spec.dtype} numbers") from None
    if array.dtype == object:
        raise InvalidInput(f"{where}: not a rectangular list of numbers")
    item_shape = spec.shape[1:]
    if not _shape_matches(array.shape, item_shape):
        shown = tuple("any" if d < 0 else d for d in item_shape)
        raise InvalidInput(
            f"{where}: shape {array.shape} does not match the model's input {spec.name} {shown}"
        )
    if dtype is np.float32:
        if not np.isfinite(array).all():
            raise InvalidInput(f"{where}: contains NaN or infinity")
        if np.abs(array).max(initial=0) > np.finfo(np.float32).max:
            raise InvalidInput(f"{where}: a value overflows float32")
    return array.astype(dtype, copy=False)


def open_image(data: str, where: str, max_pixels: int) -> Image.Image:
    """base64 PNG/JPEG -> an opened, not yet decoded image: reading the header is cheap, so sizes are
    checked before any pixel is decoded."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where}: not valid base64") from None
    try:
        image = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError:  # Pillow's own bound (far above ours) fired first
        raise InvalidInput(
            f"{where}: image is larger than the {max_pixels} pixels allowed per image"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise BadRequest(f"{where}: not a PNG or JPEG image") from None
    if image.format not in ACCEPTED_IMAGE_FORMATS:
        raise BadRequest(f"{where}: {image.format} images are not accepted; send PNG or JPEG")
    if image.width * image.height > max_pixels:
        raise InvalidInput(
            f"{where}: image of {image.width}x{image.height} pixels is larger than the "
            f"{max_pixels} pixels allowed per image"
        )
    return image


def image_item(image: Image.Image, pre: ImagePreprocessing, spec: TensorSpec, where: str) -> np.ndarray:
    """An opened image -> the graph's item: channels, size, [0, 1] scale, (x - mean) / std."""
    try:
        with image:
            image = image.convert("L" if pre.channels == 1 else "RGB")
            if image.size != (pre.width, pre.height):
                image = image.resize((pre.width, pre.height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / 255.0  # (H, W) or (H, W, C)
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as exc:
        log.info("%s: image decoding failed: %s", where, exc)
        raise BadRequest(f"{where}: cannot decode the image (truncated or corrupt)") from None
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (C, H, W)
    mean = np.asarray(pre.mean, np.float32)[:, None, None]
    std = np.asarray(pre.std, np.float32)[:, None, None]
    chw = (chw - mean) / std
    item_shape = spec.shape[1:]
    if int(np.prod(item_shape)) != chw.size or any(d < 0 for d in item_shape):
        raise InvalidInput(f"{where}: the model's input {spec.name} {tuple(item_shape)} cannot take an image")
    return chw.reshape(item_shape)  # e.g. flattened for an MLP


# Characters named in the message for text outside the vocabulary; the count says how many more.
MAX_SHOWN_CHARACTERS = 20


def check_vocabulary(tokenizer: CharTokenizer, text: str, where: str, map_unknown: bool) -> None:
    """The one policy for text the vocabulary cannot represent, on every path that takes text: 422
    naming the characters, unless the request opts in with ``map_unknown`` to their mapping to <unk>
    (silently mapped, different texts become one input: "dcba" and "zzzz" would get the same answer).
    Runs after the length check, which bounds its cost."""
    if map_unknown:
        return
    unknown = tokenizer.unknown_characters(text)
    if not unknown:
        return
    # repr makes whitespace and control characters visible ('\t', '\x00', '\u200b').
    shown = ", ".join(repr(c) for c in unknown[:MAX_SHOWN_CHARACTERS])
    if len(unknown) > MAX_SHOWN_CHARACTERS:
        shown += f" and {len(unknown) - MAX_SHOWN_CHARACTERS} more"
    raise InvalidInput(
        f"{where}: characters outside the model's vocabulary: {shown} "
        '(send "map_unknown": true to map them to <unk>)'
    )


def text_feeds(
    mv: ModelVersion,
    texts: list,
    graph: GraphSpec,
    map_unknown: bool,
    *,
    pre: TextPreprocessing | None = None,
    field: str = "inputs",
) -> dict[str, np.ndarray]:
    """Texts -> right-padded token ids plus ``lengths`` or ``attention_mask``, as the graph takes them.
    Every text is checked (length, then characters) before any is encoded; messages name ``field``.
    ``pre``: the text side of a model with two (a dual encoder), else the model's preprocessing."""
    pre = pre or mv.config.preprocessing
    tokenizer = mv.tokenizer
    for i, text in enumerate(texts):
        where = f"{field}[{i}]"
        if not isinstance(text, str):
            raise InvalidInput(f"{where}: expected a string of text")
        if not text:
            raise InvalidInput(f"{where}: empty text")
        length = len(text) + pre.add_bos + pre.add_eos  # in tokens: one per character
        if length > pre.max_length:
            raise InvalidInput(
                f"{where}: text is {length} tokens long; the model accepts at most {pre.max_length}"
            )
        check_vocabulary(tokenizer, text, where, map_unknown)
    rows = [tokenizer.encode(text, bos=pre.add_bos, eos=pre.add_eos) for text in texts]
    longest = max(len(r) for r in rows)
    tokens = np.zeros((len(rows), longest), np.int64)
    for i, ids in enumerate(rows):
        tokens[i, : len(ids)] = ids
    lengths = np.asarray([len(r) for r in rows], np.int64)
    feeds = {}
    for spec in graph.inputs:
        if spec.name == "lengths":
            feeds[spec.name] = lengths
        elif spec.name == "attention_mask":
            feeds[spec.name] = (np.arange(longest)[None, :] < lengths[:, None]).astype(np.int64)
        elif spec.dtype == "int64" and len(spec.shape) == 2:
            feeds[spec.name] = tokens
        else:
            raise InvalidInput(f"model {mv.name!r}: input {spec.name} cannot be built from text")
    return feeds


@dataclass(frozen=True)
class PredictLimits:
    max_items: int
    max_tensor_elements: int
    max_image_pixels: int
    max_request_pixels: int


# Work on more than this goes to a worker thread; below it the thread hop would cost more than the
# work. Pixels: Pillow decodes and resizes without holding the interpreter. Numbers: nested lists are
# converted item by item, and between items the interpreter lets the event loop run.
INLINE_PIXELS = 256 * 256
INLINE_NUMBERS = 64 * 1024


def many_numbers(inputs: str | list) -> bool:
    """Whether ``inputs`` is a nested list of more than INLINE_NUMBERS numbers (estimated from the
    outer lengths, without walking it)."""
    return isinstance(inputs, list) and _outer_size(inputs) > INLINE_NUMBERS


class PredictFeeds:
    """``POST /predict`` inputs -> feeds for ``graph``, in two steps: constructing it does everything
    whose cost does not grow with the pixels (counts, image headers, the pixel budget, text and
    nested lists, which the body's size bounds); :meth:`build` decodes the images. ``heavy`` says
    whether :meth:`build` belongs on a worker thread."""

    def __init__(
        self,
        mv: ModelVersion,
        graph: GraphSpec,
        inputs: str | list,
        limits: PredictLimits,
        *,
        map_unknown: bool = False,
    ) -> None:
        pre = mv.config.preprocessing
        self.feeds: dict[str, np.ndarray] | None = None
        self.heavy = False
        if pre is not None and pre.kind == "text":
            items = as_items(inputs, 0, expects_strings=True)
            _check_count(items, limits.max_items)
            self.feeds = text_feeds(mv, items, graph, map_unknown)
            return
        if len(graph.inputs) != 1:
            raise InvalidInput(
                f"model {mv.name!r} takes {len(graph.inputs)} inputs; use the V2 infer endpoint"
            )
        self.spec = spec = graph.inputs[0]
        self.pre = pre
        items = as_items(inputs, len(spec.shape) - 1, expects_strings=False)
        _check_count(items, limits.max_items)
        self.rows: list[np.ndarray | Image.Image] = []
        pixels = 0
        for i, item in enumerate(items):
            where = f"inputs[{i}]"
            if isinstance(item, str):
                if not isinstance(pre, ImagePreprocessing):
                    raise InvalidInput(f"{where}: model {mv.name!r} takes numbers, not strings")
                image = open_image(item, where, limits.max_image_pixels)
                pixels += image.width * image.height
                if pixels > limits.max_request_pixels:
                    raise InvalidInput(
                        f"inputs: the images hold more than the {limits.max_request_pixels} pixels "
                        f"allowed per request (decoded, summed over the items)"
                    )
                self.rows.append(image)
            else:
                self.rows.append(tensor_item(item, spec, where, limits.max_tensor_elements))
        self.heavy = pixels > INLINE_PIXELS

    def build(self) -> dict[str, np.ndarray]:
        if self.feeds is None:
            rows = [
                image_item(row, self.pre, self.spec, f"inputs[{i}]") if isinstance(row, Image.Image) else row
                for i, row in enumerate(self.rows)
            ]
            self.feeds = {self.spec.name: np.stack(rows)}
        return self.feeds


def text_items(inputs: str | list, max_items: int) -> list[str] | None:
    """A dual encoder's ``inputs`` as texts when its items are ``{"text": ...}`` objects; None when they
    are images (base64 strings or nested lists, as for any image model). One kind per request."""
    if not isinstance(inputs, list) or not any(isinstance(item, dict) for item in inputs):
        return None
    _check_count(inputs, max_items)
    texts = []
    for i, item in enumerate(inputs):
        if not isinstance(item, dict) or set(item) != {"text"} or not isinstance(item["text"], str):
            raise InvalidInput(
                f'inputs[{i}]: a text item is {{"text": "..."}}; a request gives images or texts, not both'
            )
        texts.append(item["text"])
    return texts


def _check_count(items: list, max_items: int) -> None:
    if len(items) > max_items:
        raise InvalidInput(f"inputs has {len(items)} items; at most {max_items} per request")


# ----------------------------------------------------------------------------------------- outputs


def refuse_rows(bad: np.ndarray) -> None:
    """Rows whose output is not a number (JSON has none for NaN or infinity) come from inputs far
    outside what the model was trained on: the client's to fix, so 422 naming the first."""
    if len(bad):
        raise InvalidInput(
            f"inputs[{bad[0]}]: the model's output is not a finite number for this input "
            "(values far outside the range it was trained on?)"
        )


def check_finite(array: np.ndarray) -> None:
    if array.dtype.kind == "f":
        refuse_rows(np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1)))


def classification_items(labels: list[str], logits: np.ndarray, top_k: int | None) -> list[dict]:
    # Infinite logits still rank (softmax below handles them); NaN, or every class at -inf, does not.
    refuse_rows(np.flatnonzero(np.isnan(logits).any(axis=-1) | np.isneginf(logits).all(axis=-1)))
    probs = softmax(logits)
    best = probs.argmax(axis=-1)
    items = []
    for row, index in zip(probs, best, strict=True):
        item: dict[str, Any] = {"label": labels[index], "index": int(index), "probability": float(row[index])}
        if top_k is None:
            item["probabilities"] = row.tolist()
        else:
            order = np.argsort(-row, kind="stable")[:top_k]
            item["top_k"] = [
                {"label": labels[j], "index": int(j), "probability": float(row[j])} for j in order
            ]
        items.append(item)
    return items


def ranking(indices: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    """A retrieval answer: gallery positions, most similar first, with their cosine similarities."""
    return [{"index": i, "score": v} for i, v in zip(indices.tolist(), scores.tolist(), strict=True)]


def encode_png(image: np.ndarray, post: ImagePostprocessing | None) -> str:
    """(C, H, W) float image in the model's output range -> base64 PNG."""
    low, high = post.value_range if post else (0.0, 1.0)
    scaled = np.clip((image - low) / (high - low), 0.0, 1.0)
    pixels = np.round(scaled * 255).astype(np.uint8)
    hwc = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(hwc).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def image_values(batch: np.ndarray, post: ImagePostprocessing | None, fmt: str) -> list:
    """Images as base64 PNGs (``fmt`` "png") or nested lists ("array")."""
    if fmt == "png" and batch.ndim == 4:
        return [encode_png(x, post) for x in batch]
    return batch.tolist()
