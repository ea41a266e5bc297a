"""Pydantic models of the HTTP API (the OpenAI chat-completions fields we serve).

Validation happens here, at the edge; `to_generate_request` turns a valid body into the
engine's plain dataclasses. Every field is honoured, refused (chat.check_request names it, with
REFUSED_FIELDS / REFUSED_MESSAGE_FIELDS giving why), or listed in IGNORED_FIELDS with the reason
it cannot change the output; any other field is a 400 naming it (extra="forbid").
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
    "length_penalty": "only read by beam search, which is refused",
}

# Refused when set (chat.check_request): field -> (code, why). `use_beam_search: false` is fine.
REFUSED_FIELDS = {
    "use_beam_search": ("beam_search_not_supported",
                        "beam search is not supported by this server: vLLM runs it in its own API layer as "
                        "many engine requests per step, which this server does not use, and the V-Reason "
                        "controller runs one sequence per choice; sample several choices with n instead"),
}
TOOLS_REFUSAL = "tool calling is not supported by this server"
REASONING_REFUSAL = ("Qwen2.5-VL's chat template does not render a message's reasoning, so it would be "
                     "dropped: put the thought in content (<think>...</think>)")

# A message's fields beyond role and content. `name`: accepted and ignored (Qwen2.5-VL's chat
# template does not read it); the others are refused (chat.check_request), field -> (code, why).
REFUSED_MESSAGE_FIELDS = {
    "tool_calls": ("tools_not_supported", TOOLS_REFUSAL),
    "tool_call_id": ("tools_not_supported", TOOLS_REFUSAL),
    "function_call": ("tools_not_supported", TOOLS_REFUSAL),
    "reasoning": ("invalid_request", REASONING_REFUSAL),
    "reasoning_content": ("invalid_request", REASONING_REFUSAL),
}
# Roles refused (chat.check_request): they only make sense with tool calling. Every other role
# (system, user, assistant, developer or a custom one) goes to the chat template as sent, as on
# `vllm serve` (Qwen2.5-VL's template writes it after <|im_start|>).
TOOL_ROLES = ("tool", "function")


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
    role: str = Field(min_length=1)
    content: str | list[ContentPart]
    name: str | None = None  # ignored: Qwen2.5-VL's chat template does not read it
    # REFUSED_MESSAGE_FIELDS: declared so that chat.check_request can say why.
    tool_calls: Any = None
    tool_call_id: Any = None
    function_call: Any = None
    reasoning: Any = None
    reasoning_content: Any = None

    def text(self) -> str:
        """The message's text (its text parts joined by newlines, as vLLM's echo joins them)."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content if isinstance(p, TextContent))


class JsonSchemaFormat(_Strict):
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    """OpenAI's response_format; json_object and json_schema go to vLLM's structured outputs."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


STRUCTURED_CONSTRAINTS = ("json", "regex", "choice", "grammar", "json_object")


class StructuredOutputs(_Strict):
    """vLLM's structured_outputs (guided decoding): one constraint, plus vLLM's options."""

    json_: str | dict[str, Any] | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = Field(default=None, min_length=1)
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool | None = None
    disable_additional_properties: bool | None = None
    whitespace_pattern: str | None = None

    def constraints(self) -> list[str]:
        return [k for k in STRUCTURED_CONSTRAINTS if getattr(self, "json_" if k == "json" else k) is not None]


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
                          "tools", "documents", "return_dict", "continue_final_message"}


class ChatCompletionRequest(_Strict):
    model: str | None = None  # None or "": the served model, as on vllm serve
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
    structured_outputs: StructuredOutputs | None = None
    prompt_logprobs: StrictInt | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    return_token_ids: bool | None = None
    # Prompt rendering (vLLM's extensions): the chat template's flags, and echo of the last message.
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    echo: bool = False
    use_beam_search: bool = False  # REFUSED_FIELDS when true
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
    length_penalty: float | None = None

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
            vreason=vreason, chat_template_kwargs=dict(self.chat_template_kwargs or {}),
            add_generation_prompt=self.add_generation_prompt,
            continue_final_message=self.continue_final_message)

    def response_role(self) -> str:
        """The answer's role, vLLM's rule: assistant, or the last message's role without a
        generation prompt (so a continued message keeps its role)."""
        return "assistant" if self.add_generation_prompt else self.messages[-1].role

    def echoed_text(self) -> str:
        """What `echo` puts before the answer: the last message's text when its role is the
        answer's (vLLM's rule), else nothing."""
        last = self.messages[-1]
        return last.text() if self.echo and last.role == self.response_role() else ""

    def continued_text(self) -> str:
        """The text the model continues (continue_final_message), else ""."""
        return self.messages[-1].text() if self.continue_final_message else ""

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
            response_format=rf.model_dump(by_alias=True, exclude_none=True) if rf is not None else None,
            structured_outputs=(self.structured_outputs.model_dump(by_alias=True, exclude_none=True)
                                if self.structured_outputs is not None else None),
            prompt_logprobs=self.prompt_logprobs, echo=self.echo, stream=self.stream)


class BatchChatCompletionRequest(ChatCompletionRequest):
    """vLLM's /v1/chat/completions/batch body: `messages` is a list of conversations, each answered
    as one chat completion with the other fields (chat.check_batch says which are refused)."""

    messages: list[Annotated[list[ChatMessage], Field(min_length=1)]] = Field(min_length=1)

    def conversations(self) -> list[ChatCompletionRequest]:
        """One chat request per conversation, with the fields this batch request set."""
        fields = self.model_dump(exclude={"messages"}, exclude_unset=True, by_alias=True)
        return [ChatCompletionRequest.model_validate({**fields, "messages": conv}) for conv in self.messages]


def _part(p: TextContent | VideoContent | ImageContent) -> TextPart | VideoPart | ImagePart:
    if isinstance(p, TextContent):
        return TextPart(p.text)
    if isinstance(p, VideoContent):
        return VideoPart(p.video_url.url)
    return ImagePart(p.image_url.url)
