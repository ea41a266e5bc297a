"""Differential test: the same table of chat requests against stock `vllm serve` and this server.

Stock vLLM 0.32's OpenAI server (`python -m vllm.entrypoints.openai.api_server`, our plugin
disabled) and `vreason serve` run one after the other on the demo model (float32, eager, seed 0,
and the same `--generation-config` directory holding Qwen2.5-VL-7B-Instruct's sampling defaults,
so requests that leave fields unset get the model's defaults on both). Each row is sent to both;
the test asserts the same status class, the same tokens for greedy and seeded rows, logprobs
within LOGPROB_TOL, the same finish/stop reasons and token counts, and the same JSON shape for
the fields both return. Every difference must be in one of the commented allow-lists below.
The table and both sides' answers are written to parity.json (print with -s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.helpers.servers import VENV_BIN, clean_env, launch, start_server, stop_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
STOCK_START_TIMEOUT = 600

# Qwen2.5-VL-7B-Instruct's generation_config.json sampling defaults.
QWEN_DEFAULTS = {"repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001, "top_k": 1}
# Both servers run the same float32 model and kernels; the only numeric difference is batch
# composition in the CPU matmuls, orders of magnitude below this (measured: ~2e-6).
LOGPROB_TOL = 1e-4
HI = [{"role": "user", "content": "Describe the weather in one sentence."}]
Q = "Which way does the red square move?"
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
TOOL = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
SAMPLE = {"temperature": 1.0, "top_p": 1.0, "top_k": 0}  # overrides the model's near-greedy defaults


def vmsg(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": Q}]}]


@dataclass(frozen=True)
class Row:
    id: str
    body: dict
    compare: str = "tokens"  # tokens: same text/logprobs; status: same status class only
    stock: bool = True  # False: never sent to stock vLLM (it would crash its engine)
    ours_status: int | None = None  # ours must answer exactly this (and name a param if 4xx)
    video: str | None = None  # "mp4" or "frames": filled in with the media fixture


def R(id: str, stream: bool = False, compare: str = "tokens", **body) -> Row:
    base = {"max_tokens": 8, "messages": HI}
    return Row(id, {**base, **body, **({"stream": True} if stream else {})}, compare)


ROWS = [
    # -- greedy and model defaults --
    R("greedy", temperature=0),
    R("greedy_stream", stream=True, temperature=0),
    R("model_defaults_unset", max_tokens=10),  # generation_config: top_k 1, repetition_penalty 1.05
    R("model_defaults_stream", stream=True, max_tokens=10),
    R("top_k_1_temperature_1", temperature=1, top_k=1, seed=3),  # equals greedy
    R("max_completion_tokens", temperature=0, max_completion_tokens=5, max_tokens=None),
    # -- logprobs --
    R("logprobs_top5", temperature=0, logprobs=True, top_logprobs=5),
    R("logprobs_only", temperature=0, logprobs=True),
    R("logprobs_top20_stream", stream=True, temperature=0, logprobs=True, top_logprobs=20),
    R("logprobs_sampled_seeded", **SAMPLE, seed=21, logprobs=True, top_logprobs=3),
    # -- seeded sampling --
    R("seeded", **SAMPLE, seed=7, max_tokens=12),
    R("seeded_stream", stream=True, **SAMPLE, seed=7, max_tokens=12),
    R("seeded_n2", **SAMPLE, seed=11, n=2),
    R("seeded_n2_stream_usage", stream=True, **SAMPLE, seed=11, n=2, stream_options={"include_usage": True}),
    R("min_p", **SAMPLE, min_p=0.2, seed=5, max_tokens=12),
    R("top_p_seeded", temperature=1, top_p=0.5, top_k=0, seed=9, max_tokens=12),
    # -- penalties --
    R("presence_penalty", temperature=0, presence_penalty=1.5, max_tokens=16),
    R("frequency_penalty", temperature=0, frequency_penalty=1.5, max_tokens=16),
    R("repetition_penalty", temperature=0, repetition_penalty=1.3, max_tokens=16),
    # -- stops, lengths, token sets --
    R("stop_token_ids", temperature=0, stop_token_ids=list(range(100, 700)), max_tokens=16),
    R("stop_strings_included", temperature=0, stop=["1", "2", "3", "e"], include_stop_str_in_output=True,
      max_tokens=16),
    R("stop_strings", temperature=0, stop=["1", "2", "3", "e"], max_tokens=16),
    R("min_tokens_ignore_eos", temperature=0, min_tokens=6, max_tokens=8, ignore_eos=True),
    R("logit_bias_forces_token", temperature=0, logit_bias={"50": 100}, max_tokens=4),
    R("allowed_token_ids", temperature=0, allowed_token_ids=list(range(10, 60)), max_tokens=6),
    R("bad_words", temperature=0, bad_words=["e", "s"], max_tokens=8),
    R("skip_special_tokens_false", temperature=0, skip_special_tokens=False,
      spaces_between_special_tokens=False, max_tokens=12),
    # -- structured outputs --
    R("json_object", temperature=0, response_format={"type": "json_object"}, max_tokens=24),
    R("json_schema", temperature=0, max_tokens=24,
      response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}),
    R("json_schema_stream", stream=True, temperature=0, max_tokens=24,
      response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}),
    # -- accepted and ignored --
    R("ignored_user_metadata_store", temperature=0, user="u1", metadata={"k": "v"}, store=False),
    R("tool_choice_none_without_tools", temperature=0, tool_choice="none"),
    # -- bad values (both refuse) --
    R("bad_tools_required", compare="status", tools=TOOL, tool_choice="required"),
    R("bad_tools_auto", compare="status", tools=TOOL),
    R("bad_top_logprobs_without_logprobs", compare="status", top_logprobs=2),
    R("bad_top_logprobs_21", compare="status", logprobs=True, top_logprobs=21),
    R("bad_temperature_negative", compare="status", temperature=-1),
    R("bad_top_k_string", compare="status", top_k="x"),
    R("bad_min_tokens_over_max", compare="status", min_tokens=9, max_tokens=3),
    R("bad_logit_bias_key", compare="status", logit_bias={"abc": 1}),
    R("bad_stop_token_out_of_vocab", compare="status", stop_token_ids=[99999]),
    R("bad_json_schema_missing", compare="status", response_format={"type": "json_schema"}),
    R("bad_n_zero", compare="status", n=0),
    R("bad_stream_options_without_stream", compare="status", stream_options={"include_usage": True}),
    R("bad_presence_penalty", compare="status", presence_penalty=3),
    # -- differences by design (see STATUS_DIFFERENCES) --
    R("unknown_field", compare="status", temperature=0, foo=1),
    R("tools_with_tool_choice_none", compare="status", temperature=0, tools=TOOL, tool_choice="none"),
    # -- never sent to stock: its CPU engine dies on top_logprobs near the vocabulary size --
    Row("top_logprobs_near_vocab", {"max_tokens": 2, "messages": HI, "logprobs": True, "top_logprobs": 2000},
        "status", stock=False, ours_status=400),
    # -- video --
    Row("video_mp4_all_frames", {"max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 2,
                                 "media_io_kwargs": {"video": {"num_frames": 16}}}, video="mp4"),
    # lmms-eval's default of 64 frames: above our 32-frame cap (sampled at the cap, then limited
    # by the clip's 16 frames); stock takes every frame. Same frames, same answer.
    Row("video_mp4_64_frames_lmms_eval", {"max_tokens": 8, "temperature": 0,
                                          "media_io_kwargs": {"video": {"num_frames": 64}}}, video="mp4"),
    Row("video_mp4_default_sampling", {"max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 2},
        video="mp4"),
    Row("video_mp4_default_sampling_stream", {"max_tokens": 8, "temperature": 0, "stream": True}, video="mp4"),
    # vLLM's frame-list URL carries no timing; both take media_io_kwargs.video.fps for it.
    Row("video_frame_list_fps2", {"max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 2,
                                  "media_io_kwargs": {"video": {"fps": 2.0}}}, video="frames"),
    Row("video_frame_list", {"max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 2},
        video="frames"),
    Row("video_frame_list_stream", {"max_tokens": 8, "temperature": 0, "stream": True}, video="frames"),
    Row("video_mp4_seeded", {"max_tokens": 8, **SAMPLE, "seed": 4}, video="mp4"),
]
for _r in ROWS:  # R(max_tokens=None) drops the field
    for _k in [k for k, v in _r.body.items() if v is None]:
        del _r.body[_k]
assert len({r.id for r in ROWS}) == len(ROWS) >= 30

# Rows whose status differs by design (stock 200, ours 400), with why.
STATUS_DIFFERENCES = {
    "unknown_field": "stock ignores unknown fields; this server refuses them with a 400 naming them",
    "tools_with_tool_choice_none": "stock renders the tools into the prompt and ignores them; this server "
                                   "has no tool calling and refuses `tools` outright",
}
# Rows whose tokens may differ (status, shape and finish reason are still compared), with why.
# Measured: for the 16-frame clip stock's prompt has 89 tokens (4 frames) with and without
# num_frames=16, ours 185 (the 16 frames asked for); stock's Qwen2.5-VL processor samples the
# loaded frames again at its own fps (2), this server samples once, to exactly num_frames.
_NUM_FRAMES = "this server honours media_io_kwargs.video.num_frames exactly; stock re-samples at 2 fps"
# vLLM's frame-list URL carries no timing: stock assumes 1 fps, this server --video-fps (2);
# with media_io_kwargs.video.fps set, both agree (row video_frame_list_fps2).
_FRAME_FPS = "unstated frame-list spacing: 1 fps on stock, --video-fps (2) here"
TOKEN_DIFFERENCES: dict[str, str] = {
    "video_mp4_all_frames": _NUM_FRAMES,
    "video_mp4_64_frames_lmms_eval": _NUM_FRAMES,
    "video_frame_list": _FRAME_FPS,
    "video_frame_list_stream": _FRAME_FPS,
}
# Response paths only this server returns.
OURS_ONLY = {
    "usage.completion_tokens_details",  # stock's stream usage chunk has no such key
    "videos", "videos[]", "videos[].frames_used", "videos[].frames_requested", "videos[].capped",
    "videos[].param",  # what each video was sampled to (the frame-cap report)
    "usage.completion_tokens_details.reasoning_tokens",  # the <think> split counts reasoning tokens
    "choices[].message.reasoning_content",  # the split's OpenAI-compatible alias, when it fires
}
# Response paths only stock returns (with a non-null value).
STOCK_ONLY = {
    "system_fingerprint",  # vLLM's version string; this server has /version instead
}
# Paths whose JSON type differs: stock sends null where this server sends an object.
TYPE_DIFFERENCES = {
    "usage.completion_tokens_details",  # {reasoning_tokens} here, null on stock
    "error.code",  # OpenAI's string codes here ("invalid_request"); stock repeats the HTTP status
}


@dataclass
class Answer:
    status: int
    param: str | None = None
    choices: dict = field(default_factory=dict)  # index -> {text, finish, stop, logprobs}
    usage: dict | None = None
    shape: dict = field(default_factory=dict)  # JSON path -> type name (nulls as "null")
    raw: object = None


def _shape(obj, path: str, out: dict) -> None:
    if isinstance(obj, dict):
        if path:
            out.setdefault(path, "object")
        for k, v in obj.items():
            _shape(v, f"{path}.{k}" if path else k, out)
    elif isinstance(obj, list):
        out.setdefault(path, "list")
        for v in obj:
            _shape(v, path + "[]", out)
    else:
        t = "null" if obj is None else "number" if isinstance(obj, (int, float)) and not isinstance(obj, bool) \
            else type(obj).__name__
        if out.get(path, "null") == "null":
            out[path] = t


def _tokens(lp: dict | None) -> list | None:
    if lp is None:
        return None
    return [(t["token"], t["logprob"], [(a["token"], a["logprob"]) for a in t["top_logprobs"]]) for t in lp["content"]]


def ask(url: str, row: Row, model: str) -> Answer:
    body = {"model": model, **row.body}
    with httpx.Client(timeout=180) as http:
        if not body.get("stream"):
            r = http.post(f"{url}/v1/chat/completions", json=body)
            data = r.json()
            ans = Answer(r.status_code, raw=data)
            _shape(data, "", ans.shape)
            if r.status_code != 200:
                ans.param = data["error"]["param"]
                return ans
            for c in data["choices"]:
                ans.choices[c["index"]] = {"text": c["message"]["content"], "finish": c["finish_reason"],
                                           "stop": c.get("stop_reason"), "logprobs": _tokens(c["logprobs"])}
            ans.usage = {k: data["usage"][k] for k in ("prompt_tokens", "completion_tokens")}
            return ans
        with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                data = json.loads(r.read())
                ans = Answer(r.status_code, data["error"]["param"], raw=data)
                _shape(data, "", ans.shape)
                return ans
            ans, chunks = Answer(200), []
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks.append(json.loads(line[6:]))
        ans.raw = chunks
        for ch in chunks:
            _shape(ch, "", ans.shape)
            if ch.get("usage"):
                ans.usage = {k: ch["usage"][k] for k in ("prompt_tokens", "completion_tokens")}
            for c in ch["choices"]:
                cur = ans.choices.setdefault(c["index"], {"text": "", "finish": None, "stop": None, "logprobs": None})
                cur["text"] += c["delta"].get("content") or ""
                if c.get("finish_reason"):
                    cur["finish"], cur["stop"] = c["finish_reason"], c.get("stop_reason")
                if c.get("logprobs"):
                    cur["logprobs"] = (cur["logprobs"] or []) + _tokens(c["logprobs"])
        return ans


def _bodies(media_dir: Path, frames_url: str) -> list[Row]:
    out = []
    for row in ROWS:
        if row.video is None:
            out.append(row)
            continue
        url = f"file://{media_dir / 'shapes.mp4'}" if row.video == "mp4" else frames_url
        out.append(Row(row.id, {**row.body, "messages": vmsg(url)}, row.compare, row.stock, row.ours_status))
    return out


@pytest.fixture(scope="module")
def rows(media_dir) -> list[Row]:
    import base64

    import cv2

    from vreason.clients.synth_video import render_moving_shapes

    jpgs = [base64.b64encode(cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1].tobytes()).decode()
            for f in render_moving_shapes(num_frames=8)]
    return _bodies(media_dir, "data:video/jpeg;base64," + ",".join(jpgs))


@pytest.fixture(scope="module")
def gen_config(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("genconfig")
    (d / "generation_config.json").write_text(json.dumps(QWEN_DEFAULTS))
    return d


def _start_stock(model: Path, media_dir: Path, gen_config: Path, log: Path):
    def command(port: int) -> list[str]:
        return [str(VENV_BIN / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                "--served-model-name", "demo", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
                "--max-model-len", "4096", "--max-num-seqs", "8", "--seed", "0", "--enforce-eager",
                "--limit-mm-per-prompt", '{"video": 1, "image": 0}', "--allowed-local-media-path", str(media_dir),
                "--trust-request-mm-kwargs", "--generation-config", str(gen_config)]

    env = clean_env(VLLM_PLUGINS="none", VLLM_CPU_KVCACHE_SPACE="1")  # stock model, stock worker
    return launch(command, log, env, STOCK_START_TIMEOUT, "stock vLLM")


def _stop(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def answers(demo_model, media_dir, gen_config, rows, tmp_path_factory) -> dict:
    """Both servers' answers to every row; stock first, then ours (one engine at a time)."""
    logs = tmp_path_factory.mktemp("parity")
    proc, url = _start_stock(demo_model, media_dir, gen_config, logs / "stock.log")
    try:
        stock = {r.id: ask(url, r, "demo") for r in rows if r.stock}
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200, "stock vLLM died during the table"
    finally:
        _stop(proc)
    ours_server = start_server(demo_model, media_dir, logs / "ours.log", "--generation-config", str(gen_config))
    try:
        ours = {r.id: ask(ours_server.url, r, "demo") for r in rows}
        log = ours_server.log.read_text()
    finally:
        stop_server(ours_server)
    table = {r.id: {"stock": _brief(stock.get(r.id)), "ours": _brief(ours[r.id])} for r in rows}
    (logs / "parity.json").write_text(json.dumps(table, indent=1))
    print("\n" + "\n".join(f"{k:36s} stock={v['stock']} ours={v['ours']}" for k, v in table.items()))
    return {"stock": stock, "ours": ours, "log": log}


def _brief(a: Answer | None) -> str:
    if a is None:
        return "not sent"
    if a.status != 200:
        return f"{a.status} param={a.param}"
    c = a.choices[0]
    return f"200 {c['text']!r} finish={c['finish']} tokens={a.usage and a.usage['completion_tokens']}"


LOGPROB_DIFFS: list[float] = []  # every compared sampled-token logprob, for the summary below


def _assert_logprobs_close(ours: list | None, stock: list | None, where: str) -> None:
    assert (ours is None) == (stock is None), f"{where}: logprobs present on one side only"
    if ours is None:
        return
    assert len(ours) == len(stock), where
    for i, ((tok_o, lp_o, top_o), (tok_s, lp_s, top_s)) in enumerate(zip(ours, stock)):
        assert tok_o == tok_s, f"{where} token {i}"
        LOGPROB_DIFFS.append(abs(lp_o - lp_s))
        assert abs(lp_o - lp_s) <= LOGPROB_TOL, f"{where} token {i}: {lp_o} vs {lp_s}"
        assert [t for t, _ in top_o] == [t for t, _ in top_s], f"{where} token {i} top tokens"
        for (_, a), (_, b) in zip(top_o, top_s):
            assert abs(a - b) <= LOGPROB_TOL, f"{where} token {i} top: {a} vs {b}"


def _assert_same_shape(ours: dict, stock: dict, where: str) -> None:
    for path, t in ours.items():
        if path in stock:
            if stock[path] != t and "null" not in (t, stock[path]) or path in TYPE_DIFFERENCES:
                assert path in TYPE_DIFFERENCES, f"{where}: {path} is {t} here, {stock[path]} on stock"
        else:
            assert path in OURS_ONLY or t == "null", f"{where}: {path} only here (not in OURS_ONLY)"
    for path, t in stock.items():
        if path not in ours and t != "null":  # vLLM's null-valued extension fields are not sent here
            assert path in STOCK_ONLY or path.split(".")[0] in STOCK_ONLY, f"{where}: {path} only on stock"


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_same_answer_as_stock_vllm(row: Row, answers: dict):
    ours = answers["ours"][row.id]
    if row.ours_status is not None:
        assert ours.status == row.ours_status, ours.raw
    if ours.status >= 400:
        assert ours.param, f"{row.id}: our 4xx names no param: {ours.raw}"
    if not row.stock:
        return
    stock = answers["stock"][row.id]
    if row.id in STATUS_DIFFERENCES:
        assert (stock.status, ours.status) == (200, 400), (stock.raw, ours.raw)
        return
    assert stock.status // 100 == ours.status // 100, f"stock {stock.raw}\nours {ours.raw}"
    _assert_same_shape(ours.shape, stock.shape, row.id)
    if row.compare == "status" or ours.status != 200:
        return
    if row.id in TOKEN_DIFFERENCES:
        assert [c["finish"] for c in ours.choices.values()] == [c["finish"] for c in stock.choices.values()]
        assert (ours.usage or {}).get("completion_tokens") == (stock.usage or {}).get("completion_tokens")
        return
    assert ours.usage == stock.usage
    assert sorted(ours.choices) == sorted(stock.choices)
    for i in ours.choices:
        o, s = ours.choices[i], stock.choices[i]
        assert (o["text"], o["finish"], o["stop"]) == (s["text"], s["finish"], s["stop"]), f"choice {i}"
        _assert_logprobs_close(o["logprobs"], s["logprobs"], f"{row.id} choice {i}")


def test_frame_cap_is_reported_in_the_response_and_the_log(answers: dict):
    """lmms-eval's 64 frames: sampled at the 32-frame cap (the clip has 16), said in both places."""
    ours = answers["ours"]["video_mp4_64_frames_lmms_eval"]
    assert ours.raw["videos"] == [{"frames_used": 16, "frames_requested": 64, "capped": True,
                                   "param": "media_io_kwargs.video.num_frames"}]
    assert ("64 frames asked (media_io_kwargs.video.num_frames), above the server's cap: sampled at most 32 "
            "(16 used)") in answers["log"]
    plain = answers["ours"]["video_mp4_all_frames"]
    assert plain.raw["videos"] == [{"frames_used": 16, "frames_requested": 16, "capped": False}]


def test_logprob_difference_summary(answers: dict):
    """After the table (runs last): how far apart the logprobs were (printed with -s)."""
    if not LOGPROB_DIFFS:
        pytest.skip("no logprob rows ran in this session")
    print(f"\nlogprobs compared: {len(LOGPROB_DIFFS)}, max |ours - stock| = {max(LOGPROB_DIFFS):.2e}")
