"""The data plane: what every endpoint does once its request is parsed (MLServer's layering: routes ->
data plane -> registry -> runner). No HTTP here, so the routes stay thin and the logic testable."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from app import codecs, v2
from app.errors import InvalidInput
from app.registry import ModelVersion, Registry
from app.runner import Runner
from app.settings import Settings

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
