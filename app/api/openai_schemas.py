"""Bodies of the OpenAI-compatible API (/v1) and of Triton's generate extension (/v2/.../generate).

Fields OpenAI defines and this server does not support (``logit_bias``, ``tools``, ``best_of``,
``suffix``, ``response_format``, ...) are refused with 400 naming them, never ignored: each would
change the answer. ``top_k`` and ``ignore_eos`` (as vLLM takes them) and ``map_unknown`` are this
server's extensions.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas import MAP_UNKNOWN_DESCRIPTION

UNSUPPORTED = "not supported by this server (see the README's list of supported fields)"
SEED = "Same seed, same choices; choice j of a prompt uses seed + j."


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unknown_field: ClassVar[str] = UNSUPPORTED

    include_usage: bool = Field(default=False, description="One last chunk with `choices: []` and the usage.")


class _Sampling(BaseModel):
    """The fields completions and chat share."""

    model_config = ConfigDict(extra="forbid")
    unknown_field: ClassVar[str] = UNSUPPORTED

    model: str = Field(description="A model of GET /v1/models.")
    max_tokens: int | None = Field(
        default=None, ge=1, description="Default: the model's config; at most SERVE_MAX_NEW_TOKENS."
    )
    max_completion_tokens: int | None = Field(default=None, ge=1, description="The same as max_tokens.")
    temperature: float | None = Field(
        default=None, ge=0, le=2, allow_inf_nan=False, description="0 = greedy."
    )
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(default=None, ge=0, description="Extension: 0 = off; at most the vocabulary.")
    n: int = Field(default=1, ge=1, description="Choices per prompt (at most SERVE_MAX_CHOICES in all).")
    stop: str | list[str] | None = Field(
        default=None, description="Up to SERVE_MAX_STOP_STRINGS; not returned."
    )
    seed: int | None = Field(default=None, ge=0, description=SEED)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2, allow_inf_nan=False)
    stream: bool = Field(default=False, description="Server-Sent Events, ending with `data: [DONE]`.")
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256, description="Accepted and ignored.")
    map_unknown: bool = Field(default=False, description=MAP_UNKNOWN_DESCRIPTION.replace("422", "400"))
    ignore_eos: bool = Field(
        default=False,
        description="Extension (vLLM's): go on past the end-of-text token, to max_tokens (fixed lengths).",
    )


class CompletionRequest(_Sampling):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"model": "gpt-corpus", "prompt": "The ", "max_tokens": 32, "temperature": 0},
                {"model": "seq2seq-dates", "prompt": "3rd of March 2021", "n": 3},
            ]
        },
    )

    prompt: str | list[str] = Field(description="A prompt, or a list of them (at most SERVE_MAX_PROMPTS).")
    echo: bool = Field(default=False, description="Return the prompt before the completion.")
    logprobs: int | None = Field(
        default=None, ge=0, le=5, description="Log-probabilities of the N likeliest tokens."
    )


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")  # other part kinds are refused by name (text only)

    type: str
    text: str = ""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unknown_field: ClassVar[str] = UNSUPPORTED

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(default=None, max_length=256, description="Accepted; not in the template.")


class ChatRequest(_Sampling):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "gpt-corpus",
                    "messages": [{"role": "user", "content": "What is a list?"}],
                    "max_completion_tokens": 32,
                    "stream": True,
                }
            ]
        },
    )

    messages: list[ChatMessage] = Field(min_length=1, description="Rendered by the model's chat template.")
    logprobs: bool = Field(default=False, description="Log-probabilities of the chosen tokens.")
    top_logprobs: int | None = Field(
        default=None, ge=0, le=20, description="And of the N likeliest (logprobs)."
    )


# ------------------------------------------------------------------------------------------- responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class _Head(BaseModel):
    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str = Field(description="The model's name and served version.")


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: dict[str, Any] | None


class CompletionResponse(_Head):
    object: Literal["text_completion"]
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatChoice(BaseModel):
    index: int
    message: dict[str, Any] | None = Field(default=None, description="role, content, refusal.")
    delta: dict[str, Any] | None = Field(
        default=None, description="Streamed chunks: role first, then content."
    )
    finish_reason: Literal["stop", "length"] | None
    logprobs: dict[str, Any] | None


class ChatCompletionResponse(_Head):
    object: Literal["chat.completion", "chat.completion.chunk"]
    choices: list[ChatChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelCardList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorResponse(BaseModel):
    error: OpenAIError


OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIErrorResponse, "description": description}
    for code, description in (
        (400, "The request is malformed or does not fit the model (OpenAI's invalid_request_error)."),
        (401, "SERVE_API_KEY is set and the request's Bearer key is not it."),
        (404, "Unknown model."),
        (408, "The body did not arrive within the body timeout."),
        (413, "The body is larger than the server accepts."),
        (415, "The Content-Type is not JSON."),
        (429, "The model is at its bound of requests in progress; retry after Retry-After seconds."),
        (500, "Generation failed (a server fault)."),
        (503, "The model failed to load, or the server is at its bound or shutting down (Retry-After)."),
    )
}


# ------------------------------------------------------------------------------------------- V2 generate


class V2GenerateParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unknown_field: ClassVar[str] = UNSUPPORTED

    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(default=None, ge=0)
    seed: int | None = Field(default=None, ge=0)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2, allow_inf_nan=False)
    num_beams: int | None = Field(default=None, ge=1, description="Seq2seq models: beam width.")
    map_unknown: bool = False

    @property
    def n(self) -> int:  # one text_output per request
        return 1


class V2GenerateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"text_input": "The ", "parameters": {"max_tokens": 32, "temperature": 0}}]
        },
    )
    unknown_field: ClassVar[str] = UNSUPPORTED

    text_input: str
    parameters: V2GenerateParameters = V2GenerateParameters()


class V2GenerateResponse(BaseModel):
    model_name: str
    model_version: str
    text_output: str
    finish_reason: Literal["stop", "length"] | None = None
