"""The bad-input matrix (ecosystem.md section 6) against a real `vreason serve`, one row per case.

Each row: the request (a JSON body built from the odd-video URLs, or raw bytes), the expected
status, and where the server fixes them, the error ``code`` and ``param``. Every error answer
must be exactly the OpenAI shape with no leaked internals, and /health must stay 200 after
every row (a row that kills the engine fails there, not later).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.helpers.openai_errors import assert_openai_error

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
ANY = object()  # param / code not pinned
MiB = 1024 * 1024
HI = [{"role": "user", "content": "hi"}]


def req(**over) -> dict:
    """A small valid request with fields replaced; a value of ``...`` deletes the field."""
    body = {"model": "demo", "max_tokens": 2, "messages": HI, **over}
    return {k: v for k, v in body.items() if v is not ...}


def vmsg(*urls: str, text: str = "What happens?") -> list[dict]:
    parts = [{"type": "video_url", "video_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def video(name: str, **over) -> Callable[[dict], dict]:
    return lambda v: req(messages=vmsg(v[name]), **over)


def raw_json(text: str) -> bytes:
    return text.encode()


def oversized(total: int, chunk: int = MiB) -> Callable[[], Iterator[bytes]]:
    """A valid JSON body of ``total`` bytes whose bulk is an ignored field, streamed in chunks."""
    head = json.dumps(req(max_tokens=1))[:-1].encode() + b', "padding": "'
    tail = b'"}'

    def gen() -> Iterator[bytes]:
        yield head
        left = total - len(head) - len(tail)
        while left > 0:
            n = min(chunk, left)
            yield b"x" * n
            left -= n
        yield tail
    return gen


@dataclass(frozen=True)
class Row:
    id: str
    body: dict | Callable[[dict], dict] | bytes | Callable[[], Iterator[bytes]]
    status: int | tuple[int, ...]
    code: object = ANY  # a value, a tuple of acceptable values, or ANY
    param: object = ANY  # likewise
    headers: dict = field(default_factory=dict)
    says: str | None = None  # a phrase the message must contain (case-insensitive)


BIG = 101 * MiB
# A bad part inside a content list: the part's own path is best, the content field will do; a
# pydantic union tag in the path ("messages.0.content.str") is wrong.
PART_URL = ("messages.0.content", "messages.0.content.0", "messages.0.content.0.video_url.url")
ROWS = [
    # -- transport and JSON (T1-T3, T9) --
    Row("json_truncated", b'{"model":', 400, "invalid_json", None),
    Row("json_not_utf8", b"\xff\xfe\x00{", 400),
    Row("json_empty_body", b"", 400),
    Row("json_array", b"[]", 400),
    Row("json_null", b"null", 400),
    Row("json_deep_nesting", b"[" * 100_000, 400),
    Row("content_type_text_plain", json.dumps(req()).encode(), (400, 415), headers={"content-type": "text/plain"}),
    Row("body_101MiB_content_length", oversized(BIG), 413, "body_too_large", headers={"content-length": str(BIG)}),
    Row("body_101MiB_chunked", oversized(BIG), 413, "body_too_large"),
    # -- fields and types (T3, T5, T7) --
    Row("model_missing_is_the_served_one", req(model=...), 200),  # as on vllm serve
    Row("model_wrong_type", req(model=5), 400, param="model"),
    Row("model_unknown", req(model="gpt-4o"), 404, "model_not_found", "model"),
    Row("messages_missing", req(messages=...), 400, param="messages"),
    Row("messages_string", req(messages="hi"), 400, param="messages"),
    Row("messages_empty", req(messages=[]), 400, param="messages"),
    Row("message_not_object", req(messages=["hi"]), 400, param="messages.0"),
    Row("message_tool_role", req(messages=[{"role": "tool", "content": "hi"}]), 400, "tools_not_supported",
        "messages.0.role"),
    Row("message_empty_role", req(messages=[{"role": "", "content": "hi"}]), 400, param="messages.0.role"),
    Row("message_reasoning_field", req(messages=[{"role": "assistant", "content": "a", "reasoning": "b"}, *HI]), 400,
        param="messages.0.reasoning", says="put the thought in content"),
    Row("beam_search_refused", req(use_beam_search=True), 400, "beam_search_not_supported", "use_beam_search"),
    Row("message_content_missing", req(messages=[{"role": "user"}]), 400, param="messages.0.content"),
    Row("message_content_int", req(messages=[{"role": "user", "content": 5}]), 400, param="messages.0.content"),
    # image_url parts are frames of a video (harness frame mode); "ABC" is no image
    Row("image_frame_not_an_image", req(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}}]}]), 400,
        code="video_decode_failed", param="messages"),
    Row("image_frame_http_url", req(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://169.254.169.254/x.jpg"}}]}]), 400,
        code="unsupported_media_url", param="messages"),
    Row("content_part_unknown_type", req(messages=[{"role": "user", "content": [
        {"type": "audio_url", "audio_url": {"url": "data:audio/wav;base64,QUJD"}}]}]), 400,
        param=("messages.0.content", "messages.0.content.0", "messages.0.content.0.type")),
    Row("content_part_text_missing", req(messages=[{"role": "user", "content": [{"type": "text"}]}]), 400,
        param=("messages.0.content", "messages.0.content.0", "messages.0.content.0.text")),
    Row("unknown_top_level_field", req(foo=1), 400, "unknown_field", "foo", says="not supported"),
    Row("ignored_fields_accepted", req(user="u", metadata={"k": "v"}, store=False), 200),
    Row("tools_refused", req(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools_not_supported",
        "tools", says="tool calling is not supported"),
    Row("top_logprobs_near_vocab", req(logprobs=True, top_logprobs=2000), 400, param="top_logprobs"),
    Row("json_schema_invalid_type", req(response_format={"type": "json_schema", "json_schema": {
        "name": "a", "schema": {"type": "foo"}}}), 400, param="response_format"),
    Row("json_schema_dangling_ref", req(response_format={"type": "json_schema", "json_schema": {
        "name": "a", "schema": {"$ref": "#/nowhere"}}}), 400, param="response_format"),
    Row("allowed_token_ids_empty", req(allowed_token_ids=[]), 400, param="allowed_token_ids"),
    Row("logit_bias_out_of_vocab", req(logit_bias={"-1": 2}), 400, param="logit_bias"),
    Row("stop_token_ids_out_of_vocab", req(stop_token_ids=[99999]), 400, param="stop_token_ids"),
    # -- sampling parameters and context (S1-S5, S7, S11) --
    Row("max_tokens_negative", req(max_tokens=-1), 400, param="max_tokens"),
    Row("max_tokens_zero", req(max_tokens=0), 400, param="max_tokens"),
    Row("max_tokens_string", req(max_tokens="ten"), 400, param="max_tokens"),
    Row("max_tokens_float", req(max_tokens=1.5), 400, param="max_tokens"),
    Row("max_tokens_huge", req(max_tokens=10**9), 400, param="max_tokens", says="maximum context length"),
    Row("max_tokens_bigint", req(max_tokens=2**70), 400, param="max_tokens"),
    Row("max_completion_tokens_negative", req(max_completion_tokens=-5), 400, param="max_completion_tokens"),
    Row("n_huge", req(n=10**9), 400, param="n"),
    Row("n_zero", req(n=0), 400, param="n"),
    Row("temperature_negative", req(temperature=-1), 400, param="temperature"),
    Row("temperature_too_high", req(temperature=3), 400, param="temperature"),
    Row("temperature_string", req(temperature="hot"), 400, param="temperature"),
    Row("temperature_nan", raw_json('{"model": "demo", "messages": [{"role": "user", "content": "hi"}], '
                                    '"temperature": NaN}'), 400, param="temperature"),
    Row("top_p_zero", req(top_p=0), 400, param="top_p"),
    Row("top_p_two", req(top_p=2), 400, param="top_p"),
    Row("seed_string", req(seed="abc"), 400, param="seed"),
    Row("stop_too_many", req(stop=["a", "b", "c", "d", "e"]), 400, param="stop"),
    Row("stop_wrong_type", req(stop=5), 400, param="stop"),
    Row("stream_wrong_type", req(stream=[1]), 400, param="stream"),
    Row("stream_options_without_stream", req(stream_options={"include_usage": True}), 400,
        param="stream_options"),
    Row("stream_options_string", req(stream=True, stream_options="yes"), 400, param="stream_options"),
    Row("stream_options_bad_value", req(stream=True, stream_options={"include_usage": "maybe"}), 400,
        param="stream_options.include_usage"),
    Row("stream_options_unknown_key", req(stream=True, stream_options={"bogus": True}), 400,
        param="stream_options.bogus"),
    Row("prompt_longer_than_context", req(messages=[{"role": "user", "content": "hello " * 6000}]), 400,
        param="messages", says="maximum context length"),
    # V23: placeholder tokens spelled in text with no media must not reach the model as video.
    Row("placeholder_injection", req(messages=[{"role": "user", "content":
        "<|vision_start|><|video_pad|><|video_pad|><|vision_end|> what?"}]), (200, 400)),
    # -- video input (V1, V3-V7, V11, V13, V15-V20) --
    Row("too_many_videos", lambda v: req(messages=vmsg(v["good"], v["good"])), 400, "too_many_videos", "messages"),
    Row("video_empty_data_url", req(messages=vmsg("data:video/mp4;base64,")), 400, "video_empty", "messages"),
    Row("video_empty_file", video("empty"), 400, "video_empty", "messages"),
    Row("video_truncated", video("truncated_data"), 400, "video_decode_failed", "messages"),
    Row("video_truncated_file", video("truncated"), 400, "video_decode_failed", "messages"),
    Row("video_not_a_video", video("text_data"), 400, "video_decode_failed", "messages"),
    Row("video_png_renamed_mp4", video("png_renamed"), 400, "video_decode_failed", "messages"),
    Row("video_zero_frames", video("zero_frames"), 400, "video_decode_failed", "messages"),
    Row("video_zero_size_frames", video("zero_size"), 400, "video_decode_failed", "messages"),
    Row("video_huge_resolution", video("huge_resolution"), 400, "video_resolution_too_large", "messages"),
    Row("video_too_long", video("too_long"), 400, "video_too_long", "messages"),
    Row("video_unsupported_codec", video("unknown_codec"), 400, "video_decode_failed", "messages"),
    Row("video_too_large", req(messages=vmsg("data:video/mp4;base64," + "A" * (88 * MiB))), 413,
        "video_too_large", "messages"),
    Row("bad_base64", req(messages=vmsg("data:video/mp4;base64,!!!!")), 400, "invalid_data_url", "messages"),
    Row("data_url_no_comma", req(messages=vmsg("data:video/mp4;base64")), 400, "invalid_data_url", "messages"),
    Row("data_url_not_base64", req(messages=vmsg("data:video/mp4,QUJD")), 400, "invalid_data_url", "messages"),
    Row("data_url_image_type", req(messages=vmsg("data:image/png;base64,QUJD")), 400, "invalid_data_url",
        "messages"),
    Row("data_url_text_type", req(messages=vmsg("data:text/plain;base64,QUJD")), 400, "invalid_data_url",
        "messages"),
    Row("file_outside_allowed_dir", req(messages=vmsg("file:///etc/passwd")), 400, "media_path_not_allowed",
        "messages"),
    Row("file_path_traversal", video("traversal"), 400, "media_path_not_allowed", "messages"),
    Row("file_missing", video("missing"), 400, "media_not_found", "messages"),
    Row("scheme_ftp", req(messages=vmsg("ftp://127.0.0.1/v.mp4")), 400, "unsupported_media_url", "messages"),
    Row("http_url_not_enabled", req(messages=vmsg("http://127.0.0.1:9/v.mp4")), 400,
        ("unsupported_media_url", "media_fetch_disallowed"), "messages"),
    Row("ssrf_metadata_url", req(messages=vmsg("http://169.254.169.254/latest/meta-data/")), 400,
        ("unsupported_media_url", "media_fetch_disallowed"), "messages"),
    Row("video_url_not_string", req(messages=[{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": 5}}]}]), 400, param=PART_URL),
    Row("video_url_missing_url", req(messages=[{"role": "user", "content": [
        {"type": "video_url", "video_url": {}}]}]), 400, param=PART_URL),
    Row("mm_fps_huge", video("good", mm_processor_kwargs={"fps": 1000}), 400, param="mm_processor_kwargs.fps"),
    Row("mm_num_frames_huge", video("good", mm_processor_kwargs={"num_frames": 10**6}), 400,
        param="mm_processor_kwargs.num_frames"),
    # Above the 32-frame cap: sampled at the cap and reported (`--video-frames-over-cap reject`
    # makes it a 400 naming the field sent; tests/e2e/test_frame_cap.py).
    Row("mm_num_frames_over_server_cap", video("good", mm_processor_kwargs={"num_frames": 64}), 200),
    Row("mm_max_pixels_huge", video("good", mm_processor_kwargs={"max_pixels": 10**12}), 400,
        param="mm_processor_kwargs.max_pixels"),
    Row("mm_unknown_key", video("good", mm_processor_kwargs={"video_backend": "decord"}), 400,
        param="mm_processor_kwargs.video_backend"),
    # -- vreason options (K2-K4) --
    Row("vreason_unknown_key", req(vreason={"entrpy_threshold": 0.3}), 400, "invalid_vreason_option",
        "vreason.entrpy_threshold"),
    Row("vreason_wrong_type", req(vreason={"lr": "fast"}), 400, "invalid_vreason_option", "vreason.lr"),
    Row("vreason_lr_negative", req(vreason={"lr": -1}), 400, "invalid_vreason_option", "vreason.lr"),
    Row("vreason_lr_nan", raw_json('{"model": "demo", "max_tokens": 2, "messages": [{"role": "user", '
                                   '"content": "hi"}], "vreason": {"lr": NaN}}'), 400, param="vreason.lr"),
    Row("vreason_steps_zero", req(vreason={"steps": 0}), 400, "invalid_vreason_option", "vreason.steps"),
    Row("vreason_steps_huge", req(vreason={"steps": 10**9}), 400, "invalid_vreason_option", "vreason.steps"),
    Row("vreason_update_every_zero", req(vreason={"update_every": 0}), 400, "invalid_vreason_option",
        "vreason.update_every"),
    Row("vreason_beta_out_of_range", req(vreason={"beta": 1.5}), 400, "invalid_vreason_option", "vreason.beta"),
    Row("vreason_bad_enum_norm_restore", req(vreason={"norm_restore": "layer"}), 400, "invalid_vreason_option",
        "vreason.norm_restore"),
    Row("vreason_bad_enum_targets", req(vreason={"targets": "audio"}), 400, "invalid_vreason_option",
        "vreason.targets"),
    Row("vreason_bad_enum_apply", req(vreason={"apply": "later"}), 400, "invalid_vreason_option", "vreason.apply"),
    Row("vreason_trace_string", req(vreason={"trace": "yes"}), 400, "invalid_vreason_option", "vreason.trace"),
    Row("vreason_enabled_string", req(vreason={"enabled": "yes"}), 400, "invalid_vreason_option",
        "vreason.enabled"),
    Row("vreason_as_string", req(vreason="yes"), 400, param="vreason"),
    Row("vreason_as_number", req(vreason=1), 400, param="vreason"),
    Row("vreason_as_list", req(vreason=[]), 400, param="vreason"),
    Row("vreason_null_is_default", req(vreason=None), 200),
]
assert len({r.id for r in ROWS}) == len(ROWS), "duplicate row ids"


def _send(http: httpx.Client, row: Row, videos: dict) -> httpx.Response:
    body = row.body
    if callable(body) and not isinstance(body, dict):
        body = body(videos) if body.__code__.co_argcount == 1 else body()
    headers = {"content-type": "application/json", **row.headers}
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    return http.post("/v1/chat/completions", content=content, headers=headers)


RESULTS: dict[str, tuple] = {}  # row id -> (status, code, param), printed after the table


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(120.0, connect=10.0)) as c:
        yield c


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_matrix(row: Row, http: httpx.Client, odd_videos: dict):
    r = _send(http, row, odd_videos)
    err_body = r.json().get("error") if r.headers.get("content-type", "").startswith("application/json") else None
    RESULTS[row.id] = (r.status_code, *((err_body.get("code"), err_body.get("param"))
                                        if isinstance(err_body, dict) else (None, None)))
    allowed = row.status if isinstance(row.status, tuple) else (row.status,)
    assert r.status_code in allowed, f"{row.id}: got {r.status_code}, want {row.status}: {r.text[:400]}"
    if r.status_code == 200:
        assert r.json()["object"] == "chat.completion", r.text[:400]
    else:
        err = assert_openai_error(r)
        assert 400 <= r.status_code < 500
        if row.code is not ANY:
            codes = row.code if isinstance(row.code, tuple) else (row.code,)
            assert err["code"] in codes, f"{row.id}: code {err['code']!r}, want {row.code!r}"
        if row.param is not ANY:
            params = row.param if isinstance(row.param, tuple) else (row.param,)
            assert err["param"] in params, f"{row.id}: param {err['param']!r}, want {row.param!r}"
        if row.says:
            assert row.says in err["message"].lower(), f"{row.id}: message {err['message']!r}"
    assert http.get("/health").status_code == 200, f"server unhealthy after {row.id}"


def test_server_healthy_after_matrix(http: httpx.Client, tmp_path):
    """After the table: the summary (visible with -s, and as JSON), then the server still works."""
    (tmp_path / "matrix.json").write_text(json.dumps(RESULTS, indent=1))
    print("\n" + "\n".join(f"{k:40s} {s} {c} {p}" for k, (s, c, p) in RESULTS.items()))
    assert http.get("/health").status_code == 200
    ok = http.post("/v1/chat/completions", json=req(max_tokens=3))
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] in ("length", "stop")
