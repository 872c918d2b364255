"""The data plane: what every endpoint does once its request is parsed (MLServer's layering: routes ->
data plane -> registry -> runner). No HTTP here, so the routes stay thin and the logic testable."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from app import codecs, v2
from app.decoding import beam_search, greedy_decode
from app.errors import InvalidInput
from app.registry import ModelVersion, Registry
from app.runner import Runner
from app.sampling import SamplingParams
from app.schema import GenerationDefaults
from app.settings import Settings
from app.textgen import Sequence

PREDICT_TASKS = ("classification", "reconstruction")


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


class DataPlane:
    def __init__(self, registry: Registry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings

    async def predict(
        self,
        model: str,
        version: int | None,
        inputs: str | list,
        *,
        top_k: int | None = None,
        return_latent: bool = False,
        return_reconstruction: bool = False,
        image_format: str = "list",
    ) -> dict[str, Any]:
        mv = self.registry.get(model, version)
        config = mv.config
        if config.task not in PREDICT_TASKS:
            raise InvalidInput(f"model {model!r} is a {config.task} model; use POST /generate")
        runner = mv.runner()
        feeds = codecs.predict_feeds(
            mv, runner.graph, inputs, self.settings.max_items_per_request, self.settings.max_image_pixels
        )
        results = await run_rows(runner, feeds)
        if config.task == "classification":
            if top_k is not None and top_k > len(config.labels):
                raise InvalidInput(f"top_k is {top_k}; the model has {len(config.labels)} classes")
            logits = results[runner.graph.outputs[0].name]
            items = codecs.classification_items(config.labels, logits, top_k)
        else:
            items = await self._reconstruction_items(
                mv, results, return_latent, return_reconstruction, image_format
            )
        return {"model": mv.name, "version": mv.version, "task": config.task, "outputs": items}

    async def _reconstruction_items(
        self,
        mv: ModelVersion,
        results: dict[str, np.ndarray],
        return_latent: bool,
        return_reconstruction: bool,
        image_format: str,
    ) -> list[dict[str, Any]]:
        post = mv.config.postprocessing
        columns: dict[str, list] = {}
        if "mu" in results:  # a VAE encoder: the posterior, and optionally the decoded mean
            columns["mu"] = results["mu"].tolist()
            columns["logvar"] = results["logvar"].tolist()
            if return_reconstruction and "decoder" in mv.runners:
                decoder = mv.runners["decoder"]
                decoded = await run_rows(decoder, {decoder.graph.inputs[0].name: results["mu"]})
                columns["reconstruction"] = codecs.image_values(decoded["reconstruction"], post, image_format)
        else:
            for name, array in results.items():
                if name == "latent" and not return_latent:
                    continue
                columns[name] = (
                    codecs.image_values(array, post, image_format) if array.ndim == 4 else array.tolist()
                )
        count = len(next(iter(columns.values())))
        return [{name: values[i] for name, values in columns.items()} for i in range(count)]

    async def infer_v2(
        self, model: str, version: int | None, body: bytes, header_length: str | None
    ) -> tuple[bytes, int | None]:
        mv = self.registry.get(model, version)
        header, binary = v2.parse_body(body, header_length)
        runner = mv.runner()
        feeds = v2.decode_inputs(header, binary, runner.graph)
        if mv.tokenizer is not None:
            v2.check_token_inputs(feeds, mv.tokenizer.vocab_size)
        chosen = v2.requested_outputs(header, runner.graph)
        results = await run_rows(runner, feeds)
        return v2.encode_response(mv.name, mv.version, header.get("id"), results, chosen)


# ------------------------------------------------------------------------------------------- generation


def _not_for(task: str, request, fields: tuple[str, ...]) -> None:
    """Refuse fields meant for another kind of model rather than silently ignoring them."""
    given = [f for f in fields if getattr(request, f) not in (None, False, [])]
    if given:
        raise InvalidInput(f"{', '.join(given)} do(es) not apply to a {task} model")


class GenerationPlane:
    """POST /generate: language models (continuous batching), seq2seq (greedy/beam search over the
    encoder and decoder runners) and image generators (GAN generator, VAE decoder)."""

    def __init__(self, registry: Registry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings

    def model(self, request) -> ModelVersion:
        return self.registry.get(request.model, request.version)

    # ---------------------------------------------------------------- language models

    def start_text(self, mv: ModelVersion, request) -> tuple[Sequence, int]:
        """Validate and queue a text generation; returns the sequence and the prompt length."""
        _not_for("text_generation", request, ("input", "num_beams", "num_samples", "latent", "interpolate"))
        defaults = mv.config.generation or GenerationDefaults()
        tokenizer = mv.tokenizer
        if not request.prompt:
            raise InvalidInput("prompt is empty")
        unknown = sorted(set(request.prompt) - set(tokenizer.chars))
        if unknown:
            raise InvalidInput(f"prompt has characters outside the model's vocabulary: {''.join(unknown)!r}")
        ids = tokenizer.encode(request.prompt)
        block = mv.generator.block_size
        if len(ids) >= block:
            raise InvalidInput(f"prompt is {len(ids)} tokens; the model's context is {block}")
        max_new = request.max_new_tokens if request.max_new_tokens is not None else defaults.max_new_tokens
        if not 1 <= max_new <= self.settings.max_new_tokens:
            raise InvalidInput(
                f"max_new_tokens must be in [1, {self.settings.max_new_tokens}]; got {max_new}"
            )
        if any(not s for s in request.stop):
            raise InvalidInput("stop strings must not be empty")
        params = SamplingParams(
            temperature=request.temperature if request.temperature is not None else defaults.temperature,
            top_k=request.top_k if request.top_k is not None else (defaults.top_k or 0),
            top_p=request.top_p if request.top_p is not None else (defaults.top_p or 1.0),
            repetition_penalty=request.repetition_penalty,
        )
        seq = mv.generator.submit(
            ids, params, max_new, tuple(request.stop), request.seed, tokenizer.eos_id, request.stream
        )
        return seq, len(ids)

    # ---------------------------------------------------------------- seq2seq

    async def translate(self, mv: ModelVersion, request) -> dict[str, Any]:
        _not_for("seq2seq", request, ("prompt", "num_samples", "latent", "interpolate", "stream"))
        defaults = mv.config.generation or GenerationDefaults()
        pre = mv.config.preprocessing
        if not request.input:
            raise InvalidInput("input is empty")
        ids = mv.tokenizer.encode(request.input, eos=pre.add_eos)
        if len(ids) > pre.max_length:
            raise InvalidInput(f"input is {len(ids)} tokens; the model accepts at most {pre.max_length}")
        max_new = request.max_new_tokens if request.max_new_tokens is not None else defaults.max_new_tokens
        if not 1 <= max_new <= self.settings.max_new_tokens:
            raise InvalidInput(
                f"max_new_tokens must be in [1, {self.settings.max_new_tokens}]; got {max_new}"
            )
        beams = request.num_beams or defaults.num_beams
        encoder, decoder = mv.runners["encoder"], mv.runners["decoder"]
        loop = asyncio.get_running_loop()

        # The search runs in a thread; every graph call goes through the model's batchers, so steps of
        # concurrent requests with equal shapes share batches.
        def call(runner: Runner, feeds: dict[str, np.ndarray]) -> np.ndarray:
            return asyncio.run_coroutine_threadsafe(run_rows(runner, feeds), loop).result()[
                runner.graph.outputs[0].name
            ]

        def encode(src: np.ndarray) -> np.ndarray:
            return call(encoder, {encoder.graph.inputs[0].name: src})

        def decode(tgt: np.ndarray, memory: np.ndarray, src: np.ndarray) -> np.ndarray:
            return call(decoder, {"tgt": tgt, "memory": memory, "src": src})

        src = np.asarray([ids], np.int64)
        tok = mv.tokenizer
        args = {"bos_id": tok.bos_id, "eos_id": tok.eos_id, "max_len": max_new}
        if beams == 1:
            out = await asyncio.to_thread(greedy_decode, encode, decode, src, **args)
            return {"text": tok.decode(out[0]), "beams": None}
        result = await asyncio.to_thread(beam_search, encode, decode, src, beam_size=beams, **args)
        beams_out = [
            {"text": tok.decode(ids), "score": float(score)}
            for ids, score in zip(result.sequences[0], result.scores[0], strict=True)
            if np.isfinite(score)
        ]
        return {"text": beams_out[0]["text"], "beams": beams_out}

    # ---------------------------------------------------------------- images

    async def images(self, mv: ModelVersion, request) -> dict[str, Any]:
        _not_for("image generator", request, ("prompt", "input", "num_beams", "stream", "max_new_tokens"))
        runner = mv.runners.get("generator") or mv.runners.get("decoder")
        if runner is None or mv.config.generation is None or mv.config.generation.latent_dim is None:
            raise InvalidInput(f"model {mv.name!r} does not generate images")
        dim = mv.config.generation.latent_dim
        choices = [x for x in (request.latent, request.interpolate, request.num_samples) if x is not None]
        if len(choices) > 1:
            raise InvalidInput("give one of latent, interpolate and num_samples")
        seed = request.seed or 0
        if request.latent is not None:
            z = np.asarray(request.latent, np.float64)
            if z.ndim != 2 or z.shape[1] != dim or len(z) == 0:
                raise InvalidInput(f"latent must be a list of vectors of {dim} numbers")
            if not np.isfinite(z).all():
                raise InvalidInput("latent contains NaN or infinity")
        elif request.interpolate is not None:
            a = np.random.default_rng(request.interpolate.from_seed).standard_normal(dim)
            b = np.random.default_rng(request.interpolate.to_seed).standard_normal(dim)
            t = np.linspace(0.0, 1.0, request.interpolate.steps)[:, None]
            z = (1 - t) * a + t * b
        else:
            n = request.num_samples or mv.config.generation.num_samples
            z = np.stack([np.random.default_rng(seed + i).standard_normal(dim) for i in range(n)])
        if len(z) > self.settings.max_images:
            raise InvalidInput(f"at most {self.settings.max_images} images per request; asked for {len(z)}")
        z = z.astype(np.float32)
        images = (await run_rows(runner, {runner.graph.inputs[0].name: z}))[runner.graph.outputs[0].name]
        body: dict[str, Any] = {"latents": z.tolist()}
        if request.format == "png":
            body["images"] = codecs.image_values(images, mv.config.postprocessing, "png")
        else:
            body["arrays"] = images.tolist()
        return body
