"""Pydantic models of the HTTP API (the OpenAI chat-completions subset we serve).

Validation happens here, at the edge; `to_generate_request` turns a valid body into the
engine's plain dataclasses. Unknown top-level OpenAI fields are ignored (clients send many);
unknown keys inside our own `vreason` object are rejected.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from vreason.server.controller.params import VReasonParams
from vreason.server.engine.types import (GenerateRequest, ImagePart, Message, SamplingOptions, TextPart,
                                         VideoOptions, VideoPart)

MAX_N = 8
MAX_INT32 = 2 ** 31 - 1


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


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]


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


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_INT32)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_INT32)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=-(2 ** 63), le=2 ** 63 - 1)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    ignore_eos: bool = False  # vLLM's extension, used by benchmarks: always generate max_tokens
    stream: bool = False
    stream_options: StreamOptions | None = None
    mm_processor_kwargs: MMProcessorKwargs | None = None
    media_io_kwargs: MediaIOKwargs | None = None
    chat_template_kwargs: dict[str, TemplateValue] | None = None
    # Validated by VReasonParams (clear 400s naming the option), not by pydantic.
    vreason: StrictBool | dict[str, Any] | None = None

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

    def vreason_params(self, default: VReasonParams | None) -> VReasonParams | None:
        """Merge the request's `vreason` over the server default; None means off."""
        if self.vreason is None:
            return default if default is not None and default.enabled else None
        if self.vreason is False:
            return None
        base = default or VReasonParams()
        if self.vreason is True:
            return VReasonParams.from_dict({"enabled": True}, base)
        params = VReasonParams.from_dict({"enabled": True, **self.vreason}, base)
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
        return GenerateRequest(
            request_id=request_id, messages=tuple(msgs),
            sampling=SamplingOptions(max_tokens=self.max_completion_tokens or self.max_tokens,
                                     temperature=self.temperature, top_p=self.top_p, seed=self.seed,
                                     stop=stop, n=self.n, ignore_eos=self.ignore_eos),
            video=VideoOptions(fps=mm.fps or io.fps, num_frames=mm.num_frames or io.num_frames,
                               max_pixels=mm.max_pixels),
            vreason=vreason, chat_template_kwargs=dict(self.chat_template_kwargs or {}))


def _part(p: TextContent | VideoContent | ImageContent) -> TextPart | VideoPart | ImagePart:
    if isinstance(p, TextContent):
        return TextPart(p.text)
    if isinstance(p, VideoContent):
        return VideoPart(p.video_url.url)
    return ImagePart(p.image_url.url)
