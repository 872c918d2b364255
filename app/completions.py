"""Text generation in other APIs' shapes: OpenAI's (``/v1/models``, ``/v1/completions``,
``/v1/chat/completions``) and Triton's generate extension (``/v2/models/{name}/generate`` and
``generate_stream``).

No second decoding path: a language model's choices are :class:`~app.decode_loop.Sequence` s of the
same continuous-batching decode loop as ``POST /generate``, checked by the same code
(``GenerationPlane.encode_prompt``, ``stop_strings``, ``check_max_new_tokens``: length, vocabulary,
limits), and a seq2seq model's choices are the hypotheses of ``GenerationPlane.search``. What this
module adds is each API's fields and shapes, and the limits that only these APIs need (choices,
prompt lists, the KV-cache budget of a request's choices together), all checked before any work.

A request's sequences share one event queue (:class:`_Tagged` tags each event with its choice), so
a request with many choices costs no task per choice or per token. Choice ``j`` of a prompt uses
``seed + j``: with a seed, choices differ when they sample and are equal when greedy (temperature 0).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel

from app.core.kv_cache import FinishReason
from app.core.repository_format import ChatTemplate, GenerationDefaults
from app.core.sampling import SamplingParams, TokenLogprob
from app.dataplane import GenerationPlane, check_max_new_tokens
from app.decode_loop import Finished, Sequence, StoppingCriteria, TokenText
from app.errors import BadRequest, InferenceFailed, InvalidInput, ServerBusy, ServingError, render_openai
from app.registry import ModelVersion, Registry
from app.settings import Settings

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
# OpenAI's finish reasons: this project's eos and stop strings end a text where the model or the
# client said so ("stop"); a token budget or the context ends it early ("length").
FINISH = {
    FinishReason.EOS: "stop",
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.CONTEXT: "length",
}
GENERATION_FAILED = "generation failed; the server log has the details"


def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(body) + b"\n\n"


class _Tagged:
    """A sequence's event sink that puts ``(choice, event)`` on its request's shared queue."""

    __slots__ = ("index", "queue")

    def __init__(self, queue: asyncio.Queue, index: int) -> None:
        self.queue, self.index = queue, index

    def put_nowait(self, event: TokenText | Finished) -> None:
        self.queue.put_nowait((self.index, event))


@dataclass
class TextJob:
    """What one request asks of a language model, checked: its prompts (ids), choices per prompt,
    sampling, stopping and log-probabilities."""

    prompts: list[list[int]]
    n: int
    params: SamplingParams
    stopping: StoppingCriteria
    seed: int | None
    logprobs: int | None  # None: off; N: the N most likely tokens at each position too

    @property
    def prompt_tokens(self) -> int:
        return sum(len(ids) for ids in self.prompts)


class Choices:
    """The running sequences of one request, choice ``i`` of prompt ``i // n`` at index ``i``; their
    events on one queue. :meth:`close` takes unfinished ones out of the decode loop."""

    def __init__(self, mv: ModelVersion, job: TextJob, stream: bool) -> None:
        self.mv = mv
        self.queue: asyncio.Queue[tuple[int, TokenText | Finished]] = asyncio.Queue()
        self.seqs = [
            Sequence(
                ids,
                job.params,
                job.stopping,
                None if job.seed is None else job.seed + j,
                stream,
                job.logprobs,
                events=_Tagged(self.queue, p * job.n + j),
            )
            for p, ids in enumerate(job.prompts)
            for j in range(job.n)
        ]
        mv.generator.submit_all(self.seqs)  # all or none (429)

    async def events(self) -> AsyncIterator[tuple[int, TokenText | Finished]]:
        """Every choice's events until each has finished (a failed step raises InferenceFailed after
        its choice's last event)."""
        remaining = len(self.seqs)
        while remaining:
            index, event = await self.queue.get()
            if isinstance(event, Finished):
                remaining -= 1
                if event.error is not None:
                    log.warning("model %s: generation failed: %s", self.mv.name, event.error)
                    raise InferenceFailed(GENERATION_FAILED)
            yield index, event

    async def wait(self) -> None:
        async for _ in self.events():
            pass

    def close(self) -> None:
        for seq in self.seqs:
            if seq.finish_reason is None:
                self.mv.generator.cancel(seq)

    @property
    def completion_tokens(self) -> int:
        return sum(len(seq.new) for seq in self.seqs)


class EventStream:
    """A stream's events that, however it ends, takes its choices out of the decode loop: closing an
    async generator that never started skips its ``finally``, and a client may leave before the
    first event is sent."""

    def __init__(self, events: AsyncIterator[bytes], choices: Choices) -> None:
        self._events, self._choices = events, choices

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> bytes:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        try:
            await self._events.aclose()
        finally:
            self._choices.close()


def finish_reason(seq: Sequence) -> str:
    reason = FINISH.get(seq.finish_reason)
    if reason is None:  # shutdown (a cancelled sequence has no one to answer)
        raise ServerBusy("the server is shutting down; retry on another replica")
    return reason


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class TextPlane:
    """The OpenAI-compatible API and the V2 generate extension, over GenerationPlane."""

    def __init__(self, registry: Registry, generation: GenerationPlane, settings: Settings) -> None:
        self.registry = registry
        self.generation = generation
        self.settings = settings
        self._token_strings: dict[tuple[str, int], list[str]] = {}

    # ------------------------------------------------------------------------------ models

    def _text_model(self, mv: ModelVersion) -> bool:
        return mv.ready and (mv.generator is not None or mv.config.task == "seq2seq")

    def _model_card(self, mv: ModelVersion) -> dict[str, Any]:
        return {
            "id": mv.name,
            "object": "model",
            "created": int(mv.path.stat().st_mtime),  # when this version was written
            "owned_by": "deepserve",
        }

    def list_models(self) -> dict[str, Any]:
        """GET /v1/models: the language and seq2seq models that are ready, at their served version."""
        served = (self.registry.find(name) for name in self.registry.names())
        return {"object": "list", "data": [self._model_card(mv) for mv in served if self._text_model(mv)]}

    def model_card(self, name: str) -> dict[str, Any]:
        mv = self._model(name, "model")
        return self._model_card(mv)

    def _model(self, name: str, endpoint: str) -> ModelVersion:
        mv = self.registry.get(name)
        if not self._text_model(mv):
            raise InvalidInput(
                f"model {name!r} is a {mv.config.task} model; {endpoint} serves language and seq2seq models",
                param="model",
            )
        return mv

    # ------------------------------------------------------------------------------ checks

    def _limits(self, prompts: int, n: int) -> None:
        settings = self.settings
        if prompts > settings.max_prompts:
            raise InvalidInput(
                f"prompt holds {prompts} prompts; at most {settings.max_prompts}", param="prompt"
            )
        # The decode loop's queue must be able to take a request's choices at once (Choices).
        most = min(settings.max_choices, settings.max_queued_sequences)
        if prompts * n > most:
            raise InvalidInput(
                f"n={n} for {prompts} prompt(s) asks for {prompts * n} choices; at most {most}", param="n"
            )

    @staticmethod
    def _max_tokens(body: BaseModel) -> int | None:
        """``max_completion_tokens`` (chat's current name) or ``max_tokens``; both only if equal."""
        new, old = getattr(body, "max_completion_tokens", None), body.max_tokens
        if new is not None and old is not None and new != old:
            raise InvalidInput(
                f"max_tokens ({old}) and max_completion_tokens ({new}) differ; send one",
                param="max_completion_tokens",
            )
        return new if new is not None else old

    def _stop(self, stop: str | list[str] | None, where: str = "stop") -> tuple[str, ...]:
        return self.generation.stop_strings([stop] if isinstance(stop, str) else list(stop or []), where)

    def text_job(
        self,
        mv: ModelVersion,
        body: BaseModel,
        prompts: list[list[int]],
        logprobs: int | None,
        prefix: str = "",
    ) -> TextJob:
        """The sampling, stopping and budget of a language-model request; every bound checked.
        ``prefix``: where the fields are in the body (V2's "parameters.")."""
        defaults = mv.config.generation or GenerationDefaults()
        max_new = check_max_new_tokens(
            self._max_tokens(body), defaults, self.settings.max_new_tokens, f"{prefix}max_tokens"
        )
        self._limits(len(prompts), body.n)
        block = mv.generator.block_size
        # A sequence's cache never outgrows the context (it slides), so this is what the choices
        # hold together at most.
        cached = body.n * sum(min(len(ids) + max_new, block) for ids in prompts)
        if cached > self.settings.max_cached_tokens:
            raise InvalidInput(
                f"n={body.n} choices of up to {max_new} tokens need {cached} cached tokens; the server "
                f"holds at most {self.settings.max_cached_tokens} (lower n or max_tokens)",
                param="n",
            )
        if logprobs is not None:
            # Each generated token carries itself and its alternatives; formatting them is Python work
            # on the event loop (16 choices x 1,024 tokens x 21 values held it ~0.5 s), so it is bounded.
            values = len(prompts) * body.n * max_new * (logprobs + 1)
            if values > self.settings.max_logprob_values:
                raise InvalidInput(
                    f"{len(prompts) * body.n} choices of up to {max_new} tokens with {logprobs} alternatives"
                    f" each return {values} log-probabilities; the server returns at most "
                    f"{self.settings.max_logprob_values} per request (lower n, max_tokens or alternatives)",
                    param=f"{prefix}logprobs",
                )
        params = SamplingParams(
            temperature=1.0 if body.temperature is None else body.temperature,
            top_k=self.generation.check_top_k(mv, body.top_k or 0),
            top_p=1.0 if body.top_p is None else body.top_p,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
        )
        eos_id = None if getattr(body, "ignore_eos", False) else mv.tokenizer.eos_id  # V2 has no such field
        stopping = StoppingCriteria(max_new, self._stop(body.stop, f"{prefix}stop"), eos_id)
        return TextJob(prompts, body.n, params, stopping, body.seed, logprobs)

    def token_strings(self, mv: ModelVersion) -> list[str]:
        """Each id as a token string in logprobs: its text, or its name for a special token."""
        key = (mv.name, mv.version)
        if key not in self._token_strings:
            tok = mv.tokenizer
            self._token_strings[key] = [*tok.specials, *tok.chars]
        return self._token_strings[key]

    # ------------------------------------------------------------------------------ /v1/completions

    async def completions(self, body: BaseModel) -> dict[str, Any] | AsyncIterator[bytes]:
        mv = self._model(body.model, "/v1/completions")
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts:
            raise InvalidInput("prompt is an empty list", param="prompt")
        if body.stream_options is not None and not body.stream:
            raise InvalidInput("stream_options needs stream: true", param="stream_options")
        head = self._head("cmpl", "text_completion", mv)
        if mv.generator is None:
            return await self._seq2seq_completions(mv, body, prompts, head)
        if body.echo and body.logprobs is not None:
            # OpenAI would score the prompt's own tokens too; this server does not.
            raise InvalidInput("echo with logprobs is not supported", param="echo")
        self._limits(len(prompts), body.n)
        where = "prompt" if isinstance(body.prompt, str) else "prompt[{}]"
        ids = [
            self.generation.encode_prompt(mv, text, body.map_unknown, where.format(i))
            for i, text in enumerate(prompts)
        ]
        job = self.text_job(mv, body, ids, body.logprobs)
        echoes = [p if body.echo else "" for p in prompts]
        choices = Choices(mv, job, body.stream)
        strings = self.token_strings(mv)

        def logprobs(entries: list[TokenLogprob] | tuple[TokenLogprob, ...], offset: int) -> dict[str, Any]:
            return completion_logprobs(entries, strings, mv.generator.pieces, offset)

        if body.stream:
            return EventStream(self._stream_completions(choices, job, head, echoes, body, logprobs), choices)
        try:
            await choices.wait()
            out = []
            for i, seq in enumerate(choices.seqs):
                echo = echoes[i // job.n]
                lp = logprobs(seq.token_logprobs, len(echo)) if job.logprobs is not None else None
                out.append(
                    {"index": i, "text": echo + seq.text, "finish_reason": finish_reason(seq), "logprobs": lp}
                )
        finally:
            choices.close()
        return {**head, "choices": out, "usage": usage(job.prompt_tokens, choices.completion_tokens)}

    def _stream_completions(
        self, choices: Choices, job: TextJob, head: dict, echoes: list[str], body: BaseModel, logprobs
    ) -> AsyncIterator[bytes]:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        tail = {"usage": None} if include_usage else {}
        echoed = [echoes[i // job.n] for i in range(len(choices.seqs))]  # per choice
        offsets = [len(echo) for echo in echoed]
        want = job.logprobs is not None

        def chunk(index: int, text: str, reason: str | None, lp: dict | None = None) -> bytes:
            choice = {"index": index, "text": text, "finish_reason": reason, "logprobs": lp}
            return _event({**head, "choices": [choice], **tail})

        def piece(i: int, event: TokenText) -> bytes:
            lp = logprobs(event.logprobs, offsets[i]) if want else None
            offsets[i] += len(event.text)
            return chunk(i, event.text, None, lp)

        opening = [chunk(i, echo, None) for i, echo in enumerate(echoed) if echo]

        def end(i: int) -> bytes:
            return chunk(i, "", finish_reason(choices.seqs[i]))

        return self._openai_stream(choices, job, head, include_usage, opening, piece, end)

    @staticmethod
    async def _openai_stream(
        choices: Choices, job: TextJob, head: dict, include_usage: bool, opening: list[bytes], piece, end
    ) -> AsyncIterator[bytes]:
        """What both OpenAI streams send: the ``opening`` chunks, a chunk per piece of text
        (``piece``) and per finished choice (``end``), an error event that ends the stream, the usage
        chunk when asked, then [DONE]. The choices leave the decode loop however the stream ends."""
        try:
            for first in opening:
                yield first
            async for i, event in TextPlane._guarded(choices):
                if isinstance(event, TokenText):
                    yield piece(i, event)
                elif isinstance(event, Finished):
                    yield end(i)
                else:
                    yield event  # an error event: the stream ends with it
                    return
            if include_usage:
                yield _event(
                    {**head, "choices": [], "usage": usage(job.prompt_tokens, choices.completion_tokens)}
                )
            yield DONE
        finally:
            choices.close()

    @staticmethod
    async def _guarded(choices: Choices) -> AsyncIterator[tuple[int, Any]]:
        """A stream's events; an error after the first event becomes one event in OpenAI's shape
        (the status line went out with the first)."""
        try:
            async for item in choices.events():
                yield item
        except ServingError as exc:
            yield -1, b"data: " + render_openai(exc)[2] + b"\n\n"

    async def _seq2seq_completions(
        self, mv: ModelVersion, body: BaseModel, prompts: list[str], head: dict
    ) -> dict[str, Any] | AsyncIterator[bytes]:
        """A seq2seq model's completions: each prompt translated; with ``n`` > 1 the choices are the
        ``n`` best beams of one beam search (greedy for n = 1)."""
        self._refuse_sampling(mv, body)
        self._limits(len(prompts), body.n)
        beams = self.generation.check_beams(body.n, "n")
        defaults = mv.config.generation or GenerationDefaults()
        max_new = check_max_new_tokens(
            self._max_tokens(body), defaults, self.generation.max_output_tokens(mv), "max_tokens"
        )
        stop = self._stop(body.stop)
        where = "prompt" if isinstance(body.prompt, str) else "prompt[{}]"
        ids = [
            self.generation.encode_input(mv, text, body.map_unknown, where.format(i))
            for i, text in enumerate(prompts)
        ]
        tok = mv.tokenizer
        choices, completion_tokens = [], 0
        for p, src in enumerate(ids):
            for out, _ in (await self.generation.search(mv, src, max_new, beams))[:beams]:
                completion_tokens += len(out)
                text = tok.decode(out)
                reason = "stop" if out and out[-1] == tok.eos_id else "length"
                cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
                if cuts:
                    text, reason = text[: min(cuts)], "stop"
                echo = prompts[p] if body.echo else ""
                choices.append(
                    {"index": len(choices), "text": echo + text, "finish_reason": reason, "logprobs": None}
                )
        result = {**head, "choices": choices, "usage": usage(sum(map(len, ids)), completion_tokens)}
        if not body.stream:
            return result
        return self._replay(result, body, text_key="text")

    @staticmethod
    def _refuse_sampling(mv: ModelVersion, body: BaseModel) -> None:
        """A seq2seq model decodes by greedy or beam search: sampling fields would change nothing,
        so a request that relies on them is refused rather than answered as if they applied."""
        given = [
            name
            for name, off in (
                ("temperature", 0),
                ("top_p", 1),
                ("top_k", 0),
                ("presence_penalty", 0),
                ("frequency_penalty", 0),
            )
            if getattr(body, name, None) not in (None, off)
        ]
        if getattr(body, "logprobs", None) is not None:
            given.append("logprobs")
        if getattr(body, "ignore_eos", False):
            given.append("ignore_eos")
        if given:
            raise InvalidInput(
                f"not applicable to model {mv.name!r}, a seq2seq model (it decodes by greedy or beam "
                f"search; n beams give n choices): {', '.join(given)}",
                param=given[0],
            )

    @staticmethod
    async def _replay(result: dict[str, Any], body: BaseModel, text_key: str) -> AsyncIterator[bytes]:
        """A finished result as a stream: one chunk of text per choice, then each choice's finish."""
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        tail = {"usage": None} if include_usage else {}
        head = {k: v for k, v in result.items() if k not in ("choices", "usage")}
        for choice in result["choices"]:
            piece = {
                "index": choice["index"],
                text_key: choice[text_key],
                "finish_reason": None,
                "logprobs": None,
            }
            yield _event({**head, "choices": [piece], **tail})
            yield _event(
                {
                    **head,
                    "choices": [{**piece, text_key: "", "finish_reason": choice["finish_reason"]}],
                    **tail,
                }
            )
        if include_usage:
            yield _event({**head, "choices": [], "usage": result["usage"]})
        yield DONE

    def _head(self, prefix: str, kind: str, mv: ModelVersion) -> dict[str, Any]:
        return {
            "id": f"{prefix}-{secrets.token_hex(12)}",
            "object": kind,
            "created": int(time.time()),
            "model": mv.name,
            "system_fingerprint": f"{mv.name}-v{mv.version}",
        }

    # ------------------------------------------------------------------------------ /v1/chat/completions

    async def chat(self, body: BaseModel) -> dict[str, Any] | AsyncIterator[bytes]:
        mv = self._model(body.model, "/v1/chat/completions")
        if mv.generator is None:
            raise InvalidInput(
                f"model {mv.name!r} is a seq2seq model; chat needs a language model (use /v1/completions)",
                param="model",
            )
        if body.stream_options is not None and not body.stream:
            raise InvalidInput("stream_options needs stream: true", param="stream_options")
        if body.top_logprobs is not None and not body.logprobs:
            raise InvalidInput("top_logprobs needs logprobs: true", param="top_logprobs")
        self._limits(1, body.n)
        template = mv.config.chat_template or ChatTemplate()
        prompt = template.render([(m.role, message_text(m, i)) for i, m in enumerate(body.messages)])
        ids = [self.generation.encode_prompt(mv, prompt, body.map_unknown, "messages")]
        job = self.text_job(mv, body, ids, (body.top_logprobs or 0) if body.logprobs else None)
        head = self._head("chatcmpl", "chat.completion", mv)
        choices = Choices(mv, job, body.stream)
        strings = self.token_strings(mv)
        if body.stream:
            head["object"] = "chat.completion.chunk"
            return EventStream(self._stream_chat(choices, job, head, body, strings), choices)
        try:
            await choices.wait()
            out = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": seq.text, "refusal": None},
                    "finish_reason": finish_reason(seq),
                    "logprobs": chat_logprobs(seq.token_logprobs, strings)
                    if job.logprobs is not None
                    else None,
                }
                for i, seq in enumerate(choices.seqs)
            ]
        finally:
            choices.close()
        return {**head, "choices": out, "usage": usage(job.prompt_tokens, choices.completion_tokens)}

    def _stream_chat(
        self, choices: Choices, job: TextJob, head: dict, body: BaseModel, strings: list[str]
    ) -> AsyncIterator[bytes]:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        tail = {"usage": None} if include_usage else {}
        want = job.logprobs is not None

        def chunk(index: int, delta: dict, reason: str | None, lp: dict | None = None) -> bytes:
            choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": reason}
            return _event({**head, "choices": [choice], **tail})

        def piece(i: int, event: TokenText) -> bytes:
            lp = chat_logprobs(event.logprobs, strings) if want else None
            return chunk(i, {"content": event.text}, None, lp)

        # The first delta of each choice carries the role.
        opening = [chunk(i, {"role": "assistant", "content": ""}, None) for i in range(len(choices.seqs))]

        def end(i: int) -> bytes:
            return chunk(i, {}, finish_reason(choices.seqs[i]))

        return self._openai_stream(choices, job, head, include_usage, opening, piece, end)

    # ------------------------------------------------------------------------------ V2 generate

    async def v2_generate(
        self, name: str, version: int | None, body: BaseModel, stream: bool
    ) -> dict[str, Any] | AsyncIterator[bytes]:
        """Triton's generate extension: ``text_input`` and ``parameters`` in, ``text_output`` out (one
        object, or with ``generate_stream`` one SSE event per piece of text)."""
        mv = self.registry.get(name, version)
        if not self._text_model(mv):
            raise InvalidInput(
                f"model {name!r} is a {mv.config.task} model; generate serves language and seq2seq models"
            )
        head = {"model_name": mv.name, "model_version": str(mv.version)}
        params = body.parameters
        defaults = mv.config.generation or GenerationDefaults()
        if mv.generator is None:
            self._refuse_sampling(mv, params)
            ids = self.generation.encode_input(mv, body.text_input, params.map_unknown, "text_input")
            max_new = check_max_new_tokens(
                params.max_tokens, defaults, self.generation.max_output_tokens(mv), "parameters.max_tokens"
            )
            beams = self.generation.check_beams(
                params.num_beams or defaults.num_beams, "parameters.num_beams"
            )
            out, _ = (await self.generation.search(mv, ids, max_new, beams))[0]
            text = mv.tokenizer.decode(out)
            reason = "stop" if out and out[-1] == mv.tokenizer.eos_id else "length"
            result = {**head, "text_output": text, "finish_reason": reason}
            if not stream:
                return result
            return _once(result)
        if params.num_beams not in (None, 1):
            raise InvalidInput("parameters.num_beams applies to seq2seq models; a language model samples")
        ids = [self.generation.encode_prompt(mv, body.text_input, params.map_unknown, "text_input")]
        job = self.text_job(mv, params, ids, None, "parameters.")
        choices = Choices(mv, job, stream)
        if stream:
            return EventStream(self._stream_v2(choices, head), choices)
        try:
            await choices.wait()
            seq = choices.seqs[0]
            return {**head, "text_output": seq.text, "finish_reason": finish_reason(seq)}
        finally:
            choices.close()

    @staticmethod
    async def _stream_v2(choices: Choices, head: dict[str, str]) -> AsyncIterator[bytes]:
        """One event per piece of text; the last one has the finish reason; an error after the first
        event is an event ``{"error": message}``, as Triton sends it."""
        try:
            try:
                async for _, event in choices.events():
                    if isinstance(event, TokenText):
                        yield _event({**head, "text_output": event.text})
                    else:
                        yield _event(
                            {**head, "text_output": "", "finish_reason": finish_reason(choices.seqs[0])}
                        )
            except ServingError as exc:
                yield _event({"error": exc.message})
        finally:
            choices.close()


async def _once(result: dict[str, Any]) -> AsyncIterator[bytes]:
    yield _event(result)


def message_text(message: BaseModel, index: int) -> str:
    """A chat message's text: a string, or the text parts of a list of parts (nothing else)."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type != "text":
            raise BadRequest(
                f"messages[{index}].content[{j}]: parts of type {part.type!r} are not supported (text only)"
            )
        texts.append(part.text)
    return "".join(texts)


def completion_logprobs(entries, strings: list[str], pieces: list[str], offset: int) -> dict[str, Any]:
    """The legacy completions' logprobs: token strings, their log-probabilities, the top
    alternatives by token string, and each token's offset in the returned text."""
    tokens, values, tops, offsets = [], [], [], []
    for token, logprob, top in entries:
        tokens.append(strings[token])
        values.append(logprob)
        tops.append({strings[t]: lp for t, lp in top})
        offsets.append(offset)
        offset += len(pieces[token])
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(entries, strings: list[str]) -> dict[str, Any]:
    """Chat's logprobs: per token its string, log-probability, UTF-8 bytes and top alternatives."""

    def item(token: int, logprob: float) -> dict[str, Any]:
        text = strings[token]
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    content = [
        {**item(token, logprob), "top_logprobs": [item(t, lp) for t, lp in top]}
        for token, logprob, top in entries
    ]
    return {"content": content, "refusal": None}
