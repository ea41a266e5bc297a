"""Pydantic models of the HTTP API (the OpenAI chat-completions fields we serve).

Validation happens here, at the edge; `to_generate_request` turns a valid body into the
engine's plain dataclasses. Every field is honoured, refused (chat.check_request names it), or
listed in IGNORED_FIELDS with the reason it cannot change the output; any other field is a 400
naming it (extra="forbid").
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

from vreason.server.controller.params import VReasonParams
from vreason.server.engine.types import (MAX_LOGPROBS, GenerateRequest, ImagePart, Message, SamplingOptions,
                                         TextPart, VideoOptions, VideoPart)

MAX_N = 8
MAX_INT32 = 2 ** 31 - 1

# Accepted and ignored: none of these can change the generated output.
IGNORED_FIELDS = {
    "user": "an end-user id for the provider's abuse monitoring",
    "metadata": "tags for OpenAI's stored completions; this server stores nothing",
    "store": "OpenAI's stored completions; this server stores nothing",
    "service_tier": "an OpenAI billing tier; this server has one",
    "parallel_tool_calls": "only matters with tools, which are refused",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextContent(_Strict):
    type: Literal["text"]
    text: str


class VideoURL(_Strict):
    url: str


class VideoContent(_Strict):
    type: Literal["video_url"]
    video_url: VideoURL
    uuid: str | None = None  # vLLM's media cache key; accepted, not used


class ImageURL(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None  # OpenAI's; frames are sized by the server


class ImageContent(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL
    uuid: str | None = None


ContentPart = Annotated[TextContent | VideoContent | ImageContent, Field(discriminator="type")]


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None  # ignored: Qwen2.5-VL's chat template does not read it


class JsonSchemaFormat(_Strict):
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    """OpenAI's response_format; json_object and json_schema go to vLLM's structured outputs."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class MMProcessorKwargs(_Strict):
    fps: float | None = Field(default=None, gt=0, le=60)
    num_frames: int | None = Field(default=None, ge=2, le=4096)
    max_pixels: int | None = Field(default=None, ge=28 * 28, le=4096 * 4096)
    # Sent by Qwen tooling and eval harnesses; frames are always sampled by this server and
    # resized down only, so these are accepted and have no effect.
    min_pixels: int | None = Field(default=None, ge=0)
    do_sample_frames: bool | None = None


class VideoIOKwargs(_Strict):
    num_frames: int | None = Field(default=None, ge=2, le=4096)
    fps: float | None = Field(default=None, gt=0, le=60)


class MediaIOKwargs(_Strict):
    """vLLM's per-request media loading options (lmms-eval sends `video.num_frames`)."""

    video: VideoIOKwargs | None = None


TemplateValue = StrictBool | int | float | str
RESERVED_TEMPLATE_KEYS = {"messages", "conversation", "tokenize", "add_generation_prompt", "chat_template",
                          "tools", "documents", "return_dict"}


class ChatCompletionRequest(_Strict):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_INT32)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_INT32)
    # Sampling: None means unset, so the model's generation_config default applies (as in vLLM).
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: StrictInt | None = Field(default=None, ge=-1, le=MAX_INT32)  # 0 or -1: off (vLLM)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    seed: int | None = Field(default=None, ge=-(2 ** 63), le=2 ** 63 - 1)
    stop: str | list[str] | None = None
    stop_token_ids: list[Annotated[StrictInt, Field(ge=0, le=MAX_INT32)]] | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    ignore_eos: bool = False  # vLLM's extension, used by benchmarks: always generate max_tokens
    logprobs: bool | None = None
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    min_tokens: int = Field(default=0, ge=0, le=MAX_INT32)
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    bad_words: list[Annotated[str, Field(min_length=1)]] | None = None
    allowed_token_ids: list[Annotated[StrictInt, Field(ge=0, le=MAX_INT32)]] | None = None
    response_format: ResponseFormat | None = None
    # Refused in chat.check_request unless absent or "none" (no tool calling here).
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    mm_processor_kwargs: MMProcessorKwargs | None = None
    media_io_kwargs: MediaIOKwargs | None = None
    chat_template_kwargs: dict[str, TemplateValue] | None = None
    # Validated by VReasonParams (clear 400s naming the option), not by pydantic.
    vreason: StrictBool | dict[str, Any] | None = None
    # IGNORED_FIELDS (see there for why each cannot change the output).
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v):
        bad = [k for k in (v or {}) if not k.lstrip("-").isdigit()]
        if bad:
            raise ValueError(f"logit_bias keys must be token ids, got {bad[0]!r}")
        return v

    @field_validator("response_format")
    @classmethod
    def _response_format(cls, v):
        if v is not None and v.type == "json_schema" and v.json_schema is None:
            raise ValueError("type json_schema needs a json_schema object")
        return v

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_kwargs(cls, v):
        bad = sorted(set(v or {}) & RESERVED_TEMPLATE_KEYS)
        if bad:
            raise ValueError(f"chat_template_kwargs may not set {', '.join(bad)}")
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop must be up to 4 non-empty strings")
        return v

    def vreason_params(self, default: VReasonParams | None, test_knobs: bool = False) -> VReasonParams | None:
        """Merge the request's `vreason` over the server default; None means off. The test-only
        knobs are unknown options unless the server runs with test knobs enabled."""
        if self.vreason is None:
            return default if default is not None and default.enabled else None
        if self.vreason is False:
            return None
        base = default or VReasonParams()
        if self.vreason is True:
            return VReasonParams.from_dict({"enabled": True}, base)
        cls = VReasonParams
        if test_knobs:
            from vreason.server.controller.knobs import KnobbedParams as cls
        params = cls.from_dict({"enabled": True, **self.vreason}, base)
        return params if params.enabled else None

    def to_generate_request(self, request_id: str, vreason: VReasonParams | None) -> GenerateRequest:
        msgs = []
        for m in self.messages:
            if isinstance(m.content, str):
                msgs.append(Message(m.role, m.content))
            else:
                msgs.append(Message(m.role, tuple(_part(p) for p in m.content)))
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        mm = self.mm_processor_kwargs or MMProcessorKwargs()
        io = (self.media_io_kwargs.video if self.media_io_kwargs else None) or VideoIOKwargs()
        io_prefix = "media_io_kwargs.video"
        return GenerateRequest(
            request_id=request_id, messages=tuple(msgs), sampling=self.sampling_options(stop),
            video=VideoOptions(
                fps=mm.fps or io.fps, num_frames=mm.num_frames or io.num_frames, max_pixels=mm.max_pixels,
                num_frames_param=("mm_processor_kwargs" if mm.num_frames else io_prefix) + ".num_frames",
                fps_param=("mm_processor_kwargs" if mm.fps else io_prefix) + ".fps"),
            vreason=vreason, chat_template_kwargs=dict(self.chat_template_kwargs or {}))

    def sampling_options(self, stop: tuple[str, ...]) -> SamplingOptions:
        rf = self.response_format
        return SamplingOptions(
            max_tokens=self.max_completion_tokens or self.max_tokens, temperature=self.temperature,
            top_p=self.top_p, top_k=self.top_k, min_p=self.min_p, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, repetition_penalty=self.repetition_penalty,
            seed=self.seed, stop=stop, stop_token_ids=tuple(self.stop_token_ids or ()), n=self.n,
            ignore_eos=self.ignore_eos, logprobs=bool(self.logprobs), top_logprobs=self.top_logprobs,
            logit_bias=dict(self.logit_bias) if self.logit_bias is not None else None,
            min_tokens=self.min_tokens, skip_special_tokens=self.skip_special_tokens,
            spaces_between_special_tokens=self.spaces_between_special_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output, bad_words=tuple(self.bad_words or ()),
            allowed_token_ids=tuple(self.allowed_token_ids) if self.allowed_token_ids is not None else None,
            response_format=rf.model_dump(by_alias=True, exclude_none=True) if rf is not None else None)


def _part(p: TextContent | VideoContent | ImageContent) -> TextPart | VideoPart | ImagePart:
    if isinstance(p, TextContent):
        return TextPart(p.text)
    if isinstance(p, VideoContent):
        return VideoPart(p.video_url.url)
    return ImagePart(p.image_url.url)
