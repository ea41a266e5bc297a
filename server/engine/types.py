"""Engine-facing request and output types: plain dataclasses, no torch, no vLLM, no pydantic.

The API layer converts validated HTTP bodies into `GenerateRequest`; an `EngineClient`
(protocol.py) turns it into vLLM calls and yields `ChoiceDelta`s. Video URLs stay URLs here:
the engine resolves and decodes them (server/video) off the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vreason.server.controller.params import VReasonParams
from vreason.server.errors import ClientError
from vreason.server.messages import StepRow

# Most top_logprobs per token: OpenAI's limit and vLLM's default max_logprobs. Stock vLLM on CPU
# crashes its engine when asked for close to the vocabulary size, so more is refused at the edge.
MAX_LOGPROBS = 20


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class VideoPart:
    url: str


@dataclass(frozen=True)
class ImagePart:
    """A still image; consecutive images in one message are taken as the frames of one video."""

    url: str


@dataclass(frozen=True)
class Message:
    role: str
    content: str | tuple[TextPart | VideoPart | ImagePart, ...]


@dataclass(frozen=True)
class SamplingOptions:
    """What the client asked for, named as in the OpenAI / vLLM chat API.

    None means "not set": the model's generation_config default (or vLLM's neutral default)
    applies, as with `vllm serve`. The engine hands the set values to vLLM's own request ->
    SamplingParams conversion, so the meaning of every field is vLLM's.
    """

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    n: int = 1
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    min_tokens: int = 0
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    bad_words: tuple[str, ...] = ()
    allowed_token_ids: tuple[int, ...] | None = None
    response_format: dict | None = None
    """OpenAI's response_format as sent (text, json_object or json_schema)."""
    structured_outputs: dict | None = None
    """vLLM's structured_outputs as sent (one of choice, regex, json, grammar, json_object)."""
    prompt_logprobs: int | None = None
    """Top logprobs per prompt position (vLLM's prompt_logprobs), computed at prefill."""
    echo: bool = False
    """vLLM's echo: with logprobs, prompt_logprobs default to top_logprobs (vLLM's rule)."""
    stream: bool = False
    """Read by vLLM's conversion only to refuse prompt_logprobs on a stream; the engine always
    consumes vLLM's deltas."""


@dataclass(frozen=True)
class VideoOptions:
    """Per-request overrides of the server's frame sampling (None: server default).

    The *_param fields name the request field the value came from, for error messages.
    """

    fps: float | None = None
    num_frames: int | None = None
    max_pixels: int | None = None
    num_frames_param: str = "mm_processor_kwargs.num_frames"
    fps_param: str = "mm_processor_kwargs.fps"


@dataclass(frozen=True)
class GenerateRequest:
    request_id: str
    messages: tuple[Message, ...]
    sampling: SamplingOptions
    video: VideoOptions = VideoOptions()
    vreason: VReasonParams | None = None
    chat_template_kwargs: dict = field(default_factory=dict)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    """Render the last message open-ended, so that the model continues it (assistant prefill)."""


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and (for the sampled token) its top alternatives.

    Computed by vLLM from the logits its sampler received, i.e. after the V-Reason controller
    replaced them for controlled requests.
    """

    token: str
    logprob: float
    bytes: tuple[int, ...] | None
    top: tuple["TokenLogprob", ...] = ()


@dataclass(frozen=True)
class TraceSummary:
    """One choice's V-Reason counts, made once in the worker; `complete` says every row arrived."""

    updates: int | None
    skipped_updates: int | None
    peak_step: int | None
    complete: bool
    reason: str | None = None
    positions: int | None = None
    """Controlled positions (video tokens) of the request."""


@dataclass
class ChoiceDelta:
    """New output of one choice since the previous delta (cumulative counts)."""

    index: int
    text: str
    num_tokens: int
    finish_reason: str | None = None
    trace_rows: list[StepRow] = field(default_factory=list)
    """V-Reason rows of this choice not delivered before (traced requests)."""
    trace_summary: TraceSummary | None = None
    """On the choice's last delta of a traced request: the worker's own counts."""
    logprobs: list[TokenLogprob] | None = None
    """Per new token when the request asked for logprobs, else None."""
    stop_reason: int | str | None = None
    """The stop string or token id that ended the choice (vLLM's stop_reason)."""
    token_texts: tuple[str, ...] | None = None
    """The text of each new token, in order (one entry per new token), when the delta holds more
    than one; None for a single-token delta (its text is `text`). The front end counts reasoning
    tokens per token with it (a multi-token delta may straddle the end of a thought)."""
    token_ids: tuple[int, ...] = ()
    """The ids of the new tokens: the tokens actually sampled."""


@dataclass(frozen=True)
class VideoUse:
    """What one video of the request was sampled to: frames used, and whether the server's
    frame cap cut down what the client asked for (`requested`, sent as `param`)."""

    frames: int
    requested: int | None = None
    capped: bool = False
    param: str | None = None
    lite_tokens: tuple[int, int] | None = None
    """With video pruning on (Lite or vLLM's EVS): (video tokens kept, video tokens before pruning)."""


@dataclass(frozen=True)
class PromptLogprob:
    """One entry of a prompt position's logprobs (vLLM's Logprob): its rank in the model's
    distribution at that position, and its text."""

    logprob: float
    rank: int | None
    decoded_token: str | None


@dataclass
class Usage:
    """What one request used, filled in by the engine as it runs: token counts, the prompt's
    token ids (and logprobs, when asked for) and what each video was sampled to."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    videos: list[VideoUse] = field(default_factory=list)
    prompt_token_ids: tuple[int, ...] = ()
    prompt_logprobs: list[dict[int, PromptLogprob] | None] | None = None
    """Per prompt position (None for the first, which has no context), when the request asked
    for prompt_logprobs: computed at prefill, before any V-Reason update."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


# A client fault found while preparing the request (maps to HTTP 4xx): the server's one
# client-error type under the name the engine layer has always used.
EngineClientError = ClientError


class RequestFailed(EngineClientError):
    """The server failed this one request (its V-Reason controller raised): HTTP 500. Every other
    request is unaffected."""

    def __init__(self, message: str, *, code: str):
        super().__init__(message, code=code, status=500)


class EngineUnavailable(Exception):
    """The engine cannot serve (not started, dead, or shutting down): HTTP 503."""
