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
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from app.errors import BadRequest, InvalidInput
from app.registry import ModelVersion
from app.schema import GraphSpec, ImagePostprocessing, ImagePreprocessing, TensorSpec
from app.session import NUMPY_DTYPES

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


def _shape_matches(shape: tuple[int, ...], spec: list[int]) -> bool:
    return len(shape) == len(spec) and all(s == d or d < 0 for s, d in zip(shape, spec, strict=True))


def tensor_item(value: Any, spec: TensorSpec, where: str) -> np.ndarray:
    """A nested list -> one item of ``spec`` (its shape without the batch axis), checked."""
    dtype = NUMPY_DTYPES[spec.dtype]
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


def image_item(
    data: str, pre: ImagePreprocessing, spec: TensorSpec, where: str, max_pixels: int
) -> np.ndarray:
    """base64 PNG/JPEG -> the graph's item: channels, size, [0, 1] scale, (x - mean) / std."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where}: not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw)) as image:
            if image.format not in ACCEPTED_IMAGE_FORMATS:
                raise BadRequest(f"{where}: {image.format} images are not accepted; send PNG or JPEG")
            if image.width * image.height > max_pixels:
                raise InvalidInput(f"{where}: image of {image.width}x{image.height} pixels is too large")
            image = image.convert("L" if pre.channels == 1 else "RGB")
            if image.size != (pre.width, pre.height):
                image = image.resize((pre.width, pre.height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / 255.0  # (H, W) or (H, W, C)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise BadRequest(f"{where}: cannot decode the image ({exc})") from None
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (C, H, W)
    mean = np.asarray(pre.mean, np.float32)[:, None, None]
    std = np.asarray(pre.std, np.float32)[:, None, None]
    chw = (chw - mean) / std
    item_shape = spec.shape[1:]
    if int(np.prod(item_shape)) != chw.size or any(d < 0 for d in item_shape):
        raise InvalidInput(f"{where}: the model's input {spec.name} {tuple(item_shape)} cannot take an image")
    return chw.reshape(item_shape)  # e.g. flattened for an MLP


def text_feeds(mv: ModelVersion, texts: list, graph: GraphSpec) -> dict[str, np.ndarray]:
    """Texts -> right-padded token ids plus ``lengths`` or ``attention_mask``, as the graph takes them."""
    pre = mv.config.preprocessing
    tokenizer = mv.tokenizer
    rows = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInput(f"inputs[{i}]: expected a string of text")
        ids = tokenizer.encode(text, bos=pre.add_bos, eos=pre.add_eos)
        if len(ids) == pre.add_bos + pre.add_eos:
            raise InvalidInput(f"inputs[{i}]: empty text")
        if len(ids) > pre.max_length:
            raise InvalidInput(
                f"inputs[{i}]: text is {len(ids)} tokens long; the model accepts at most {pre.max_length}"
            )
        rows.append(ids)
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


def predict_feeds(mv: ModelVersion, graph: GraphSpec, inputs: str | list, max_items: int, max_pixels: int):
    """``POST /predict`` inputs -> feeds for ``graph`` (all items in one batch)."""
    pre = mv.config.preprocessing
    if pre is not None and pre.kind == "text":
        items = as_items(inputs, 0, expects_strings=True)
        _check_count(items, max_items)
        return text_feeds(mv, items, graph)
    if len(graph.inputs) != 1:
        raise InvalidInput(f"model {mv.name!r} takes {len(graph.inputs)} inputs; use the V2 infer endpoint")
    spec = graph.inputs[0]
    items = as_items(inputs, len(spec.shape) - 1, expects_strings=False)
    _check_count(items, max_items)
    rows = []
    for i, item in enumerate(items):
        where = f"inputs[{i}]"
        if isinstance(item, str):
            if not isinstance(pre, ImagePreprocessing):
                raise InvalidInput(f"{where}: model {mv.name!r} takes numbers, not strings")
            rows.append(image_item(item, pre, spec, where, max_pixels))
        else:
            rows.append(tensor_item(item, spec, where))
    return {spec.name: np.stack(rows)}


def _check_count(items: list, max_items: int) -> None:
    if len(items) > max_items:
        raise InvalidInput(f"inputs has {len(items)} items; at most {max_items} per request")


# ----------------------------------------------------------------------------------------- outputs


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def classification_items(labels: list[str], logits: np.ndarray, top_k: int | None) -> list[dict]:
    probs = softmax(logits.astype(np.float64))
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


def encode_png(image: np.ndarray, post: ImagePostprocessing | None) -> str:
    """(C, H, W) float image in the model's output range -> base64 PNG."""
    low, high = post.value_range if post else (0.0, 1.0)
    scaled = np.clip((image - low) / (high - low), 0.0, 1.0)
    pixels = np.round(scaled * 255).astype(np.uint8)
    hwc = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(hwc).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def image_values(batch: np.ndarray, post: ImagePostprocessing | None, image_format: str) -> list:
    if image_format == "png" and batch.ndim == 4:
        return [encode_png(x, post) for x in batch]
    return batch.tolist()
