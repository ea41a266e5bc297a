"""Client commands fail with a message and an exit code, never a traceback or a hang (no server)."""

from __future__ import annotations

import contextlib
import io
import socket

from vreason.clients.cli import main
from vreason.clients.eval.demo_dataset import make_demo_dataset


def closed_port() -> int:
    with socket.socket() as s:  # bound then released: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    return rc, err.getvalue()


def test_eval_against_nothing(tmp_path):
    ds = make_demo_dataset(tmp_path / "d", n=2)
    url = f"http://127.0.0.1:{closed_port()}"
    rc, err = run_cli(["eval", str(ds), "--base-url", url, "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 1 and "cannot reach" in err
    # with --model given the lookup is skipped: every request fails, is recorded, and the run still ends
    rc, err = run_cli(
        [
            "eval",
            str(ds),
            "--base-url",
            url,
            "--model",
            "m",
            "--retries",
            "0",
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ]
    )
    assert rc == 1 and "2 item(s) failed" in err
    assert (tmp_path / "o" / "results.jsonl").read_text().count("ConnectError") == 2


def test_bad_dataset(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    rc, err = run_cli(["eval", str(bad), "--base-url", "http://127.0.0.1:9", "--out", str(tmp_path / "o")])
    assert rc == 2 and "bad.jsonl:1: not JSON" in err


def test_bench_against_nothing():
    url = f"http://127.0.0.1:{closed_port()}"
    rc, err = run_cli(["bench", "--base-url", url, "--requests", "1", "--concurrency", "1"])
    assert rc == 1 and "cannot reach" in err
    rc, _ = run_cli(
        [
            "bench",
            "--base-url",
            url,
            "--model",
            "m",
            "--requests",
            "2",
            "--concurrency",
            "1",
            "2",
            "--warmup",
            "0",
        ]
    )
    assert rc == 1  # all requests failed, counted, finished


def test_flag_defaults_are_the_configs_defaults():
    import argparse

    from vreason.clients.bench import BenchConfig
    from vreason.clients.cli import register
    from vreason.clients.eval.runner import EvalConfig

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    e, ev = parser.parse_args(["eval", "d.jsonl", "--base-url", "u", "--out", "o"]), EvalConfig(base_url="u")
    assert (e.model, e.mode, e.baseline, e.vreason_options, e.max_tokens, e.temperature, e.top_p, e.concurrency,
            e.limit, e.video_mode, e.timeout, e.retries, e.api_key) == (
        ev.model, ev.modes[0], ev.baseline, ev.vreason_options, ev.max_tokens, ev.temperature, ev.top_p,
        ev.concurrency, ev.limit, ev.video_mode, ev.timeout_s, ev.retries, ev.api_key)
    b, be = parser.parse_args(["bench", "--base-url", "u"]), BenchConfig(base_url="u")
    assert (b.requests, tuple(b.concurrency), b.max_tokens, b.temperature, b.video_mode, b.prompt, b.warmup,
            b.timeout) == (be.requests, be.concurrency, be.max_tokens, be.temperature, be.video_mode, be.prompt,
                           be.warmup, be.timeout_s)
