"""Hostile input against every endpoint and protocol, one table row per case.

Every refused request must get the exact 4xx status, a JSON body ``{"error": message}`` whose message
names what was wrong and leaks nothing internal (addresses, paths, tracebacks, ONNX node names), within
a time bound; and afterwards the server must still answer ``GET /health/live`` within a second. A
client mistake is never a 5xx. A group of valid edge requests (exactly at each limit) must succeed.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import re
import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from app.settings import Settings
from tests.app.conftest import LiveServer, copy_models

MODELS = (
    "mlp-digits",
    "lenet5-digits",
    "lstm-order",
    "bilstm-order",
    "bert-scramble",
    "autoencoder-digits",
    "vae-digits",
    "dcgan-digits",
    "gpt-corpus",
    "seq2seq-dates",
    "resnet-shapes",
)
JSON_CT = "application/json"
OCTET = "application/octet-stream"
MIB = 1024 * 1024
GPT_VOCAB = 108  # 5 specials + 103 characters (models/gpt-corpus/config.json)
GPT_CONTEXT = 128
LSTM_VOCAB = 15
LSTM_MAX_LENGTH = 40
BERT_MAX_LENGTH = 64  # including the bos token
S2S_MAX_LENGTH = 64  # including the eos token


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def hostile_repo(tmp_path_factory):
    return copy_models(tmp_path_factory.mktemp("hostile"), MODELS)


@pytest.fixture(scope="module")
def hostile_server(hostile_repo) -> Iterator[LiveServer]:
    with LiveServer(Settings(model_repository=hostile_repo)) as live:
        yield live


@pytest.fixture(scope="module")
def hc(hostile_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hostile_server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def slow_body_server(tmp_path_factory) -> Iterator[LiveServer]:
    repo = copy_models(tmp_path_factory.mktemp("slow-body"), ("mlp-digits",))
    with LiveServer(Settings(model_repository=repo, body_timeout_s=1.0)) as live:
        yield live


# ------------------------------------------------------------------------------------------ bodies

_LIT = "\x00lit:"


def lit(text: str) -> str:
    """A token written into the JSON as it is (1e309, NaN, Infinity), not as a string."""
    return f"{_LIT}{text}\x00"


INF, NEG_INF, NAN, INFINITY = lit("1e309"), lit("-1e309"), lit("NaN"), lit("Infinity")


def encode(value: Any) -> bytes:
    text = json.dumps(value, ensure_ascii=False)
    return re.sub(r'"\\u0000lit:(.*?)\\u0000"', r"\1", text).encode()


def w(base: dict, **changes: Any) -> dict:
    """``base`` with fields changed; a value of ``...`` removes the field."""
    out = {**base, **changes}
    return {k: v for k, v in out.items() if v is not ...}


ROW = [0.0] * 64
MLP = {"model": "mlp-digits", "inputs": [ROW]}
LENET_ITEM = [[[0.0] * 28] * 28]
LSTM = {"model": "lstm-order", "inputs": ["ABefCD"]}
GPT = {"model": "gpt-corpus", "prompt": "The ", "max_new_tokens": 2, "seed": 1}
S2S = {"model": "seq2seq-dates", "input": "3rd of March 2021"}
DCGAN = {"model": "dcgan-digits", "num_samples": 1}
DCGAN0 = {"model": "dcgan-digits"}
VAE0 = {"model": "vae-digits"}


def mlp_tensor(**changes: Any) -> dict:
    return w({"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW}, **changes)


def v2(*tensors: dict, **extra: Any) -> dict:
    return {"inputs": list(tensors), **extra}


def lstm_v2(tokens: list, lengths: list, datatype: str = "INT64") -> dict:
    return v2(
        {"name": "tokens", "shape": [len(tokens), len(tokens[0])], "datatype": datatype, "data": tokens},
        {"name": "lengths", "shape": [len(lengths)], "datatype": datatype, "data": lengths},
    )


def bert_v2(ids: list, mask: list) -> dict:
    shape = [len(ids), len(ids[0])]
    return v2(
        {"name": "input_ids", "shape": shape, "datatype": "INT64", "data": ids},
        {"name": "attention_mask", "shape": [len(mask), len(mask[0])], "datatype": "INT64", "data": mask},
    )


def bt(name: str, datatype: str, shape: list, size: Any) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}


def binary(header: dict | bytes, blobs: bytes = b"", length: str | None = None) -> tuple[bytes, dict]:
    """A binary-extension body and its Inference-Header-Content-Length header."""
    head = header if isinstance(header, bytes) else encode(header)
    return head + blobs, {"Inference-Header-Content-Length": str(len(head)) if length is None else length}


def f32(values: Any) -> bytes:
    return np.asarray(values, "<f4").tobytes()


def i64(values: Any) -> bytes:
    return np.asarray(values, "<i8").tobytes()


# ------------------------------------------------------------------------------------------ images


def image_bytes(width: int, height: int, mode: str = "L", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    color = 0 if mode in ("L", "P", "1") else (0,) * len(mode)
    Image.new(mode, (width, height), color).save(buffer, format=fmt)
    return buffer.getvalue()


@cache
def b64_image(width: int, height: int, mode: str = "L", fmt: str = "PNG") -> str:
    return base64.b64encode(image_bytes(width, height, mode, fmt)).decode()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@cache
def png_claiming(width: int, height: int) -> str:
    """A 1x1 PNG whose header claims width x height (a decompression bomb's calling card)."""
    raw = bytearray(image_bytes(1, 1))
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    return b64(bytes(raw))


@cache
def digit_png() -> str:
    pixels = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return b64(buffer.getvalue())


def corrupt_png() -> str:
    raw = bytearray(base64.b64decode(b64_image(32, 32)))
    raw[-20:-14] = b"\xde\xad\xbe\xef\xde\xad"  # inside IDAT: its CRC no longer matches
    return b64(bytes(raw))


# ------------------------------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    body: Any  # JSON value, bytes, None (no body) or a callable giving one of those (built lazily)
    status: int | tuple[int, ...]
    keyword: tuple[str, ...]  # the lowercased message contains at least one of these
    ctype: str | None = JSON_CT
    headers: dict = field(default_factory=dict)
    bound: float = 2.0
    check: Callable[[httpx.Response], str | None] | None = None  # for 200 answers

    def content(self) -> bytes | Iterator[bytes] | None:
        body = self.body() if callable(self.body) else self.body
        if body is None or isinstance(body, (bytes, Iterator)):
            return body
        return encode(body)

    @property
    def statuses(self) -> tuple[int, ...]:
        return self.status if isinstance(self.status, tuple) else (self.status,)


def row(
    id: str,
    path: str,
    body: Any,
    status: int | tuple[int, ...],
    keyword: str | tuple[str, ...] = (),
    *,
    method: str = "POST",
    ctype: str | None = JSON_CT,
    headers: dict | None = None,
    bound: float = 2.0,
    check: Callable | None = None,
):
    keywords = (keyword,) if isinstance(keyword, str) else keyword
    case = Case(method, path, body, status, keywords, ctype, headers or {}, bound, check)
    return pytest.param(case, id=id)


def get(id: str, path: str, status: int, keyword: str | tuple[str, ...] = (), **kw):
    return row(id, path, None, status, keyword, method="GET", ctype=None, **kw)


def bin_row(id: str, path: str, built: tuple[bytes, dict], status, keyword=(), **kw):
    content, headers = built
    return row(id, path, content, status, keyword, ctype=kw.pop("ctype", OCTET), headers=headers, **kw)


P, G = "/predict", "/generate"
I_MLP = "/v2/models/mlp-digits/infer"
I_LSTM = "/v2/models/lstm-order/infer"
I_BERT = "/v2/models/bert-scramble/infer"
I_GPT = "/v2/models/gpt-corpus/infer"
I_DCGAN = "/v2/models/dcgan-digits/infer"

# ---------------------------------------------------------------- bodies that are not a JSON object

_NOT_OBJECTS = [
    ("not-json", b"this is not json", 400, "json"),
    ("empty", b"", 400, "json"),
    ("truncated", b'{"model": "mlp-dig', 400, "json"),
    ("trailing-garbage", encode(MLP) + b" }}garbage", 400, "json"),
    ("invalid-utf8", b'{"model": "\xff\xfe\xfd"}', 400, "json"),
    ("deep-nesting", b"[" * 100_000, 400, "json"),
    ("single-quotes", b"{'model': 'mlp-digits'}", 400, "json"),
    ("array", b"[1, 2]", 400, "object"),
    ("string", b'"mlp-digits"', 400, "object"),
    ("number", b"42", 400, "object"),
    ("null", b"null", 400, "object"),
    ("bool", b"true", 400, "object"),
]
PARSE = [
    row(f"parse-{where}-{name}", path, raw, status, kw)
    for where, path in (("predict", P), ("generate", G), ("v2", I_MLP))
    for name, raw, status, kw in _NOT_OBJECTS
]

# ---------------------------------------------------------------- content types

_REFUSED_EVERYWHERE = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x")
_REFUSED_JSON_ONLY = ("application/xml", "text/html", OCTET, "image/png")
CONTENT_TYPES = (
    [
        row(f"ctype-predict-{ct.split(';')[0]}", P, MLP, 415, "content-type", ctype=ct)
        for ct in (*_REFUSED_EVERYWHERE, *_REFUSED_JSON_ONLY)
    ]
    + [
        row(f"ctype-generate-{ct.split(';')[0]}", G, DCGAN, 415, "content-type", ctype=ct)
        for ct in (*_REFUSED_EVERYWHERE, "application/xml", OCTET)
    ]
    + [
        row(f"ctype-v2-{ct.split(';')[0]}", I_MLP, v2(mlp_tensor()), 415, "content-type", ctype=ct)
        for ct in _REFUSED_EVERYWHERE
    ]
    + [
        row(
            "ctype-predict-text/plain-charset", P, MLP, 415, "content-type", ctype="text/plain; charset=utf-8"
        ),
        row(
            "ctype-v2-text/plain-charset",
            I_MLP,
            v2(mlp_tensor()),
            415,
            "content-type",
            ctype="text/plain;a=b",
        ),
        bin_row(
            "ctype-v2-binary-as-text/plain",
            I_MLP,
            binary(v2(bt("input", "FP32", [1, 64], 256)), f32(ROW)),
            415,
            "content-type",
            ctype="text/plain",
        ),
    ]
)

# ---------------------------------------------------------------- POST /predict

PREDICT = [
    row("predict-missing-model", P, {"inputs": [ROW]}, 422, "model"),
    row("predict-missing-inputs", P, {"model": "mlp-digits"}, 422, "inputs"),
    row("predict-unknown-field", P, w(MLP, bogus=1), 422, "bogus"),
    row("predict-model-number", P, w(MLP, model=5), 422, "model"),
    row("predict-model-list", P, w(MLP, model=["mlp-digits"]), 422, "model"),
    row("predict-model-null", P, w(MLP, model=None), 422, "model"),
    row("predict-unknown-model", P, w(MLP, model="nope"), 404, "model"),
    row("predict-unknown-version", P, w(MLP, version=7), 404, "version"),
    row(
        "predict-version-huge", P, w(MLP, version=10**30), 422, "version"
    ),  # beyond 64 bits: refused naming it
    row("predict-version-negative", P, w(MLP, version=-1), 422, "version"),
    row("predict-version-string", P, w(MLP, version="latest"), 422, "version"),
    row("predict-version-float", P, w(MLP, version=1.5), 422, "version"),
    row("predict-top_k-zero", P, w(MLP, top_k=0), 422, "top_k"),
    row("predict-top_k-negative", P, w(MLP, top_k=-1), 422, "top_k"),
    row("predict-top_k-above-classes", P, w(MLP, top_k=11), 422, "top_k"),
    row("predict-top_k-above-classes-lstm", P, w(LSTM, top_k=5), 422, "top_k"),
    row("predict-top_k-huge", P, w(MLP, top_k=10**12), 422, "top_k"),
    row("predict-top_k-float", P, w(MLP, top_k=2.5), 422, "top_k"),
    row("predict-top_k-string", P, w(MLP, top_k="all"), 422, "top_k"),
    # image_format was renamed format: an old client is told so, whatever value it sends.
    row(
        "predict-image_format-renamed",
        P,
        {"model": "autoencoder-digits", "inputs": [LENET_ITEM], "image_format": "png"},
        422,
        ("image_format", "renamed format"),
    ),
    row("predict-image_format-number", P, w(MLP, image_format=1), 422, "image_format"),
    row(
        "predict-format-unknown",
        P,
        {"model": "autoencoder-digits", "inputs": [LENET_ITEM], "format": "jpeg"},
        422,
        "format",
    ),
    row(
        "predict-format-old-value-list",
        P,
        {"model": "autoencoder-digits", "inputs": [LENET_ITEM], "format": "list"},
        422,
        "format",
    ),
    row("predict-format-on-classifier", P, w(MLP, format="png"), 422, ("format", "classifier")),
    row("predict-return_latent-on-classifier", P, w(MLP, return_latent=True), 422, "return_latent"),
    row("predict-map_unknown-on-image-model", P, w(MLP, map_unknown=True), 422, "map_unknown"),
    row("predict-map_unknown-not-bool", P, w(LSTM, map_unknown="maybe"), 422, "map_unknown"),
    row("predict-return_latent-not-bool", P, w(MLP, return_latent="maybe"), 422, "return_latent"),
    row("predict-inputs-null", P, w(MLP, inputs=None), 422, "inputs"),
    row("predict-inputs-object", P, w(MLP, inputs={"a": 1}), 422, "inputs"),
    row("predict-inputs-number", P, w(MLP, inputs=5), 422, "inputs"),
    row("predict-inputs-bool", P, w(MLP, inputs=True), 422, "inputs"),
    row("predict-inputs-empty-list", P, w(MLP, inputs=[]), 422, "inputs"),
    row("predict-numbers-for-text-model", P, w(LSTM, inputs=[[1, 2, 3]]), 422, "inputs"),
    row("predict-flat-numbers-for-text-model", P, w(LSTM, inputs=[1, 2]), 422, "inputs"),
    row("predict-number-among-texts", P, w(LSTM, inputs=["ABC", 5]), 422, "inputs"),
    row("predict-nested-text", P, w(LSTM, inputs=[["ABC"]]), 422, "inputs"),
    row("predict-numbers-for-bert", P, {"model": "bert-scramble", "inputs": [[5, 6]]}, 422, "inputs"),
    row("predict-strings-in-tensor", P, w(MLP, inputs=[["a"] * 64]), 422, "inputs"),
    row("predict-nulls-in-tensor", P, w(MLP, inputs=[[None] * 64]), 422, "inputs"),
    row("predict-objects-in-tensor", P, w(MLP, inputs=[[{}] * 64]), 422, "inputs"),
    row("predict-bools-and-strings", P, w(MLP, inputs=[[True, "x"] * 32]), 422, "inputs"),
    row("predict-nesting-too-deep", P, w(MLP, inputs=[[[[ROW]]]]), 422, "inputs"),
    row("predict-nesting-too-shallow", P, {"model": "lenet5-digits", "inputs": [0.0] * 784}, 422, "inputs"),
    row("predict-inner-shape-short", P, w(MLP, inputs=[[0.0] * 63]), 422, "shape"),
    row("predict-inner-shape-long", P, w(MLP, inputs=[[0.0] * 65]), 422, "shape"),
    row("predict-items-of-two-shapes", P, w(MLP, inputs=[ROW, [0.0] * 10]), 422, "shape"),
    row(
        "predict-ragged-item",
        P,
        {"model": "lenet5-digits", "inputs": [[[[0.0] * 28] * 27 + [[0.0] * 5]]]},
        422,
        "inputs",
    ),
    row(
        "predict-wrong-channels",
        P,
        {"model": "lenet5-digits", "inputs": [[[[0.0] * 28] * 28] * 3]},
        422,
        "shape",
    ),
    row("predict-1e309", P, w(MLP, inputs=[[INF] + [0.0] * 63]), 422, "inputs"),
    row("predict-minus-1e309", P, w(MLP, inputs=[[NEG_INF] + [0.0] * 63]), 422, "inputs"),
    row("predict-nan-token", P, w(MLP, inputs=[[NAN] + [0.0] * 63]), (400, 422), "inputs"),
    row("predict-infinity-token", P, w(MLP, inputs=[[INFINITY] + [0.0] * 63]), (400, 422), "inputs"),
    row("predict-float32-overflow", P, w(MLP, inputs=[[3.5e38] + [0.0] * 63]), 422, "inputs"),
    row("predict-huge-integer", P, w(MLP, inputs=[[10**400] + [0] * 63]), 422, "inputs"),
    row("predict-257-items", P, w(MLP, inputs=[ROW] * 257), 422, ("items", "256")),
    row("predict-257-texts", P, w(LSTM, inputs=["ABCD"] * 257), 422, ("items", "256")),
    row("predict-257-images", P, lambda: w(MLP, inputs=[digit_png()] * 257), 422, ("items", "256")),
    row("predict-text-too-long", P, w(LSTM, inputs=["A" * 41]), 422, ("tokens", "length", "40")),
    row("predict-text-too-long-bert", P, {"model": "bert-scramble", "inputs": ["a" * 64]}, 422, "64"),
    row("predict-text-huge", P, w(LSTM, inputs=["A" * 1_000_000]), 422, ("tokens", "length"), bound=3),
    row("predict-text-empty", P, w(LSTM, inputs=[""]), 422, ("empty", "inputs")),
    row("predict-text-outside-vocabulary", P, w(LSTM, inputs=["ABCD", "abcd"]), 422, ("inputs[1]", "vocab")),
    row("predict-text-nul", P, w(LSTM, inputs=["AB\x00CD"]), 422, ("vocabulary", "map_unknown")),
    row(
        "predict-text-outside-vocabulary-bert",
        P,
        {"model": "bert-scramble", "inputs": ["snow \u2603 man"]},
        422,
        "vocabulary",
    ),
    row("predict-on-image-generator", P, {"model": "dcgan-digits", "inputs": [[0.0] * 32]}, 422, "generate"),
    row("predict-on-language-model", P, {"model": "gpt-corpus", "inputs": ["The "]}, 422, "generate"),
    row("predict-on-seq2seq", P, {"model": "seq2seq-dates", "inputs": ["3 May 2020"]}, 422, "generate"),
]

IMAGES = [
    row("image-not-base64", P, w(MLP, inputs=["not base64!!"]), 400, "base64"),
    row("image-not-base64-lenet", P, {"model": "lenet5-digits", "inputs": "%%%%"}, 400, "base64"),
    row("image-not-base64-among-tensors", P, w(MLP, inputs=[ROW, "@@@@"]), 400, "base64"),
    row("image-base64-of-text", P, w(MLP, inputs=[b64(b"hello world, not an image")]), 400, "image"),
    row("image-base64-of-zeros", P, w(MLP, inputs=[b64(bytes(100))]), 400, "image"),
    row("image-empty-string", P, w(MLP, inputs=[""]), 400, ("image", "base64", "empty")),
    row("image-gif", P, lambda: w(MLP, inputs=[b64_image(8, 8, "L", "GIF")]), 400, "gif"),
    row("image-bmp", P, lambda: w(MLP, inputs=[b64_image(8, 8, "L", "BMP")]), 400, "bmp"),
    row("image-tiff", P, lambda: w(MLP, inputs=[b64_image(8, 8, "L", "TIFF")]), 400, "tiff"),
    row(
        "image-truncated-png",
        P,
        lambda: w(MLP, inputs=[b64(base64.b64decode(b64_image(64, 64, "RGB"))[:60])]),
        400,
        "image",
    ),
    row("image-corrupt-png", P, lambda: w(MLP, inputs=[corrupt_png()]), 400, "image"),
    row(
        "image-over-4096x4096",
        P,
        lambda: w(MLP, inputs=[b64_image(4097, 4096)]),
        422,
        "pixels",
        bound=3,
    ),
    row("image-5000x5000", P, lambda: w(MLP, inputs=[b64_image(5000, 5000)]), 422, "pixels", bound=3),
    row(
        "image-header-claims-100000x100000",
        P,
        lambda: w(MLP, inputs=[png_claiming(100_000, 100_000)]),
        422,
        "pixels",
    ),
    row(
        "image-header-claims-100000x100000-lenet",
        P,
        lambda: {"model": "lenet5-digits", "inputs": [png_claiming(100_000, 100_000)]},
        422,
        "pixels",
    ),
    row(
        "image-request-pixels-2x4096x3000",
        P,
        lambda: w(MLP, inputs=[b64_image(4096, 3000)] * 2),
        422,
        "pixels",
        bound=4,
    ),
    row(
        "image-request-pixels-256x1024x1024",
        P,
        lambda: w(MLP, inputs=[b64_image(1024, 1024)] * 256),
        422,
        "pixels",
        bound=10,
    ),
    row(
        "image-request-pixels-lenet",
        P,
        lambda: {"model": "lenet5-digits", "inputs": [b64_image(4096, 3000)] * 2},
        422,
        "pixels",
        bound=4,
    ),
]

# ---------------------------------------------------------------- POST /generate

GENERATE = [
    # Every model.
    row("gen-missing-model", G, {"prompt": "The "}, 422, "model"),
    row("gen-model-number", G, w(GPT, model=3), 422, "model"),
    row("gen-unknown-model", G, w(GPT, model="nope"), 404, "model"),
    row("gen-unknown-version", G, w(GPT, version=9), 404, "version"),
    row("gen-version-negative", G, w(GPT, version=-1), 422, "version"),
    row("gen-version-string", G, w(GPT, version="one"), 422, "version"),
    row("gen-unknown-field", G, w(GPT, bogus=True), 422, "bogus"),
    row("gen-on-classifier", G, {"model": "mlp-digits", "prompt": "x"}, 422, "predict"),
    row("gen-on-autoencoder", G, {"model": "autoencoder-digits", "num_samples": 1}, 422, "predict"),
    row("gen-format-unknown", G, w(DCGAN, format="gif"), 422, "format"),
    # Language model: prompt.
    row("gen-prompt-number", G, w(GPT, prompt=5), 422, "prompt"),
    row("gen-prompt-list", G, w(GPT, prompt=["The "]), 422, "prompt"),
    row("gen-prompt-empty", G, w(GPT, prompt=""), 422, "prompt"),
    row("gen-prompt-missing", G, w(GPT, prompt=...), 422, "prompt"),
    row("gen-prompt-outside-vocabulary", G, w(GPT, prompt="héllo"), 422, "prompt"),
    row("gen-prompt-emoji", G, w(GPT, prompt="hi \U0001f642"), 422, "prompt"),
    row("gen-prompt-nul", G, w(GPT, prompt="a\x00b"), 422, "prompt"),
    row("gen-prompt-at-context", G, w(GPT, prompt="a" * GPT_CONTEXT), 422, "prompt"),
    row("gen-prompt-huge", G, w(GPT, prompt="a" * 100_000), 422, "prompt"),
    # Language model: sampling parameters.
    row("gen-temperature-negative", G, w(GPT, temperature=-1), 422, "temperature"),
    row("gen-temperature-1e309", G, w(GPT, temperature=INF), 422, "temperature"),
    row("gen-temperature-minus-1e309", G, w(GPT, temperature=NEG_INF), 422, "temperature"),
    row("gen-temperature-nan-token", G, w(GPT, temperature=NAN), (400, 422), "temperature"),
    row("gen-temperature-infinity-token", G, w(GPT, temperature=INFINITY), (400, 422), "temperature"),
    row("gen-temperature-string-inf", G, w(GPT, temperature="inf"), 422, "temperature"),
    row("gen-temperature-string-nan", G, w(GPT, temperature="nan"), 422, "temperature"),
    row("gen-temperature-string", G, w(GPT, temperature="hot"), 422, "temperature"),
    row("gen-top_p-zero", G, w(GPT, top_p=0), 422, "top_p"),
    row("gen-top_p-above-one", G, w(GPT, top_p=1.5), 422, "top_p"),
    row("gen-top_p-negative", G, w(GPT, top_p=-0.5), 422, "top_p"),
    row("gen-top_p-1e309", G, w(GPT, top_p=INF), 422, "top_p"),
    row("gen-top_p-nan-token", G, w(GPT, top_p=NAN), (400, 422), "top_p"),
    row("gen-top_k-negative", G, w(GPT, top_k=-1), 422, "top_k"),
    row("gen-top_k-above-vocabulary", G, w(GPT, top_k=GPT_VOCAB + 1), 422, "top_k"),
    row("gen-top_k-huge", G, w(GPT, top_k=10**9), 422, "top_k"),
    row("gen-top_k-float", G, w(GPT, top_k=1.5), 422, "top_k"),
    row("gen-repetition_penalty-zero", G, w(GPT, repetition_penalty=0), 422, "repetition_penalty"),
    row("gen-repetition_penalty-negative", G, w(GPT, repetition_penalty=-1.2), 422, "repetition_penalty"),
    row("gen-repetition_penalty-1e309", G, w(GPT, repetition_penalty=INF), 422, "repetition_penalty"),
    row(
        "gen-repetition_penalty-nan-token",
        G,
        w(GPT, repetition_penalty=NAN),
        (400, 422),
        "repetition_penalty",
    ),
    row(
        "gen-repetition_penalty-infinity-token",
        G,
        w(GPT, repetition_penalty=INFINITY),
        (400, 422),
        "repetition_penalty",
    ),
    row("gen-max_new_tokens-zero", G, w(GPT, max_new_tokens=0), 422, "max_new_tokens"),
    row("gen-max_new_tokens-negative", G, w(GPT, max_new_tokens=-5), 422, "max_new_tokens"),
    row("gen-max_new_tokens-1025", G, w(GPT, max_new_tokens=1025), 422, "max_new_tokens"),
    row("gen-max_new_tokens-huge", G, w(GPT, max_new_tokens=10**18), 422, "max_new_tokens"),
    row("gen-max_new_tokens-string", G, w(GPT, max_new_tokens="many"), 422, "max_new_tokens"),
    row("gen-seed-negative", G, w(GPT, seed=-1), 422, "seed"),
    row("gen-seed-string", G, w(GPT, seed="abc"), 422, "seed"),
    row("gen-stop-nine-strings", G, w(GPT, stop=[f"s{i}" for i in range(9)]), 422, "stop"),
    row("gen-stop-100000-strings", G, w(GPT, stop=["s"] * 100_000), 422, "stop"),
    row("gen-stop-65-characters", G, w(GPT, stop=["x" * 65]), 422, "stop"),
    row("gen-stop-empty-string", G, w(GPT, stop=["ok", ""]), 422, "stop"),
    row("gen-stop-not-a-list", G, w(GPT, stop="abc"), 422, "stop"),
    row("gen-stop-numbers", G, w(GPT, stop=[1]), 422, "stop"),
    row("gen-stream-not-bool", G, w(GPT, stream="maybe"), 422, "stream"),
    # Language model: fields of other kinds of model.
    row("gen-num_beams-on-gpt", G, w(GPT, num_beams=2), 422, "num_beams"),
    row("gen-input-on-gpt", G, w(GPT, input="3 May 2020"), 422, "input"),
    row("gen-num_samples-on-gpt", G, w(GPT, num_samples=2), 422, "num_samples"),
    row("gen-latent-on-gpt", G, w(GPT, latent=[[0.0] * 32]), 422, "latent"),
    row(
        "gen-interpolate-on-gpt", G, w(GPT, interpolate={"from": 1, "to": 2, "steps": 4}), 422, "interpolate"
    ),
    # Seq2seq.
    row("gen-s2s-prompt", G, w(S2S, prompt="x"), 422, "prompt"),
    row("gen-s2s-stream", G, w(S2S, stream=True), 422, "stream"),
    row("gen-s2s-num_samples", G, w(S2S, num_samples=2), 422, "num_samples"),
    row("gen-s2s-latent", G, w(S2S, latent=[[0.0] * 16]), 422, "latent"),
    row("gen-s2s-interpolate", G, w(S2S, interpolate={"from": 1, "to": 2, "steps": 4}), 422, "interpolate"),
    row("gen-s2s-num_beams-17", G, w(S2S, num_beams=17), 422, "num_beams"),
    row("gen-s2s-num_beams-zero", G, w(S2S, num_beams=0), 422, "num_beams"),
    row("gen-s2s-num_beams-huge", G, w(S2S, num_beams=10**6), 422, "num_beams"),
    row("gen-s2s-input-empty", G, w(S2S, input=""), 422, "input"),
    row("gen-s2s-input-missing", G, w(S2S, input=...), 422, "input"),
    row("gen-s2s-input-too-long", G, w(S2S, input="1" * S2S_MAX_LENGTH), 422, "input"),
    row("gen-s2s-input-huge", G, w(S2S, input="1" * 100_000), 422, "input"),
    row("gen-s2s-input-number", G, w(S2S, input=20210303), 422, "input"),
    row("gen-s2s-input-outside-vocabulary", G, w(S2S, input="3rd of März 2021"), 422, ("input", "vocab")),
    row("gen-s2s-max_new_tokens-zero", G, w(S2S, max_new_tokens=0), 422, "max_new_tokens"),
    row("gen-s2s-max_new_tokens-1025", G, w(S2S, max_new_tokens=1025), 422, "max_new_tokens"),
    # Image generators.
    row("gen-num_samples-65", G, w(DCGAN, num_samples=65), 422, "num_samples"),
    row("gen-num_samples-zero", G, w(DCGAN, num_samples=0), 422, "num_samples"),
    row("gen-num_samples-negative", G, w(DCGAN, num_samples=-1), 422, "num_samples"),
    row("gen-num_samples-100000", G, w(DCGAN, num_samples=100_000), 422, "num_samples"),
    row("gen-num_samples-string", G, w(DCGAN, num_samples="all"), 422, "num_samples"),
    row("gen-latent-wrong-length", G, w(DCGAN0, latent=[[0.1] * 31]), 422, "latent"),
    row("gen-latent-ragged", G, w(DCGAN0, latent=[[0.1, 0.2], [0.3]]), 422, "latent"),
    row("gen-latent-ragged-full-width", G, w(DCGAN0, latent=[[0.1] * 32, [0.1] * 31]), 422, "latent"),
    row("gen-latent-empty", G, w(DCGAN0, latent=[]), 422, "latent"),
    row("gen-latent-empty-row", G, w(DCGAN0, latent=[[]]), 422, "latent"),
    row("gen-latent-flat", G, w(DCGAN0, latent=[0.1] * 32), 422, "latent"),
    row("gen-latent-strings", G, w(DCGAN0, latent=[["a"] * 32]), 422, "latent"),
    row("gen-latent-1e309", G, w(DCGAN0, latent=[[INF] + [0.0] * 31]), 422, "latent"),
    row("gen-latent-nan-token", G, w(DCGAN0, latent=[[NAN] + [0.0] * 31]), (400, 422), "latent"),
    row("gen-latent-65-rows", G, w(DCGAN0, latent=[[0.0] * 32] * 65), 422, "latent"),
    row("gen-latent-and-num_samples", G, w(DCGAN, latent=[[0.0] * 32]), 422, "latent"),
    row("gen-temperature-on-dcgan", G, w(DCGAN, temperature=0.5), 422, "temperature"),
    row("gen-top_k-on-dcgan", G, w(DCGAN, top_k=5), 422, "top_k"),
    row("gen-top_p-on-dcgan", G, w(DCGAN, top_p=0.9), 422, "top_p"),
    row("gen-stop-on-dcgan", G, w(DCGAN, stop=["x"]), 422, "stop"),
    row("gen-prompt-on-dcgan", G, w(DCGAN, prompt="The "), 422, "prompt"),
    row("gen-input-on-dcgan", G, w(DCGAN, input="3 May 2020"), 422, "input"),
    row("gen-num_beams-on-dcgan", G, w(DCGAN, num_beams=2), 422, "num_beams"),
    row("gen-stream-on-dcgan", G, w(DCGAN, stream=True), 422, "stream"),
    row("gen-max_new_tokens-on-dcgan", G, w(DCGAN, max_new_tokens=5), 422, "max_new_tokens"),
    row("gen-map_unknown-on-dcgan", G, w(DCGAN, map_unknown=True), 422, "map_unknown"),
    row("gen-vae-latent-wrong-length", G, w(VAE0, latent=[[0.0] * 32]), 422, "latent"),
    row("gen-vae-num_samples-65", G, w(VAE0, num_samples=65), 422, "num_samples"),
    row("gen-vae-steps-65", G, w(VAE0, interpolate={"from": 1, "to": 2, "steps": 65}), 422, "steps"),
    row("gen-vae-steps-1", G, w(VAE0, interpolate={"from": 1, "to": 2, "steps": 1}), 422, "steps"),
    row("gen-vae-steps-missing", G, w(VAE0, interpolate={"from": 1, "to": 2}), 422, "steps"),
    row("gen-vae-steps-huge", G, w(VAE0, interpolate={"from": 1, "to": 2, "steps": 10**9}), 422, "steps"),
    row("gen-vae-from-negative", G, w(VAE0, interpolate={"from": -1, "to": 2, "steps": 4}), 422, "from"),
    row("gen-vae-interpolate-list", G, w(VAE0, interpolate=[1, 2, 8]), 422, "interpolate"),
    row(
        "gen-vae-interpolate-unknown-key",
        G,
        w(VAE0, interpolate={"from": 1, "to": 2, "steps": 4, "curve": "slerp"}),
        422,
        ("interpolate", "curve"),
    ),
    row(
        "gen-vae-interpolate-and-latent",
        G,
        w(VAE0, interpolate={"from": 1, "to": 2, "steps": 4}, latent=[[0.0] * 16]),
        422,
        ("latent", "interpolate"),
    ),
]

# The same mistakes with "stream": true are refused before the stream starts.
_STREAMED = [
    ("temperature-negative", {"temperature": -1}, 422, "temperature"),
    ("temperature-1e309", {"temperature": INF}, 422, "temperature"),
    ("top_p-zero", {"top_p": 0}, 422, "top_p"),
    ("top_p-1e309", {"top_p": INF}, 422, "top_p"),
    ("top_k-above-vocabulary", {"top_k": GPT_VOCAB + 1}, 422, "top_k"),
    ("repetition_penalty-1e309", {"repetition_penalty": INF}, 422, "repetition_penalty"),
    ("prompt-empty", {"prompt": ""}, 422, "prompt"),
    ("prompt-at-context", {"prompt": "a" * GPT_CONTEXT}, 422, "prompt"),
    ("prompt-outside-vocabulary", {"prompt": "é"}, 422, "prompt"),
    ("max_new_tokens-zero", {"max_new_tokens": 0}, 422, "max_new_tokens"),
    ("max_new_tokens-1025", {"max_new_tokens": 1025}, 422, "max_new_tokens"),
    ("stop-nine-strings", {"stop": list("abcdefghi")}, 422, "stop"),
    ("stop-65-characters", {"stop": ["y" * 65]}, 422, "stop"),
    ("stop-empty-string", {"stop": [""]}, 422, "stop"),
    ("num_beams-on-gpt", {"num_beams": 4}, 422, "num_beams"),
    ("unknown-field", {"bogus": 1}, 422, "bogus"),
    ("unknown-model", {"model": "nope"}, 404, "model"),
]
STREAM = [row(f"stream-{name}", G, w(GPT, stream=True, **ch), s, kw) for name, ch, s, kw in _STREAMED]

# ---------------------------------------------------------------- V2 infer, JSON

_NOT_FINITE = ("nan", "infinit", "finite", "json")
V2_JSON = [
    row("v2-unknown-model", "/v2/models/nope/infer", v2(mlp_tensor()), 404, "model"),
    row("v2-unknown-version", "/v2/models/mlp-digits/versions/9/infer", v2(mlp_tensor()), 404, "version"),
    row("v2-version-string", "/v2/models/mlp-digits/versions/abc/infer", v2(mlp_tensor()), 422, "version"),
    row("v2-version-negative", "/v2/models/mlp-digits/versions/-1/infer", v2(mlp_tensor()), 422, "version"),
    row("v2-inputs-missing", I_MLP, {"id": "x"}, 422, "inputs"),
    row("v2-inputs-empty", I_MLP, {"inputs": []}, 422, "inputs"),
    row("v2-inputs-object", I_MLP, {"inputs": mlp_tensor()}, 422, "inputs"),
    row("v2-inputs-null", I_MLP, {"inputs": None}, 422, "inputs"),
    row("v2-input-not-object", I_MLP, {"inputs": [5]}, 422, "inputs"),
    row("v2-name-list", I_MLP, v2(mlp_tensor(name=["input"])), 422, "name"),
    row("v2-name-number", I_MLP, v2(mlp_tensor(name=7)), 422, "name"),
    row("v2-name-object", I_MLP, v2(mlp_tensor(name={"a": 1})), 422, "name"),
    row("v2-name-missing", I_MLP, v2(mlp_tensor(name=...)), 422, "name"),
    row("v2-name-unknown", I_MLP, v2(mlp_tensor(name="nope")), 422, ("unknown", "nope")),
    row("v2-datatype-list", I_MLP, v2(mlp_tensor(datatype=["FP32"])), 422, "datatype"),
    row("v2-datatype-number", I_MLP, v2(mlp_tensor(datatype=32)), 422, "datatype"),
    row("v2-datatype-object", I_MLP, v2(mlp_tensor(datatype={"t": "FP32"})), 422, "datatype"),
    row("v2-datatype-missing", I_MLP, v2(mlp_tensor(datatype=...)), 422, "datatype"),
    row("v2-datatype-fp16", I_MLP, v2(mlp_tensor(datatype="FP16")), 422, "datatype"),
    row("v2-datatype-bytes", I_MLP, v2(mlp_tensor(datatype="BYTES")), 422, "datatype"),
    row("v2-datatype-lowercase", I_MLP, v2(mlp_tensor(datatype="fp32")), 422, "datatype"),
    row(
        "v2-datatype-int64-for-float", I_MLP, v2(mlp_tensor(datatype="INT64", data=[0] * 64)), 422, "datatype"
    ),
    row("v2-shape-missing", I_MLP, v2(mlp_tensor(shape=...)), 422, "shape"),
    row("v2-shape-string", I_MLP, v2(mlp_tensor(shape="1,64")), 422, "shape"),
    row("v2-shape-negative", I_MLP, v2(mlp_tensor(shape=[1, -64])), 422, "shape"),
    row("v2-shape-both-negative", I_MLP, v2(mlp_tensor(shape=[-1, -64])), 422, "shape"),
    row("v2-shape-float", I_MLP, v2(mlp_tensor(shape=[1.0, 64])), 422, "shape"),
    row("v2-shape-bool", I_MLP, v2(mlp_tensor(shape=[True, 64])), 422, "shape"),
    row("v2-shape-wrong-rank", I_MLP, v2(mlp_tensor(shape=[1, 64, 1])), 422, "shape"),
    row("v2-shape-empty", I_MLP, v2(mlp_tensor(shape=[])), 422, "shape"),
    row("v2-shape-batch-zero", I_MLP, v2(mlp_tensor(shape=[0, 64], data=[])), 422, ("batch", "shape")),
    row(
        "v2-shape-overflows-int64",
        I_MLP,
        v2(mlp_tensor(shape=[4294967296, 4294967296], data=...)),
        422,
        ("shape", "elements"),
    ),
    row(
        "v2-shape-overflows-int64-empty-data",
        I_MLP,
        v2(mlp_tensor(shape=[4294967296, 4294967296], data=[])),
        422,
        ("shape", "elements"),
    ),
    row("v2-shape-2pow63", I_MLP, v2(mlp_tensor(shape=[1, 2**63], data=...)), 422, ("shape", "elements")),
    row(
        "v2-shape-beyond-uint64",
        I_MLP,
        v2(mlp_tensor(shape=[2**70, 64], data=...)),
        (400, 422),
        ("shape", "elements", "json"),
    ),
    row(
        "v2-elements-over-limit",
        I_BERT,
        v2(
            {"name": "input_ids", "shape": [1, 2_000_000], "datatype": "INT64"},
            {"name": "attention_mask", "shape": [1, 2_000_000], "datatype": "INT64"},
        ),
        422,
        ("elements", "shape"),
    ),
    row(
        "v2-elements-over-limit-with-data",
        I_DCGAN,
        lambda: v2({"name": "latent", "shape": [256, 4097], "datatype": "FP32", "data": [0] * (256 * 4097)}),
        422,
        ("elements", "shape"),
        bound=3,
    ),
    row("v2-rows-257", I_MLP, v2(mlp_tensor(shape=[257, 64], data=ROW * 257)), 422, ("256", "rows", "batch")),
    row(
        "v2-rows-100000-no-data",
        I_MLP,
        v2(mlp_tensor(shape=[100_000, 64], data=...)),
        422,
        ("256", "rows", "batch", "elements"),
    ),
    row("v2-data-missing", I_MLP, v2(mlp_tensor(data=...)), 422, "data"),
    row("v2-data-too-short", I_MLP, v2(mlp_tensor(data=[0.0] * 63)), 422, ("data", "shape")),
    row("v2-data-too-long", I_MLP, v2(mlp_tensor(data=[0.0] * 65)), 422, ("data", "shape")),
    row("v2-data-strings", I_MLP, v2(mlp_tensor(data=["a"] * 64)), 422, "data"),
    row("v2-data-object", I_MLP, v2(mlp_tensor(data={"a": 1})), 422, "data"),
    row("v2-data-null", I_MLP, v2(mlp_tensor(data=None)), 422, ("data", "shape")),
    row("v2-data-ragged", I_MLP, v2(mlp_tensor(data=[[0.0] * 32, [0.0] * 31])), 422, ("data", "shape")),
    row("v2-data-1e309", I_MLP, v2(mlp_tensor(data=[INF] + [0.0] * 63)), (400, 422), _NOT_FINITE),
    row("v2-data-nan-token", I_MLP, v2(mlp_tensor(data=[NAN] + [0.0] * 63)), (400, 422), _NOT_FINITE),
    row("v2-data-float32-overflow", I_MLP, v2(mlp_tensor(data=[3.5e38] + [0.0] * 63)), 422, "overflows"),
    row("v2-parameters-string", I_MLP, v2(mlp_tensor(parameters="binary")), 422, "parameters"),
    row("v2-input-given-twice", I_MLP, v2(mlp_tensor(), mlp_tensor()), 422, ("twice", "duplicate")),
    row("v2-outputs-unknown", I_MLP, v2(mlp_tensor(), outputs=[{"name": "nope"}]), 422, "output"),
    row("v2-outputs-not-list", I_MLP, v2(mlp_tensor(), outputs="logits"), 422, "outputs"),
    row("v2-outputs-name-list", I_MLP, v2(mlp_tensor(), outputs=[{"name": ["logits"]}]), 422, "output"),
    row("v2-lstm-missing-lengths", I_LSTM, v2(lstm_v2([[5, 6]], [2])["inputs"][0]), 422, "lengths"),
    row("v2-lstm-batch-disagree", I_LSTM, lstm_v2([[5, 6], [7, 8]], [2]), 422, "batch"),
    row("v2-lstm-token-above-vocabulary", I_LSTM, lstm_v2([[5, LSTM_VOCAB]], [2]), 422, "token"),
    row("v2-lstm-token-negative", I_LSTM, lstm_v2([[5, -1]], [2]), 422, "token"),
    row("v2-lstm-token-huge", I_LSTM, lstm_v2([[5, 2**62]], [2]), 422, "token"),
    row("v2-lstm-lengths-zero", I_LSTM, lstm_v2([[5, 6]], [0]), 422, "lengths"),
    row("v2-lstm-lengths-negative", I_LSTM, lstm_v2([[5, 6]], [-3]), 422, "lengths"),
    row("v2-lstm-lengths-over-width", I_LSTM, lstm_v2([[5, 6]], [3]), 422, "lengths"),
    row(
        "v2-lstm-width-over-max-length",
        I_LSTM,
        lstm_v2([[5] * (LSTM_MAX_LENGTH + 1)], [LSTM_MAX_LENGTH + 1]),
        422,
        ("length", "tokens", "40"),
    ),
    row(
        "v2-bilstm-token-above-vocabulary",
        "/v2/models/bilstm-order/infer",
        lstm_v2([[99]], [1]),
        422,
        "token",
    ),
    row("v2-lstm-bool-datatype", I_LSTM, lstm_v2([[True, False]], [True], "BOOL"), 422, "datatype"),
    row("v2-lstm-fp32-datatype", I_LSTM, lstm_v2([[5.0, 6.0]], [2.0], "FP32"), 422, "datatype"),
    row("v2-bert-attention-mask-two", I_BERT, bert_v2([[1, 40, 41]], [[1, 1, 2]]), 422, "attention_mask"),
    row(
        "v2-bert-attention-mask-negative", I_BERT, bert_v2([[1, 40, 41]], [[1, -1, 1]]), 422, "attention_mask"
    ),
    row(
        "v2-bert-missing-mask",
        I_BERT,
        v2({"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 40]}),
        422,
        "attention_mask",
    ),
    row(
        "v2-bert-width-over-max-length",
        I_BERT,
        bert_v2([[40] * (BERT_MAX_LENGTH + 1)], [[1] * (BERT_MAX_LENGTH + 1)]),
        422,
        ("length", "tokens", "64"),
    ),
    row("v2-bert-token-above-vocabulary", I_BERT, bert_v2([[1, 500]], [[1, 1]]), 422, "token"),
    row(
        "v2-gpt-width-over-context",
        I_GPT,
        v2({"name": "tokens", "shape": [1, 129], "datatype": "INT64", "data": [40] * 129}),
        422,
        ("context", "length", "tokens", "128"),
    ),
    row(
        "v2-gpt-token-above-vocabulary",
        I_GPT,
        v2({"name": "tokens", "shape": [1, 2], "datatype": "INT64", "data": [40, GPT_VOCAB]}),
        422,
        "token",
    ),
    row(
        "v2-dcgan-latent-1e309",
        I_DCGAN,
        v2({"name": "latent", "shape": [1, 32], "datatype": "FP32", "data": [INF] + [0.0] * 31}),
        (400, 422),
        _NOT_FINITE,
    ),
]

# ---------------------------------------------------------------- V2 infer, binary tensor extension

_MLP_BIN = v2(bt("input", "FP32", [1, 64], 256))
_HIL = "inference-header-content-length"
V2_BINARY = [
    bin_row("v2bin-header-length-not-integer", I_MLP, binary(_MLP_BIN, f32(ROW), "abc"), 400, _HIL),
    bin_row("v2bin-header-length-negative", I_MLP, binary(_MLP_BIN, f32(ROW), "-1"), 400, _HIL),
    bin_row("v2bin-header-length-float", I_MLP, binary(_MLP_BIN, f32(ROW), "12.5"), 400, _HIL),
    bin_row("v2bin-header-length-empty", I_MLP, binary(_MLP_BIN, f32(ROW), ""), 400, _HIL),
    bin_row("v2bin-header-length-beyond-body", I_MLP, binary(_MLP_BIN, f32(ROW), "100000"), 400, _HIL),
    bin_row("v2bin-header-length-huge", I_MLP, binary(_MLP_BIN, f32(ROW), "9" * 30), 400, _HIL),
    bin_row("v2bin-header-length-zero", I_MLP, binary(_MLP_BIN, f32(ROW), "0"), 400, "json"),
    bin_row("v2bin-header-not-json", I_MLP, binary(b"\x00\x01not json at all", f32(ROW)), 400, "json"),
    bin_row("v2bin-header-array", I_MLP, binary(b"[1, 2, 3]", f32(ROW)), 400, "object"),
    bin_row(
        "v2bin-header-length-cuts-json",
        I_MLP,
        binary(_MLP_BIN, f32(ROW), str(len(encode(_MLP_BIN)) - 5)),
        400,
        "json",
    ),
    bin_row(
        "v2bin-size-past-end",
        I_MLP,
        binary(v2(bt("input", "FP32", [1, 64], 512)), f32(ROW)),
        400,
        "binary_data_size",
    ),
    bin_row(
        "v2bin-size-negative",
        I_MLP,
        binary(v2(bt("input", "FP32", [1, 64], -256)), f32(ROW)),
        400,
        "binary_data_size",
    ),
    bin_row(
        "v2bin-size-string",
        I_MLP,
        binary(v2(bt("input", "FP32", [1, 64], "256")), f32(ROW)),
        400,
        "binary_data_size",
    ),
    bin_row(
        "v2bin-size-float",
        I_MLP,
        binary(v2(bt("input", "FP32", [1, 64], 256.0)), f32(ROW)),
        400,
        "binary_data_size",
    ),
    bin_row(
        "v2bin-size-huge",
        I_MLP,
        binary(v2(bt("input", "FP32", [1, 64], 2**62)), f32(ROW)),
        400,
        "binary_data_size",
    ),
    bin_row("v2bin-unclaimed-tail", I_MLP, binary(_MLP_BIN, f32(ROW) + b"\x00" * 8), 400, "bytes"),
    bin_row("v2bin-no-binary-input-but-tail", I_MLP, binary(v2(mlp_tensor()), b"\x00" * 16), 400, "bytes"),
    bin_row(
        "v2bin-size-does-not-fit-shape",
        I_MLP,
        binary(v2(bt("input", "FP32", [1, 64], 128)), f32(ROW[:32])),
        (400, 422),
        ("shape", "binary_data_size", "bytes"),
    ),
    bin_row("v2bin-nan", I_MLP, binary(_MLP_BIN, f32([np.nan, *ROW[1:]])), 422, _NOT_FINITE),
    bin_row("v2bin-infinity", I_MLP, binary(_MLP_BIN, f32([-np.inf, *ROW[1:]])), 422, _NOT_FINITE),
    bin_row(
        "v2bin-token-above-vocabulary",
        I_LSTM,
        binary(
            v2(bt("tokens", "INT64", [1, 2], 16), bt("lengths", "INT64", [1], 8)), i64([5, 99]) + i64([2])
        ),
        422,
        "token",
    ),
    bin_row(
        "v2bin-shape-overflows-int64",
        I_MLP,
        binary(v2(bt("input", "FP32", [4294967296, 4294967296], 0))),
        422,
        ("shape", "elements"),
    ),
    bin_row(
        "v2bin-rows-257",
        I_MLP,
        binary(v2(bt("input", "FP32", [257, 64], 257 * 256)), f32(ROW * 257)),
        422,
        ("256", "rows", "batch"),
    ),
    bin_row(
        "v2bin-datatype-list",
        I_MLP,
        binary(v2({**bt("input", "FP32", [1, 64], 256), "datatype": ["FP32"]}), f32(ROW)),
        422,
        "datatype",
    ),
    bin_row(
        "v2bin-name-list",
        I_MLP,
        binary(v2({**bt("input", "FP32", [1, 64], 256), "name": ["input"]}), f32(ROW)),
        422,
        "name",
    ),
]

# ---------------------------------------------------------------- metadata, routes, methods

META = [
    get("meta-model-unknown", "/models/nope", 404, "model"),
    get("meta-model-version-unknown", "/models/mlp-digits?version=7", 404, "version"),
    get("meta-model-version-negative", "/models/mlp-digits?version=-1", 422, "version"),
    get("meta-model-version-string", "/models/mlp-digits?version=abc", 422, "version"),
    get("meta-model-version-float", "/models/mlp-digits?version=1.5", 422, "version"),
    get("meta-model-version-huge", "/models/mlp-digits?version=" + "9" * 30, 404, "version"),
    get("meta-model-path-traversal", "/models/..%2F..%2Fetc%2Fpasswd", 404, ("not found", "model")),
    get("meta-model-long-name", "/models/" + "a" * 5000, 404, "model"),
    get("meta-model-nul-name", "/models/mlp%00digits", 404, "model"),
    get("meta-v2-model-unknown", "/v2/models/nope", 404, "model"),
    get("meta-v2-version-unknown", "/v2/models/mlp-digits/versions/7", 404, "version"),
    get("meta-v2-version-string", "/v2/models/mlp-digits/versions/abc", 422, "version"),
    get("meta-v2-version-negative", "/v2/models/mlp-digits/versions/-1", 422, "version"),
    get("meta-v2-ready-unknown", "/v2/models/nope/ready", 404, "model"),
    get("meta-v2-ready-version-string", "/v2/models/mlp-digits/versions/abc/ready", 422, "version"),
    get("meta-unknown-route", "/nope", 404, "not found"),
    get("meta-get-predict", P, 405, "method"),
    get("meta-get-generate", G, 405, "method"),
    get("meta-get-v2-infer", I_MLP, 405, "method"),
    row("meta-delete-predict", P, None, 405, "method", method="DELETE", ctype=None),
    row("meta-post-model-metadata", "/models/mlp-digits", MLP, 405, "method"),
    row("meta-put-v2-infer", I_MLP, v2(mlp_tensor()), 405, "method", method="PUT"),
]

# ---------------------------------------------------------------- bodies over the byte limit

_OVER = 17 * MIB


def _chunks() -> Iterator[bytes]:
    for _ in range(_OVER // MIB):
        yield b" " * MIB


TOO_LARGE = [
    row(f"limit-{where}-17mib", path, lambda: b" " * _OVER, 413, ("large", "bytes", "limit"), bound=5)
    for where, path in (("predict", P), ("generate", G), ("v2", I_MLP))
] + [
    row(f"limit-{where}-17mib-chunked", path, _chunks, 413, ("large", "bytes", "limit"), bound=5)
    for where, path in (("predict", P), ("generate", G), ("v2", I_MLP))
]

# ---------------------------------------------------------------- valid edges: must succeed


def outputs(n: int) -> Callable[[httpx.Response], str | None]:
    def check(r: httpx.Response) -> str | None:
        got = len(r.json()["outputs"])
        return None if got == n else f"{got} outputs, expected {n}"

    return check


def top_k_len(n: int):
    def check(r: httpx.Response) -> str | None:
        got = len(r.json()["outputs"][0]["top_k"])
        return None if got == n else f"top_k has {got} entries, expected {n}"

    return check


def images(n: int):
    def check(r: httpx.Response) -> str | None:
        got = len(r.json().get("images") or r.json().get("arrays") or [])
        return None if got == n else f"{got} images, expected {n}"

    return check


def finite_probabilities(r: httpx.Response) -> str | None:
    for item in r.json()["outputs"]:
        values = [item.get("probability"), *item.get("probabilities", [])]
        bad = [v for v in values if not isinstance(v, int | float) or not 0.0 <= v <= 1.0]
        if bad:
            return f"probabilities not finite numbers in [0, 1]: {bad[:3]}"
    return None


def finite_everywhere(r: httpx.Response) -> str | None:
    flat = []

    def walk(x):
        if isinstance(x, list | dict):
            for v in x.values() if isinstance(x, dict) else x:
                walk(v)
        elif not isinstance(x, str):
            flat.append(x)

    walk(r.json()["outputs"])
    bad = [v for v in flat if v is None or (isinstance(v, float) and not np.isfinite(v))]
    return f"non-finite values in the outputs: {bad[:3]}" if bad else None


def is_sse(r: httpx.Response) -> str | None:
    if not r.headers.get("content-type", "").startswith("text/event-stream"):
        return f"content-type {r.headers.get('content-type')!r}, expected text/event-stream"
    return None if "finish_reason" in r.text else "no summary event"


def binary_response(r: httpx.Response) -> str | None:
    return None if _HIL in r.headers else "no Inference-Header-Content-Length in a binary response"


def ok(id: str, path: str, body: Any, check=None, **kw):
    return row(id, path, body, 200, check=check, **kw)


_HUGE = 3e38
VALID = [
    ok("ok-predict-version-explicit", P, w(MLP, version=1), outputs(1)),
    ok("ok-predict-top_k-equals-classes", P, w(MLP, top_k=10), top_k_len(10)),
    ok("ok-predict-top_k-equals-classes-lstm", P, w(LSTM, top_k=4), top_k_len(4)),
    ok("ok-predict-256-items", P, w(MLP, inputs=[ROW] * 256), outputs(256), bound=4),
    ok("ok-predict-256-texts", P, w(LSTM, inputs=["ABefCD"] * 256), outputs(256), bound=4),
    ok("ok-predict-256-images", P, lambda: w(MLP, inputs=[digit_png()] * 256), outputs(256), bound=4),
    ok("ok-predict-text-at-max-length", P, w(LSTM, inputs=["A" * LSTM_MAX_LENGTH]), outputs(1)),
    ok("ok-predict-text-map_unknown", P, w(LSTM, inputs=["abcd", "AB\x00CD"], map_unknown=True), outputs(2)),
    ok(
        "ok-predict-text-at-max-length-bert",
        P,
        {"model": "bert-scramble", "inputs": ["a" * (BERT_MAX_LENGTH - 1)]},
        outputs(1),
    ),
    ok("ok-predict-png", P, lambda: w(MLP, inputs=digit_png()), outputs(1)),
    ok("ok-predict-jpeg", P, lambda: {"model": "lenet5-digits", "inputs": [b64_image(28, 28, "L", "JPEG")]}),
    ok("ok-predict-rgba-png", P, lambda: {"model": "resnet-shapes", "inputs": [b64_image(32, 32, "RGBA")]}),
    ok("ok-predict-palette-png", P, lambda: {"model": "resnet-shapes", "inputs": [b64_image(40, 20, "P")]}),
    ok("ok-predict-1x1-png", P, lambda: {"model": "lenet5-digits", "inputs": [b64_image(1, 1)]}),
    ok("ok-predict-image-at-pixel-limit", P, lambda: w(MLP, inputs=[b64_image(4096, 4096)]), bound=4),
    ok(
        "ok-predict-reconstruction-png",
        P,
        lambda: {"model": "autoencoder-digits", "inputs": [digit_png()], "format": "png"},
    ),
    ok("ok-ctype-predict-json-charset", P, MLP, ctype="application/json; charset=utf-8"),
    ok("ok-ctype-predict-plus-json", P, MLP, ctype="application/vnd.api+json"),
    ok("ok-ctype-predict-absent", P, MLP, ctype=None),
    ok("ok-ctype-generate-json-charset", G, DCGAN, ctype="application/json; charset=utf-8"),
    ok("ok-ctype-generate-plus-json", G, DCGAN, ctype="application/problem+json"),
    ok("ok-ctype-generate-absent", G, DCGAN, ctype=None),
    ok("ok-ctype-v2-absent", I_MLP, v2(mlp_tensor()), ctype=None),
    ok("ok-ctype-v2-octet-stream", I_MLP, v2(mlp_tensor()), ctype=OCTET),
    ok("ok-ctype-v2-json-charset", I_MLP, v2(mlp_tensor()), ctype="application/json; charset=utf-8"),
    ok("ok-gen-num_samples-64", G, w(DCGAN, num_samples=64), images(64), bound=5),
    ok("ok-gen-latent-right-size", G, w(DCGAN0, latent=[[0.1] * 32] * 2), images(2)),
    ok("ok-gen-latent-64-rows", G, w(DCGAN0, latent=[[0.0] * 32] * 64, format="array"), images(64), bound=5),
    ok("ok-gen-vae-latent-right-size", G, w(VAE0, latent=[[0.1] * 16]), images(1)),
    ok(
        "ok-gen-vae-interpolate-64",
        G,
        w(VAE0, interpolate={"from": 1, "to": 2, "steps": 64}),
        images(64),
        bound=5,
    ),
    ok("ok-gen-prompt-below-context", G, w(GPT, prompt="a" * (GPT_CONTEXT - 1), max_new_tokens=1)),
    ok("ok-gen-top_k-equals-vocabulary", G, w(GPT, top_k=GPT_VOCAB)),
    ok("ok-gen-top_p-one-temperature-zero", G, w(GPT, top_p=1, temperature=0)),
    ok("ok-gen-stop-eight-of-64", G, w(GPT, stop=[chr(65 + i) * 64 for i in range(8)])),
    ok("ok-gen-max_new_tokens-one", G, w(GPT, max_new_tokens=1)),
    ok("ok-gen-stream", G, w(GPT, stream=True), is_sse),
    ok("ok-gen-s2s-num_beams-16", G, w(S2S, num_beams=16), bound=8),
    ok("ok-gen-s2s-map_unknown", G, w(S2S, input="3rd of März 2021", map_unknown=True)),
    ok("ok-gen-prompt-map_unknown", G, w(GPT, prompt="héllo \U0001f642", map_unknown=True)),
    ok("ok-gen-s2s-input-at-max-length", G, w(S2S, input="1" * (S2S_MAX_LENGTH - 1), max_new_tokens=4)),
    ok("ok-v2-version-explicit", "/v2/models/mlp-digits/versions/1/infer", v2(mlp_tensor())),
    ok("ok-v2-int32-widened", I_LSTM, lstm_v2([[5, 6, 7]], [3], "INT32")),
    ok("ok-v2-fp64-cast", I_MLP, v2(mlp_tensor(datatype="FP64"))),
    ok("ok-v2-256-rows", I_MLP, v2(mlp_tensor(shape=[256, 64], data=ROW * 256)), bound=4),
    bin_row("ok-v2-header-length-on-json-body", I_MLP, binary(v2(mlp_tensor())), 200, ctype=JSON_CT),
    bin_row("ok-v2bin-exact", I_MLP, binary(_MLP_BIN, f32(ROW)), 200),
    bin_row(
        "ok-v2bin-exact-lstm",
        I_LSTM,
        binary(
            v2(bt("tokens", "INT64", [2, 3], 48), bt("lengths", "INT64", [2], 16)),
            i64([5, 6, 7] * 2) + i64([3, 2]),
        ),
        200,
    ),
    bin_row(
        "ok-v2bin-int32-widened",
        I_LSTM,
        binary(
            v2(bt("tokens", "INT32", [1, 3], 12), bt("lengths", "INT32", [1], 4)),
            np.asarray([5, 6, 7, 3], "<i4").tobytes(),
        ),
        200,
    ),
    bin_row(
        "ok-v2bin-binary-output",
        I_MLP,
        binary(v2(bt("input", "FP32", [1, 64], 256), parameters={"binary_data_output": True}), f32(ROW)),
        200,
        check=binary_response,
    ),
    bin_row(
        "ok-v2bin-256-rows", I_MLP, binary(v2(bt("input", "FP32", [256, 64], 256 * 256)), f32(ROW * 256)), 200
    ),
    get("ok-meta-model-version-explicit", "/models/mlp-digits?version=1", 200),
    get("ok-meta-v2-version-explicit", "/v2/models/mlp-digits/versions/1", 200),
    # Huge logits: finite probabilities, or the input refused; never null or NaN.
    row(
        "ok-huge-logits-mlp",
        P,
        w(MLP, inputs=[[_HUGE] * 64]),
        (200, 422),
        "inputs",
        check=finite_probabilities,
    ),
    row(
        "ok-huge-logits-mlp-negative",
        P,
        w(MLP, inputs=[[-_HUGE] * 64]),
        (200, 422),
        "inputs",
        check=finite_probabilities,
    ),
    row(
        "ok-huge-logits-mlp-alternating",
        P,
        w(MLP, inputs=[[_HUGE, -_HUGE] * 32, ROW]),
        (200, 422),
        "inputs",
        check=finite_probabilities,
    ),
    row(
        "ok-huge-logits-mlp-top_k",
        P,
        w(MLP, inputs=[[_HUGE] * 64], top_k=3),
        (200, 422),
        "inputs",
        check=lambda r: (
            None
            if all(isinstance(e["probability"], float) for e in r.json()["outputs"][0]["top_k"])
            else "a top_k probability is not a number"
        ),
    ),
    row(
        "ok-huge-logits-lenet",
        P,
        {"model": "lenet5-digits", "inputs": [[[[_HUGE] * 28] * 28]]},
        (200, 422),
        "inputs",
        check=finite_probabilities,
    ),
    row(
        "ok-huge-logits-resnet",
        P,
        {"model": "resnet-shapes", "inputs": [[[[_HUGE] * 32] * 32] * 3]},
        (200, 422),
        "inputs",
        check=finite_probabilities,
    ),
    row(
        "ok-huge-inputs-autoencoder",
        P,
        {"model": "autoencoder-digits", "inputs": [[[[_HUGE] * 28] * 28]], "return_latent": True},
        (200, 422),
        "inputs",
        check=finite_everywhere,
    ),
]

CASES = (
    PARSE
    + CONTENT_TYPES
    + PREDICT
    + IMAGES
    + GENERATE
    + STREAM
    + V2_JSON
    + V2_BINARY
    + META
    + TOO_LARGE
    + VALID
)
_IDS = [p.id for p in CASES]
assert len(_IDS) == len(set(_IDS)), sorted({i for i in _IDS if _IDS.count(i) > 1})


# ------------------------------------------------------------------------------------------ checks

_FORBIDDEN = (
    "object at",
    "traceback",
    "onnxruntime",
    "node",
    "/gather",
    "/tmp",
    "/work",
    "/home",
    "/usr/",
    "site-packages",
    "bytesio",
    'file "',
    ".py",
)
_ADDRESS = re.compile(r"\b0x[0-9a-f]{6,}")
_NODE = re.compile(r"/[A-Z][A-Za-z]*(?:_\d+|/)")


def leaks(message: str, repository: str) -> list[str]:
    low = message.lower()
    found = [f for f in _FORBIDDEN if f in low]
    if repository.lower() in low:
        found.append("the repository path")
    if _ADDRESS.search(low):
        found.append("a heap address")
    if _NODE.search(message):
        found.append("an ONNX node name")
    return found


def error_problems(response: httpx.Response, case: Case, repository: str) -> list[str]:
    problems = []
    if not response.headers.get("content-type", "").startswith("application/json"):
        problems.append(f"content-type {response.headers.get('content-type')!r}, not JSON")
    try:
        body = response.json()
    except ValueError:
        return [*problems, f"body is not JSON: {response.text[:200]!r}"]
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], str):
        return [*problems, f"body is not {{'error': str}}: {str(body)[:200]}"]
    message = body["error"]
    if case.keyword and not any(k in message.lower() for k in case.keyword):
        problems.append(f"message does not name {' / '.join(case.keyword)}: {message[:300]!r}")
    leaked = leaks(message, repository)
    if leaked:
        problems.append(f"message leaks {', '.join(leaked)}: {message[:300]!r}")
    return problems


def health_problems(client: httpx.Client) -> list[str]:
    started = time.perf_counter()
    try:
        live = client.get("/health/live", timeout=1.0)
    except httpx.HTTPError as exc:
        return [f"/health/live failed afterwards: {type(exc).__name__}"]
    took = time.perf_counter() - started
    problems = [] if live.status_code == 200 else [f"/health/live answered {live.status_code}"]
    if took > 1.0:
        problems.append(f"/health/live took {took:.2f} s")
    return problems


def run_case(client: httpx.Client, case: Case, repository: str) -> None:
    """One row: exact status, a JSON error naming the field, no leak, in time, server still live."""
    content = case.content()
    headers = dict(case.headers)
    if case.ctype is not None:
        headers["Content-Type"] = case.ctype
    started = time.perf_counter()
    try:
        response = client.request(
            case.method, case.path, content=content, headers=headers, timeout=case.bound + 5
        )
    except httpx.HTTPError as exc:
        problems = [f"no answer: {type(exc).__name__}: {exc}"]
    else:
        took = time.perf_counter() - started
        problems = []
        status = response.status_code
        if status not in case.statuses:
            expected = " or ".join(map(str, case.statuses))
            problems.append(f"status {status}, expected {expected}: {response.text[:300]!r}")
        if status >= 500:
            problems.append("a client mistake answered with a 5xx")
        if status == 200 and 200 in case.statuses:
            if case.check is not None:
                problem = case.check(response)
                if problem:
                    problems.append(problem)
        elif status != 200:
            problems += error_problems(response, case, repository)
        if took > case.bound:
            problems.append(f"took {took:.2f} s (bound {case.bound} s)")
    problems += health_problems(client)
    assert not problems, "; ".join(problems)


@pytest.mark.parametrize("case", CASES)
def test_hostile(hc, hostile_repo, case: Case) -> None:
    run_case(hc, case, str(hostile_repo))


# ------------------------------------------------------------------------------------------ raw HTTP


def raw_exchange(
    port: int, head: bytes, body: bytes = b"", timeout: float = 5.0
) -> tuple[int | None, bytes, float]:
    """Send bytes as they are; (status or None when the connection closed unanswered, body, seconds)."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(head + body)
        try:
            response = http.client.HTTPResponse(sock)
            response.begin()
            data = response.read()
            return response.status, data, time.perf_counter() - started
        except (OSError, http.client.HTTPException):
            return None, b"", time.perf_counter() - started


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def raw_json_problems(status, data, expected, keywords, repository) -> list[str]:
    if status != expected:
        return [f"status {status}, expected {expected}: {data[:200]!r}"]
    try:
        body = json.loads(data)
        message = body["error"]
    except (ValueError, KeyError, TypeError):
        return [f"body is not {{'error': str}}: {data[:200]!r}"]
    problems = []
    if not any(k in message.lower() for k in keywords):
        problems.append(f"message does not name {' / '.join(keywords)}: {message!r}")
    leaked = leaks(message, repository)
    if leaked:
        problems.append(f"message leaks {', '.join(leaked)}: {message!r}")
    return problems


ENDPOINTS = [pytest.param(P, id="predict"), pytest.param(G, id="generate"), pytest.param(I_MLP, id="v2")]


@pytest.mark.parametrize("path", [*ENDPOINTS, pytest.param("/health/live", id="health")])
def test_raw_header_of_200kb(hostile_server, hc, path) -> None:
    head = request_head(
        "POST", path, {"Content-Type": JSON_CT, "X-Padding": "a" * 200_000, "Content-Length": "2"}
    )
    status, data, took = raw_exchange(hostile_server.port, head, b"{}")
    problems = []
    if status != 431:  # the launcher's head bound (app/server.py)
        problems.append(f"status {status}, expected 431: {data[:200]!r}")
    if took > 2.0:
        problems.append(f"took {took:.2f} s")
    problems += health_problems(hc)
    assert not problems, "; ".join(problems)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_raw_declared_length_over_limit(hostile_server, hc, hostile_repo, path) -> None:
    head = request_head("POST", path, {"Content-Type": JSON_CT, "Content-Length": str(_OVER)})
    status, data, took = raw_exchange(hostile_server.port, head, b'{"model": ')
    problems = raw_json_problems(status, data, 413, ("large", "bytes", "limit"), str(hostile_repo))
    if took > 2.0:
        problems.append(f"took {took:.2f} s")
    problems += health_problems(hc)
    assert not problems, "; ".join(problems)


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"GARBAGE\r\n\r\n", id="garbage-request-line"),
        pytest.param(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", id="length-not-number"
        ),
        pytest.param(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", id="length-negative"
        ),
        pytest.param(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 9\r\n\r\n{}",
            id="length-twice-differing",
        ),
    ],
)
def test_raw_malformed_framing(hostile_server, hc, head) -> None:
    status, data, took = raw_exchange(hostile_server.port, head)
    problems = []
    if status is not None and not 400 <= status < 500:
        problems.append(f"status {status}, expected a 4xx (or the connection closed): {data[:200]!r}")
    if took > 2.0:
        problems.append(f"took {took:.2f} s")
    problems += health_problems(hc)
    assert not problems, "; ".join(problems)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_raw_body_never_arrives(slow_body_server, path) -> None:
    head = request_head("POST", path, {"Content-Type": JSON_CT, "Content-Length": "1000"})
    status, data, took = raw_exchange(slow_body_server.port, head, b'{"model": "mlp', timeout=6.0)
    problems = raw_json_problems(status, data, 408, ("timeout", "time", "body"), "/nonexistent")
    if took > 3.0:
        problems.append(f"took {took:.2f} s (body timeout 1 s)")
    with httpx.Client(base_url=slow_body_server.url) as c:
        problems += health_problems(c)
    assert not problems, "; ".join(problems)
