"""The data plane: what every endpoint does once its request is parsed (MLServer's layering: routes ->
data plane -> registry -> runner). No HTTP here, so the routes stay thin and the logic testable."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel

from app import codecs, logs, tracing
from app import v2_tensors as v2
from app.core.decoding import beam_search, greedy_decode
from app.core.diffusion import alphas_cumprod, ddim_sample, initial_noise, make_betas
from app.core.embeddings import cosine_ranking, zero_shot_logits
from app.core.repository_format import GenerationDefaults
from app.core.sampling import SamplingParams
from app.decode_loop import GenerationFailed, Sequence, StoppingCriteria
from app.errors import InferenceFailed, InvalidInput, ServingError
from app.kinds import (
    CLASS_INPUT,
    GENERATE,
    PREDICT,
    Kind,
    generate_kind,
    predict_kind,
    refuse_other_kinds_fields,
)
from app.registry import ModelVersion, Registry
from app.runner import Runner
from app.settings import Settings

log = logging.getLogger(__name__)


async def run_rows(runner: Runner, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run any number of rows through ``runner``, in chunks of at most max_batch_size rows (the chunks
    queue like any other requests); outputs by name, rows in input order."""
    rows = len(next(iter(feeds.values())))
    step = runner.batching.max_batch_size
    chunks = [{k: v[i : i + step] for k, v in feeds.items()} for i in range(0, rows, step)]
    if len(chunks) == 1:
        parts = [await runner.infer(chunks[0])]
    else:
        parts = await asyncio.gather(*(runner.infer(chunk) for chunk in chunks))
    names = [spec.name for spec in runner.graph.outputs]
    return {
        name: parts[0][i] if len(parts) == 1 else np.concatenate([p[i] for p in parts])
        for i, name in enumerate(names)
    }


def _dual_answer(mv: ModelVersion, task: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """A dual encoder's answer; ``task`` says which of its three things it did."""
    return {"model": mv.name, "version": mv.version, "task": task, "outputs": items}


class DataPlane:
    def __init__(self, registry: Registry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        self.predict_limits = codecs.PredictLimits(
            settings.max_items_per_request,
            settings.max_tensor_elements,
            settings.max_image_pixels,
            settings.max_request_pixels,
        )
        self.v2_limits = v2.TensorLimits(settings.max_items_per_request, settings.max_tensor_elements)
        # Image decoding of large requests (Pillow releases the interpreter while it decodes). Bounded:
        # a flood of large images queues here instead of starting a thread each.
        self._decoders = ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode")

    def close(self) -> None:
        self._decoders.shutdown(wait=False, cancel_futures=True)

    async def predict(self, request: BaseModel) -> dict[str, Any]:
        """POST /predict for its parsed body (app/api/schemas.py's PredictRequest)."""
        mv = self.registry.get(request.model, request.version)
        started = time.perf_counter_ns()
        try:
            result = await self._predict(mv, request)
        except BaseException:
            mv.stats.record(False, time.perf_counter_ns() - started)
            raise
        mv.stats.record(True, time.perf_counter_ns() - started)
        return result

    async def _predict(self, mv: ModelVersion, request: BaseModel) -> dict[str, Any]:
        config = mv.config
        kind = predict_kind(mv)
        refuse_other_kinds_fields(PREDICT, request, kind, mv.name)
        if kind is Kind.DUAL_ENCODER:
            return await self._dual_encoder(mv, request)
        top_k, inputs = request.top_k, request.inputs
        if top_k is not None and top_k > len(config.labels):
            raise InvalidInput(f"top_k is {top_k}; the model has {len(config.labels)} classes")
        runner = mv.runner(translation_role(mv, request.direction) if kind is Kind.IMAGE_TRANSLATOR else None)
        feeds = await self._feeds(mv, runner, inputs, request.map_unknown)
        results = await run_rows(runner, feeds)
        if kind in (Kind.CLASSIFIER, Kind.TEXT_CLASSIFIER):
            logits = results[runner.graph.outputs[0].name]
            items = codecs.classification_items(config.labels, logits, top_k)
        else:
            items = await self._reconstruction_items(
                mv, kind, results, request.return_latent, request.return_reconstruction, request.format
            )
        head = {"model": mv.name, "version": mv.version, "task": config.task}
        if kind is Kind.IMAGE_TRANSLATOR:
            head["direction"] = request.direction
        return {**head, "outputs": items}

    async def _feeds(
        self, mv: ModelVersion, runner: Runner, inputs: str | list, map_unknown: bool
    ) -> dict[str, np.ndarray]:
        """/predict's items as ``runner``'s feeds (codecs.PredictFeeds): counts, headers and the pixel
        budget first, then the decoding; large conversions on the worker pool, off the event loop."""
        prepare = functools.partial(
            codecs.PredictFeeds, mv, runner.graph, inputs, self.predict_limits, map_unknown=map_unknown
        )
        loop = asyncio.get_running_loop()
        if codecs.many_numbers(inputs):
            prepared = await loop.run_in_executor(self._decoders, prepare)
        else:
            prepared = prepare()
        if prepared.heavy:
            return await loop.run_in_executor(self._decoders, prepared.build)
        return prepared.build()

    async def _dual_encoder(self, mv: ModelVersion, request: BaseModel) -> dict[str, Any]:
        """A dual encoder (CLIP) at /predict: the embeddings of its images, or of its texts
        (``{"text": ...}`` items); with ``labels``, zero-shot classification of the images; with
        ``query``, the images (the gallery) ranked for each query. Every count, text and top_k is
        checked before an image is decoded or a graph runs; both encoders' calls go through their
        batchers, concurrently."""
        settings = self.settings
        labels = request.labels
        queries = [request.query] if isinstance(request.query, str) else list(request.query or [])
        if labels and queries:
            raise InvalidInput("give labels (zero-shot classification) or query (retrieval), not both")
        # The same bounds as bodies.LIST_LIMITS, which counted them on the parsed JSON already.
        for name, given, limit, what in (
            ("labels", labels, settings.max_labels, "labels"),
            ("query", queries, settings.max_queries, "queries"),
        ):
            if len(given) > limit:
                raise InvalidInput(f"{name} holds {len(given)} {what}; at most {limit}", param=name)
        prompts, field = (labels, "labels") if labels else (queries, "query")
        images, words = mv.runners["image_encoder"], mv.runners["text_encoder"]
        text_pre = mv.config.text_preprocessing
        texts = codecs.text_items(request.inputs, settings.max_items_per_request)
        if texts is not None:  # text embeddings
            if prompts:
                raise InvalidInput(f"{field} ranks images: inputs must be images, not texts")
            if request.top_k is not None:
                raise InvalidInput("top_k needs labels (zero-shot) or query (retrieval)", param="top_k")
            feeds = codecs.text_feeds(mv, texts, words.graph, request.map_unknown, pre=text_pre)
            embeds = (await run_rows(words, feeds))[words.graph.outputs[0].name]
            return _dual_answer(mv, "embedding", [{"embedding": row} for row in embeds.tolist()])

        count = len(codecs.as_items(request.inputs, len(images.graph.inputs[0].shape) - 1, False))
        if queries and count > settings.max_gallery_images:
            raise InvalidInput(
                f"inputs holds {count} gallery images; at most {settings.max_gallery_images}", param="inputs"
            )
        top_k = request.top_k
        if top_k is not None:
            if not prompts:
                raise InvalidInput("top_k needs labels (zero-shot) or query (retrieval)", param="top_k")
            candidates, what = (len(labels), "labels") if labels else (count, "gallery images")
            if top_k > candidates:
                raise InvalidInput(f"top_k is {top_k}; the request has {candidates} {what}", param="top_k")
        prompt_feeds = None
        if prompts:  # checked (length, then characters) before any image is decoded
            prompt_feeds = codecs.text_feeds(
                mv, prompts, words.graph, request.map_unknown, pre=text_pre, field=field
            )
        image_feeds = await self._feeds(mv, images, request.inputs, False)
        calls = [run_rows(images, image_feeds)] + ([run_rows(words, prompt_feeds)] if prompts else [])
        image_out, *text_out = await asyncio.gather(*calls)
        image_embeds = image_out[images.graph.outputs[0].name]
        codecs.check_finite(image_embeds)
        if not prompts:
            return _dual_answer(mv, "embedding", [{"embedding": row} for row in image_embeds.tolist()])
        prompt_embeds = text_out[0][words.graph.outputs[0].name]
        if labels:
            logits = zero_shot_logits(image_embeds, prompt_embeds, image_out["logit_scale"])
            items = codecs.classification_items(labels, logits, top_k)
            extra = image_embeds  # return_embedding: each image's
            task = "zero_shot_classification"
        else:
            order, scores = cosine_ranking(prompt_embeds, image_embeds, top_k)
            items = [
                {"query": query, "ranking": codecs.ranking(indices, values)}
                for query, indices, values in zip(queries, order, scores, strict=True)
            ]
            extra = prompt_embeds  # return_embedding: each query's
            task = "retrieval"
        if request.return_embedding:
            for item, row in zip(items, extra.tolist(), strict=True):
                item["embedding"] = row
        return _dual_answer(mv, task, items)

    async def _reconstruction_items(
        self,
        mv: ModelVersion,
        kind: Kind,
        results: dict[str, np.ndarray],
        return_latent: bool,
        return_reconstruction: bool,
        fmt: str,
    ) -> list[dict[str, Any]]:
        post = mv.config.postprocessing
        for array in results.values():
            codecs.check_finite(array)
        columns: dict[str, list] = {}
        if kind is Kind.VAE:  # the encoder gives the posterior; optionally the decoded mean too
            columns["mu"] = results["mu"].tolist()
            columns["logvar"] = results["logvar"].tolist()
            if return_reconstruction and "decoder" in mv.runners:
                decoder = mv.runners["decoder"]
                decoded = await run_rows(decoder, {decoder.graph.inputs[0].name: results["mu"]})
                codecs.check_finite(decoded["reconstruction"])
                columns["reconstruction"] = codecs.image_values(decoded["reconstruction"], post, fmt)
        else:
            for name, array in results.items():
                if name == "latent" and not return_latent:
                    continue
                columns[name] = codecs.image_values(array, post, fmt) if array.ndim == 4 else array.tolist()
        count = len(next(iter(columns.values())))
        return [{name: values[i] for name, values in columns.items()} for i in range(count)]

    async def infer_v2(
        self, model: str, version: int | None, body: bytes, header_length: str | None
    ) -> tuple[bytes, int | None]:
        mv = self.registry.get(model, version)
        started = time.perf_counter_ns()
        try:
            answer = await self._infer_v2(mv, body, header_length)
        except BaseException:
            mv.stats.record(False, time.perf_counter_ns() - started)
            raise
        mv.stats.record(True, time.perf_counter_ns() - started)
        return answer

    async def _infer_v2(
        self, mv: ModelVersion, body: bytes, header_length: str | None
    ) -> tuple[bytes, int | None]:
        with tracing.span("parse"):
            header, binary = v2.parse_body(body, header_length, self.settings.max_json_bytes)
            runner = mv.runner()
            feeds = v2.decode_inputs(header, binary, runner.graph, self.v2_limits)
        if mv.tokenizer is not None:
            v2.check_token_inputs(feeds, mv.tokenizer.vocab_size, mv.config.text_input.max_length)
        chosen = v2.requested_outputs(header, runner.graph)
        results = await run_rows(runner, feeds)
        # The protocol's id: the client's, else this request's X-Request-Id (the same in the logs).
        request_id = header.get("id") or logs.request_id()
        with tracing.span("serialize"):
            return v2.encode_response(mv.name, mv.version, request_id, results, chosen)


def translation_role(mv: ModelVersion, direction: str | None) -> str:
    """An image translator's graph for ``direction`` (its role in config.json); 422 naming the choices."""
    choices = ", ".join(mv.config.graphs)
    if direction is None:
        raise InvalidInput(
            f"direction is required for model {mv.name!r}, an image translator: one of {choices}",
            param="direction",
        )
    if direction not in mv.config.graphs:
        raise InvalidInput(
            f"direction {direction!r} is not one of model {mv.name!r}'s: {choices}", param="direction"
        )
    return direction


def requested_classes(
    mv: ModelVersion, value: int | list[int] | None, count: int | None, limit: int
) -> np.ndarray:
    """A class-conditional generator's class ids, one per image, checked against the model's labels:
    ``value`` is one id for every image, one id per image, or None for the classes in turn (0, 1, 2,
    ...). ``count`` is how many images the other fields ask for (None: as many as a list holds, else
    the model's default number), at most ``limit``."""
    labels = mv.config.labels or []
    if value is None:
        n = count or mv.config.generation.num_samples
        return np.arange(n, dtype=np.int64) % max(len(labels), 1)
    if isinstance(value, list):
        if not 1 <= len(value) <= limit:
            raise InvalidInput(
                f"class must list 1 to {limit} ids (one per image); got {len(value)}", param="class"
            )
        if count is not None and len(value) != count:
            raise InvalidInput(
                f"class lists {len(value)} ids for {count} images; give one per image", param="class"
            )
    ids = value if isinstance(value, list) else [value] * (count or mv.config.generation.num_samples)
    bad = next((i for i in ids if not 0 <= i < len(labels)), None)
    if bad is not None:
        shown = ", ".join(f"{i} ({label})" for i, label in enumerate(labels))
        raise InvalidInput(f"class {bad} is not an id of the model's classes: {shown}", param="class")
    return np.asarray(ids, np.int64)


# ------------------------------------------------------------------------------------------- generation


def check_max_new_tokens(
    value: int | None, defaults: GenerationDefaults, limit: int, where: str = "max_new_tokens"
) -> int:
    """A request's token budget (the model's default when not given), within [1, limit]."""
    max_new = value if value is not None else defaults.max_new_tokens
    if not 1 <= max_new <= limit:
        raise InvalidInput(f"{where} must be in [1, {limit}]; got {max_new}", param=where)
    return max_new


def _through_eos(ids: np.ndarray, eos_id: int) -> list[int]:
    """A search's row: its ids up to and including the first eos (the padding after it dropped)."""
    out = np.asarray(ids).tolist()
    return out[: out.index(eos_id) + 1] if eos_id in out else out


class SearchCancelled(Exception):
    """A search (seq2seq, a diffusion walk) whose client went away stops at its next graph call."""


GraphCall = Callable[[Runner, dict[str, np.ndarray]], dict[str, np.ndarray]]


def blocking_graph_call(loop: asyncio.AbstractEventLoop, cancelled: threading.Event) -> GraphCall:
    """For code on a search thread: rows through a runner's batcher (on the event loop), waited for,
    so that the calls of concurrent searches share batches; once ``cancelled`` is set, the next call
    raises SearchCancelled instead."""

    def call(runner: Runner, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if cancelled.is_set():
            raise SearchCancelled
        return asyncio.run_coroutine_threadsafe(run_rows(runner, feeds), loop).result()

    return call


@dataclass
class DiffusionPlan:
    """A checked diffusion request: one seed and one class id per image (``null_class``: none)."""

    seeds: list[int]
    classes: np.ndarray  # (N,) int64
    steps: int
    guidance_scale: float
    format: str


def _sse(event: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(event) + b"\n\n"


def _summary(seq: Sequence, prompt_tokens: int, started: float) -> dict[str, Any]:
    total = time.perf_counter() - started
    ttft = (seq.first_token_at - seq.created) if seq.first_token_at else None
    timings = {"total_s": round(total, 6)}
    if ttft is not None:
        timings["time_to_first_token_s"] = round(ttft, 6)
        timings["tokens_per_s"] = round(len(seq.new) / total, 2) if total > 0 else 0.0
    return {
        "text": seq.text,
        "finish_reason": seq.finish_reason,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(seq.new)},
        "timings": timings,
    }


class GenerationPlane:
    """POST /generate: language models (continuous batching), seq2seq (greedy/beam search over the
    encoder and decoder runners) and image generators (GAN generator, VAE decoder)."""

    def __init__(self, registry: Registry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        # One thread per search, bounded; the model's admission gate has the same bound, so an admitted
        # search never waits for a thread.
        self._searches = ThreadPoolExecutor(
            max_workers=settings.max_concurrent_searches, thread_name_prefix="search"
        )

    def close(self) -> None:
        self._searches.shutdown(wait=False, cancel_futures=True)

    async def generate(self, request: BaseModel) -> dict[str, Any] | AsyncIterator[bytes]:
        """The response body for a parsed body (app/api/schemas.py's GenerateRequest), or for a
        streamed text generation the Server-Sent Events. Every check runs before any work starts;
        cancelling the caller (a client that went away) stops the work at its next step."""
        mv = self.registry.get(request.model, request.version)
        kind = generate_kind(mv)
        refuse_other_kinds_fields(GENERATE, request, kind, mv.name)
        head = {"model": mv.name, "version": mv.version, "task": mv.config.task}
        started = time.perf_counter()
        if kind is Kind.LANGUAGE_MODEL:
            seq, prompt_tokens = self.start_text(mv, request)
            if request.stream:
                return self._stream(mv, seq, prompt_tokens, started)
            await self._finished(mv, seq)
            return {**head, **_summary(seq, prompt_tokens, started)}
        if kind is Kind.SEQ2SEQ:
            return {**head, **await self.translate(mv, request)}
        if kind is Kind.DIFFUSION:
            plan = self.diffusion_plan(mv, request)
            if request.stream:
                return self._diffusion_stream(mv, plan, head, started)
            return {**head, **await self._diffuse(mv, plan), "timings": _seconds_since(started)}
        return {**head, **await self.images(mv, request)}

    # ---------------------------------------------------------------- language models

    def encode_prompt(
        self, mv: ModelVersion, prompt: str, map_unknown: bool, where: str = "prompt"
    ) -> list[int]:
        """A language model's prompt as token ids: not empty, within the context (characters first:
        the prompt may be megabytes), inside the vocabulary (codecs.check_vocabulary)."""
        if not prompt:
            raise InvalidInput(f"{where} is empty", param=where)
        block = mv.generator.block_size
        if len(prompt) >= block:
            raise InvalidInput(
                f"{where} is {len(prompt)} characters; the model's context is {block}", param=where
            )
        codecs.check_vocabulary(mv.tokenizer, prompt, where, map_unknown)
        ids = mv.tokenizer.encode(prompt)
        if len(ids) >= block:
            raise InvalidInput(f"{where} is {len(ids)} tokens; the model's context is {block}", param=where)
        return ids

    def check_top_k(self, mv: ModelVersion, top_k: int) -> int:
        vocab = mv.tokenizer.vocab_size
        if top_k > vocab:
            raise InvalidInput(f"top_k is {top_k}; the model's vocabulary has {vocab} tokens", param="top_k")
        return top_k

    def start_text(self, mv: ModelVersion, request: BaseModel) -> tuple[Sequence, int]:
        """Validate and queue a text generation; returns the sequence and the prompt length."""
        defaults = mv.config.generation or GenerationDefaults()
        ids = self.encode_prompt(mv, request.prompt, request.map_unknown)
        max_new = self._max_new_tokens(request, defaults, self.settings.max_new_tokens)
        stop = self.stop_strings(request.stop)
        top_k = self.check_top_k(mv, request.top_k if request.top_k is not None else (defaults.top_k or 0))
        params = SamplingParams(
            temperature=request.temperature if request.temperature is not None else defaults.temperature,
            top_k=top_k,
            top_p=request.top_p if request.top_p is not None else (defaults.top_p or 1.0),
            repetition_penalty=request.repetition_penalty,
        )
        stopping = StoppingCriteria(max_new, stop, mv.tokenizer.eos_id)
        seq = mv.generator.submit(ids, params, stopping, request.seed, request.stream)
        return seq, len(ids)

    def _max_new_tokens(self, request, defaults: GenerationDefaults, limit: int) -> int:
        return check_max_new_tokens(request.max_new_tokens, defaults, limit)

    def stop_strings(self, stop: list[str], where: str = "stop") -> tuple[str, ...]:
        settings = self.settings
        if len(stop) > settings.max_stop_strings:
            raise InvalidInput(
                f"{where} has {len(stop)} strings; at most {settings.max_stop_strings}", param=where
            )
        if any(not s for s in stop):
            raise InvalidInput(f"{where} strings must not be empty", param=where)
        if any(len(s) > settings.max_stop_length for s in stop):
            raise InvalidInput(
                f"{where} strings must be at most {settings.max_stop_length} characters", param=where
            )
        return tuple(stop)

    @staticmethod
    async def _finished(mv: ModelVersion, seq: Sequence) -> None:
        """Wait for the sequence's end; if the caller is cancelled, the sequence leaves the batch."""
        try:
            await seq.wait()
        except GenerationFailed as exc:
            log.warning("model %s: generation failed: %s", mv.name, exc)
            raise InferenceFailed("generation failed; the server log has the details") from None
        finally:
            if seq.finish_reason is None:
                mv.generator.cancel(seq)

    @staticmethod
    async def _stream(
        mv: ModelVersion, seq: Sequence, prompt_tokens: int, started: float
    ) -> AsyncIterator[bytes]:
        """Server-Sent Events: one per piece of text, then a summary. Closing the iterator early (the
        client went away) takes the sequence out of the decode loop before its next step."""
        index, failed = 0, False
        try:
            try:
                async for text in seq.text_stream():
                    yield b"data: " + orjson.dumps({"token": text, "index": index}) + b"\n\n"
                    index += 1
            except GenerationFailed as exc:
                log.warning("model %s: generation failed: %s", mv.name, exc)
                failed = True
            summary = _summary(seq, prompt_tokens, started)
            if failed:
                summary["error"] = "generation failed; the server log has the details"
            yield b"data: " + orjson.dumps(summary) + b"\n\n"
        finally:
            if seq.finish_reason is None:
                mv.generator.cancel(seq)

    # ---------------------------------------------------------------- seq2seq

    async def translate(self, mv: ModelVersion, request: BaseModel) -> dict[str, Any]:
        defaults = mv.config.generation or GenerationDefaults()
        ids = self.encode_input(mv, request.input, request.map_unknown)
        max_new = self._max_new_tokens(request, defaults, self.max_output_tokens(mv))
        beams = self.check_beams(request.num_beams or defaults.num_beams)
        tok = mv.tokenizer
        if beams == 1:
            return {"text": tok.decode((await self.search(mv, ids, max_new, 1))[0][0]), "beams": None}
        beams_out = [
            {"text": tok.decode(out), "score": score}
            for out, score in await self.search(mv, ids, max_new, beams)
        ]
        return {"text": beams_out[0]["text"], "beams": beams_out}

    def encode_input(self, mv: ModelVersion, text: str, map_unknown: bool, where: str = "input") -> list[int]:
        """A seq2seq model's input as token ids: not empty, within the model's length (characters
        first: the input may be megabytes), inside the vocabulary."""
        pre = mv.config.preprocessing
        if not text:
            raise InvalidInput(f"{where} is empty", param=where)
        if len(text) > pre.max_length:
            raise InvalidInput(
                f"{where} is {len(text)} characters; the model accepts at most {pre.max_length}", param=where
            )
        codecs.check_vocabulary(mv.tokenizer, text, where, map_unknown)
        ids = mv.tokenizer.encode(text, eos=pre.add_eos)
        if len(ids) > pre.max_length:
            raise InvalidInput(
                f"{where} is {len(ids)} tokens; the model accepts at most {pre.max_length}", param=where
            )
        return ids

    def max_output_tokens(self, mv: ModelVersion) -> int:
        """A seq2seq output's bound: the decoder's positions as well as the server's own limit."""
        return min(self.settings.max_new_tokens, mv.config.preprocessing.max_length)

    def check_beams(self, beams: int, where: str = "num_beams") -> int:
        if beams > self.settings.max_beams:
            raise InvalidInput(f"{where} is {beams}; at most {self.settings.max_beams}", param=where)
        return beams

    async def search(
        self, mv: ModelVersion, ids: list[int], max_new: int, beams: int
    ) -> list[tuple[list[int], float | None]]:
        """Greedy (``beams == 1``) or beam search of one checked input: each hypothesis's generated
        ids (eos included when it ended there), best first, with its score (None for greedy)."""
        encoder, decoder = mv.runners["encoder"], mv.runners["decoder"]
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()
        graph_call = blocking_graph_call(loop, cancelled)

        # The search runs in a thread; every graph call goes through the model's batchers, so steps of
        # concurrent requests with equal shapes share batches.
        def call(runner: Runner, feeds: dict[str, np.ndarray]) -> np.ndarray:
            return graph_call(runner, feeds)[runner.graph.outputs[0].name]

        def encode(src: np.ndarray) -> np.ndarray:
            return call(encoder, {encoder.graph.inputs[0].name: src})

        def decode(tgt: np.ndarray, memory: np.ndarray, src: np.ndarray) -> np.ndarray:
            return call(decoder, {"tgt": tgt, "memory": memory, "src": src})

        src = np.asarray([ids], np.int64)
        tok = mv.tokenizer
        args = {"bos_id": tok.bos_id, "eos_id": tok.eos_id, "max_len": max_new}
        if beams == 1:
            search = functools.partial(greedy_decode, encode, decode, src, **args)
        else:
            search = functools.partial(beam_search, encode, decode, src, beam_size=beams, **args)
        try:
            result = await loop.run_in_executor(self._searches, search)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        if beams == 1:
            return [(_through_eos(result[0], tok.eos_id), None)]
        return [
            (_through_eos(out, tok.eos_id), float(score))
            for out, score in zip(result.sequences[0], result.scores[0], strict=True)
            if np.isfinite(score)
        ]

    # ---------------------------------------------------------------- images

    async def images(self, mv: ModelVersion, request: BaseModel) -> dict[str, Any]:
        runner = mv.runners.get("generator") or mv.runners.get("decoder")
        if runner is None or mv.config.generation is None or mv.config.generation.latent_dim is None:
            raise InvalidInput(f"model {mv.name!r} does not generate images")
        dim = mv.config.generation.latent_dim
        limit = self.settings.max_images
        choices = [x for x in (request.latent, request.interpolate, request.num_samples) if x is not None]
        if len(choices) > 1:
            raise InvalidInput("give one of latent, interpolate and num_samples")
        seed = request.seed or 0
        # Every count is checked before a latent is made: how many images the request asks for, then
        # (a class-conditional generator) their classes, which may say how many.
        if request.latent is not None:
            count = len(request.latent)
            if not 1 <= count <= limit:
                raise InvalidInput(f"latent must hold 1 to {limit} vectors; got {count}")
        elif request.interpolate is not None:
            count = request.interpolate.steps
            if count > limit:
                raise InvalidInput(f"interpolate.steps is {count}; at most {limit} images per request")
        else:
            count = request.num_samples  # None: as many as a class list holds, else the model's default
            if count is not None and count > limit:
                raise InvalidInput(f"num_samples is {count}; at most {limit} images per request")
        classes = None
        if CLASS_INPUT in {spec.name for spec in runner.graph.inputs}:
            classes = requested_classes(mv, request.class_, count, limit)
            count = len(classes)
        n = count or mv.config.generation.num_samples
        if n > limit:
            raise InvalidInput(f"num_samples is {n}; at most {limit} images per request")
        if request.latent is not None:
            if any(len(row) != dim for row in request.latent):
                raise InvalidInput(f"latent must be a list of vectors of {dim} numbers each")
            z = np.asarray(request.latent, np.float64)
            if not np.isfinite(z).all():
                raise InvalidInput("latent contains NaN or infinity")
        elif request.interpolate is not None:
            a = np.random.default_rng(request.interpolate.from_seed).standard_normal(dim)
            b = np.random.default_rng(request.interpolate.to_seed).standard_normal(dim)
            t = np.linspace(0.0, 1.0, n)[:, None]
            z = (1 - t) * a + t * b
        else:
            z = np.stack([np.random.default_rng(seed + i).standard_normal(dim) for i in range(n)])
        z = z.astype(np.float32)
        feeds = {spec.name: classes if spec.name == CLASS_INPUT else z for spec in runner.graph.inputs}
        images = (await run_rows(runner, feeds))[runner.graph.outputs[0].name]
        body: dict[str, Any] = {"latents": z.tolist()}
        if classes is not None:
            body["classes"] = classes.tolist()
        if request.format == "png":
            body["images"] = codecs.image_values(images, mv.config.postprocessing, "png")
        else:
            body["arrays"] = images.tolist()
        return body

    # ---------------------------------------------------------------- diffusion

    def diffusion_plan(self, mv: ModelVersion, request: BaseModel) -> DiffusionPlan:
        """Every check of a diffusion request, before any work: the number of images, their classes
        (as a class-conditional GAN takes them: one id, one per image, or by default the classes in
        turn), the guidance (0: the unconditional prediction alone, no class), the steps."""
        spec = mv.config.diffusion
        limit = self.settings.max_images
        count = request.num_samples
        if count is not None and count > limit:
            raise InvalidInput(
                f"num_samples is {count}; at most {limit} images per request", param="num_samples"
            )
        if not spec.conditional:
            for field, value in (("class", request.class_), ("guidance_scale", request.guidance_scale)):
                if value is not None:
                    raise InvalidInput(
                        f"model {mv.name!r} was trained without classes; {field} does not apply", param=field
                    )
            classes = np.full(count or spec.num_samples, spec.null_class, np.int64)
            guidance = 1.0
        else:
            # One id for every image, or the classes in turn, need a count: the request's, else the
            # model's default; a list says how many itself.
            if count is None and not isinstance(request.class_, list):
                count = spec.num_samples
            classes = requested_classes(mv, request.class_, count, limit)
            guidance = request.guidance_scale if request.guidance_scale is not None else spec.guidance_scale
            if guidance == 0:  # eps_u + 0 * (eps_c - eps_u): the class has no say
                classes = np.full(len(classes), spec.null_class, np.int64)
        if len(classes) > limit:
            raise InvalidInput(f"num_samples is {len(classes)}; at most {limit} images per request")
        steps = request.steps if request.steps is not None else spec.steps
        max_steps = min(self.settings.max_diffusion_steps, spec.timesteps)
        if steps > max_steps:
            raise InvalidInput(f"steps is {steps}; at most {max_steps}", param="steps")
        guided = int((classes != spec.null_class).sum()) if guidance not in (0, 1) else 0  # two rows each
        rows = steps * (len(classes) + guided)
        if rows > self.settings.max_diffusion_rows:
            raise InvalidInput(
                f"{len(classes)} images ({guided} guided, two rows each) x {steps} steps are {rows} "
                f"denoiser rows; at most {self.settings.max_diffusion_rows} per request (ask fewer)",
                param="steps",
            )
        seed = request.seed or 0
        seeds = list(range(seed, seed + len(classes)))
        return DiffusionPlan(seeds, classes, steps, guidance, request.format)

    def _sampler(
        self,
        mv: ModelVersion,
        plan: DiffusionPlan,
        loop: asyncio.AbstractEventLoop,
        cancelled: threading.Event,
        on_step: Callable[[int, int, np.ndarray, np.ndarray], None] | None = None,
    ) -> Callable[[], dict[str, Any]]:
        """The walk of one request, for a search thread: app/core/diffusion.py's DDIM sampler, every
        denoiser call through the model's batcher; returns the response's images, encoded there too
        (PNG encoding stays off the event loop)."""
        spec, post = mv.config.diffusion, mv.config.postprocessing
        runner = mv.runners["denoiser"]
        names = [tensor.name for tensor in runner.graph.inputs]  # x_t, t, class
        output = runner.graph.outputs[0].name
        shape = runner.graph.inputs[0].shape[1:]  # (C, H, W)
        call = blocking_graph_call(loop, cancelled)

        def denoise(x: np.ndarray, t: np.ndarray, classes: np.ndarray) -> np.ndarray:
            noise = call(runner, dict(zip(names, (x, t, classes), strict=True)))[output]
            codecs.check_finite(noise)
            return noise

        abar = alphas_cumprod(make_betas(spec.beta_schedule, spec.timesteps, spec.beta_start, spec.beta_end))

        def sample() -> dict[str, Any]:
            images = ddim_sample(
                denoise,
                initial_noise(plan.seeds, shape),
                abar,
                steps=plan.steps,
                classes=plan.classes,
                null_class=spec.null_class,
                guidance_scale=plan.guidance_scale,
                clip=spec.clip_denoised,
                on_step=on_step,
            )
            body: dict[str, Any] = {"seeds": plan.seeds}
            if spec.conditional and (plan.classes != spec.null_class).any():
                body["classes"] = plan.classes.tolist()
            key = "images" if plan.format == "png" else "arrays"
            body[key] = codecs.image_values(images, post, plan.format)
            return body

        return sample

    async def _diffuse(self, mv: ModelVersion, plan: DiffusionPlan) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()
        try:
            return await loop.run_in_executor(self._searches, self._sampler(mv, plan, loop, cancelled))
        except asyncio.CancelledError:
            cancelled.set()  # the walk stops at its next denoiser call
            raise

    async def _diffusion_stream(
        self, mv: ModelVersion, plan: DiffusionPlan, head: dict[str, Any], started: float
    ) -> AsyncIterator[bytes]:
        """Server-Sent Events: every ``diffusion.stream_every`` steps the walk's current prediction
        of the images (``step``, ``steps``, images or arrays), then the whole answer. Closing the
        iterator early (the client went away) stops the walk at its next denoiser call."""
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        every, post = mv.config.diffusion.stream_every, mv.config.postprocessing
        key = "images" if plan.format == "png" else "arrays"

        def put(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        def on_step(i: int, t: int, x_t: np.ndarray, x0: np.ndarray) -> None:
            done = i + 1
            if done % every == 0 and done < plan.steps:
                images = codecs.image_values(x0, post, plan.format)
                put("step", {"step": done, "steps": plan.steps, key: images})

        sample = self._sampler(mv, plan, loop, cancelled, on_step)

        def walk() -> None:
            try:
                put("done", sample())
            except SearchCancelled:
                pass
            except BaseException as exc:  # reported in the stream: its 200 is already sent
                put("failed", exc)

        try:
            # The pool's bound is the model's admission bound: an admitted walk finds a thread.
            self._searches.submit(walk)
            while True:
                kind, value = await events.get()
                if kind == "step":
                    yield _sse(value)
                elif kind == "done":
                    yield _sse({**head, **value, "timings": _seconds_since(started)})
                    return
                else:
                    if isinstance(value, ServingError):
                        message = value.message
                    else:
                        log.warning("model %s: diffusion failed: %s", mv.name, value)
                        message = "generation failed; the server log has the details"
                    yield _sse({"error": message})
                    return
        finally:
            cancelled.set()


def _seconds_since(started: float) -> dict[str, float]:
    return {"total_s": round(time.perf_counter() - started, 6)}
