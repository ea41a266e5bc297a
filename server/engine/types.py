"""Engine-facing request and output types: plain dataclasses, no torch, no vLLM, no pydantic.

The API layer converts validated HTTP bodies into `GenerateRequest`; an `EngineClient`
(protocol.py) turns it into vLLM calls and yields `ChoiceDelta`s. Video URLs stay URLs here:
the engine resolves and decodes them (server/video) off the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vreason.server.controller.params import VReasonParams


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
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    ignore_eos: bool = False


@dataclass(frozen=True)
class VideoOptions:
    """Per-request overrides of the server's frame sampling (None: server default)."""

    fps: float | None = None
    num_frames: int | None = None
    max_pixels: int | None = None


@dataclass(frozen=True)
class GenerateRequest:
    request_id: str
    messages: tuple[Message, ...]
    sampling: SamplingOptions
    video: VideoOptions = VideoOptions()
    vreason: VReasonParams | None = None
    chat_template_kwargs: dict = field(default_factory=dict)


@dataclass
class ChoiceDelta:
    """New output of one choice since the previous delta (cumulative counts)."""

    index: int
    text: str
    num_tokens: int
    finish_reason: str | None = None
    trace_rows: list[dict] = field(default_factory=list)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class EngineClientError(Exception):
    """A client fault found while preparing the request (maps to HTTP 4xx)."""

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_request",
                 status: int = 400):
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


class EngineUnavailable(Exception):
    """The engine cannot serve (not started, dead, or shutting down): HTTP 503."""
