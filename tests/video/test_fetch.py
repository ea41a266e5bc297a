"""http(s) media fetching against hostile origins on 127.0.0.1 (see ``origin`` in conftest.py).

Every fetch here is bounded: the policies use total timeouts of a second or two and each test
asserts how long the refusal took.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time

import httpx
import pytest

from vreason.server.video import FetchPolicy, VideoError, VideoLimits, blocked_reason, load_video, resolve_video_url
from vreason.server.video import fetch as fetch_mod

pytestmark = pytest.mark.timeout(60)
LIMITS = VideoLimits()
CAP = 256 * 1024


def policy(hosts=("127.0.0.1", "localhost"), private=True, **kw) -> FetchPolicy:
    kw.setdefault("total_timeout", 2.0)
    return FetchPolicy(allowed_hosts=hosts, allow_private=private, **kw)


def fetch(url, pol, limits=LIMITS):
    return asyncio.run(fetch_mod.fetch_video(url, pol, limits))


def fetch_error(url, pol, limits=LIMITS, within=5.0) -> VideoError:
    t0 = time.monotonic()
    with pytest.raises(VideoError) as err:
        fetch(url, pol, limits)
    assert time.monotonic() - t0 < within, "refusal was not prompt"
    assert err.value.param == "messages" and err.value.message
    return err.value


# ---- off by default, allowlist, address vetting ----

@pytest.mark.parametrize("pol", [None, FetchPolicy(), FetchPolicy(allow_private=True)])
def test_fetching_is_off_without_allowed_hosts(origin, pol):
    url = f"{origin.base}/clip.mp4"
    with pytest.raises(VideoError) as e:  # the server's path: no download, an unsupported URL
        asyncio.run(load_video(url, fetch_policy=pol))
    assert e.value.code == "unsupported_media_url" and e.value.status == 400
    with pytest.raises(VideoError) as e:
        resolve_video_url(url, allowed_local_media_path=None, limits=LIMITS)
    assert e.value.code == "unsupported_media_url"
    if pol is not None:
        assert fetch_error(url, pol).code == "media_fetch_disallowed"
    assert origin.seen == []


def test_fetch_real_mp4_directly_and_through_load_video(origin, clip_bytes):
    src = fetch(f"{origin.base}/clip.mp4", policy())
    assert src.data == clip_bytes and src.suffix == ".mp4"
    video = asyncio.run(load_video(f"{origin.base}/clip.mp4", fetch_policy=policy()))
    assert video.frames.shape[1:] == (112, 112, 3) and video.frames.shape[0] >= 2
    assert origin.seen == [("/clip.mp4", f"127.0.0.1:{origin.port}")] * 2


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "2130706433",
                                  "0.0.0.0", "127.1"])
def test_loopback_refused_unless_allow_private(origin, host):
    url = f"http://{host}:{origin.port}/clip.mp4"
    err = fetch_error(url, policy(hosts=("*",), private=False))
    assert err.code == "media_fetch_disallowed" and err.status == 400
    assert origin.seen == []  # refused before any connection


@pytest.mark.parametrize("url", ["http://user:pw@127.0.0.1/clip.mp4", "http://127.0.0.1@evil.test/clip.mp4"])
def test_userinfo_and_host_confusion_refused(origin, url):
    assert fetch_error(url, policy(hosts=("127.0.0.1",))).code == "media_fetch_disallowed"


def test_host_allowlist_patterns(origin):
    pol = FetchPolicy(allowed_hosts=("*.Example.com.", "media.test", "::1"))
    assert pol.allowed_hosts == ("*.example.com", "media.test", "::1")
    assert pol.host_allowed("a.example.com") and pol.host_allowed("A.B.EXAMPLE.COM.")
    assert not pol.host_allowed("example.com") and not pol.host_allowed("evilexample.com")
    assert not pol.host_allowed("media.test.evil.com") and pol.host_allowed("[::1]")
    assert FetchPolicy(allowed_hosts=("*",)).host_allowed("anything.test")
    err = fetch_error(f"{origin.base}/clip.mp4", policy(hosts=("*.example.com",)))
    assert err.code == "media_fetch_disallowed" and origin.seen == []


@pytest.mark.parametrize("bad", [dict(allowed_hosts="a.com"), dict(allowed_hosts=("*evil.com",)),
                                 dict(allowed_hosts=("a.com/x",)), dict(allowed_hosts=("a.com:80",)),
                                 dict(allowed_hosts=("*.",)), dict(max_bytes=0), dict(total_timeout=0),
                                 dict(connect_timeout=float("inf")), dict(max_redirects=-1)])
def test_policy_validation(bad):
    with pytest.raises(ValueError):
        FetchPolicy(**bad)


@pytest.mark.parametrize("addr, blocked", [
    ("169.254.169.254", True), ("fd00:ec2::254", True), ("::ffff:169.254.169.254", True),
    ("::ffff:10.0.0.1", True), ("::ffff:127.0.0.1", True), ("2002:a00:1::", True), ("64:ff9b::7f00:1", True),
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", True),  # Teredo whose client is 127.0.0.1
    ("100.64.0.1", True), ("100.100.100.200", True), ("224.0.0.1", True), ("ff02::1", True),
    ("ff0e::1", True), ("0.0.0.0", True), ("::", True), ("240.0.0.1", True), ("fe80::1", True),
    ("fc00::1", True), ("10.1.2.3", True), ("172.16.0.1", True), ("192.168.1.1", True), ("::1", True),
    ("8.8.8.8", False), ("2606:4700:4700::1111", False), ("::ffff:8.8.8.8", False), ("2002:808:808::", False),
])
def test_blocked_addresses(addr, blocked):
    assert (blocked_reason(ipaddress.ip_address(addr)) is not None) == blocked


# ---- redirects: followed by hand, every hop vetted ----

def test_redirect_to_allowed_host(origin, origin2, clip_bytes):
    target = f"http://localhost:{origin2.port}/clip.mp4"
    assert fetch(f"{origin.base}/redirect?to={target}", policy()).data == clip_bytes
    assert origin2.seen == [("/clip.mp4", f"localhost:{origin2.port}")]  # Host names the new host
    rel = fetch(f"{origin.base}/redirect?to=clip.mp4&code=307", policy())  # relative Location
    assert rel.data == clip_bytes


def test_redirect_to_disallowed_host(origin):
    err = fetch_error(f"{origin.base}/redirect?to=http://evil.test/v.mp4", policy(hosts=("127.0.0.1",)))
    assert err.code == "media_fetch_disallowed" and "evil.test" in err.message


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/", "http://internal.test/v.mp4",
                                    "http://127.0.0.2:{port}/clip.mp4", "http://[::ffff:a00:1]/v.mp4"])
def test_redirect_to_private_address(origin, monkeypatch, target):
    # Let the origin itself (127.0.0.1, reached as "public.test") count as public, so the first
    # hop connects; every other private address keeps its real verdict.
    real_reason, real_resolve = fetch_mod.blocked_reason, fetch_mod.resolve_host
    monkeypatch.setattr(fetch_mod, "blocked_reason",
                        lambda ip: None if str(ip) == "127.0.0.1" else real_reason(ip))
    fake_dns = {"public.test": ["127.0.0.1"], "internal.test": ["10.0.0.5"]}

    async def resolve(host, port):
        if host in fake_dns:
            return [ipaddress.ip_address(a) for a in fake_dns[host]]
        return await real_resolve(host, port)

    monkeypatch.setattr(fetch_mod, "resolve_host", resolve)
    url = f"http://public.test:{origin.port}/redirect?to={target.format(port=origin.port)}"
    err = fetch_error(url, policy(hosts=("*",), private=False))
    assert err.code == "media_fetch_disallowed"
    assert origin.paths() == ["/redirect"]  # the redirect target was never contacted


def test_redirect_loop_is_bounded(origin):
    err = fetch_error(f"{origin.base}/loop", policy(max_redirects=3))
    assert err.code == "media_fetch_failed" and err.status == 422 and "redirect" in err.message
    assert origin.paths() == ["/loop"] * 4


class _Body(httpx.AsyncByteStream):
    """A streamed (not pre-read) mock body, as a real transport gives."""

    def __init__(self, data: bytes):
        self.data = data

    async def __aiter__(self):
        yield self.data


def _mock(monkeypatch, handler, addresses=("8.8.8.8",)):
    """Serve hops from ``handler`` instead of the network; DNS answers ``addresses``, once per hop."""
    lookups = []

    async def resolve(host, port):
        lookups.append(host)
        return [ipaddress.ip_address(a) for a in addresses]

    monkeypatch.setattr(fetch_mod, "resolve_host", resolve)
    monkeypatch.setattr(fetch_mod, "make_client", lambda pol: httpx.AsyncClient(
        transport=httpx.MockTransport(handler), follow_redirects=False))
    return lookups


def test_https_pins_address_keeps_sni_and_refuses_downgrade(monkeypatch, clip_bytes):
    seen = []

    def handler(request):
        seen.append(request)
        if request.url.path == "/a":
            return httpx.Response(302, headers={"Location": "https://cdn.media.test/b.webm"})
        if request.url.path == "/b.webm":
            return httpx.Response(200, stream=_Body(clip_bytes))
        return httpx.Response(302, headers={"Location": "http://media.test/c"})

    lookups = _mock(monkeypatch, handler)
    pol = FetchPolicy(allowed_hosts=("media.test", "*.media.test"))
    src = fetch("https://media.test/a", pol)
    assert src.data == clip_bytes and src.suffix == ".webm"
    assert [str(r.url) for r in seen] == ["https://8.8.8.8/a", "https://8.8.8.8/b.webm"]
    assert [r.headers["host"] for r in seen] == ["media.test", "cdn.media.test"]
    assert [r.extensions["sni_hostname"] for r in seen] == ["media.test", "cdn.media.test"]
    assert lookups == ["media.test", "cdn.media.test"]  # one lookup per hop, never a second one
    err = fetch_error("https://media.test/downgrade", pol)
    assert err.code == "media_fetch_disallowed" and "https to http" in err.message


def test_dns_answer_is_pinned(origin, monkeypatch, clip_bytes):
    # A rebinding resolver: the vetted first answer must be the one connected to, with no second
    # lookup that could return the internal address.
    answers = [["127.0.0.1"], ["10.9.9.9"]]
    calls = []

    async def resolve(host, port):
        calls.append(host)
        return [ipaddress.ip_address(a) for a in answers[min(len(calls) - 1, 1)]]

    monkeypatch.setattr(fetch_mod, "resolve_host", resolve)
    src = fetch(f"http://rebind.test:{origin.port}/clip.mp4", policy(hosts=("rebind.test",)))
    assert src.data == clip_bytes and calls == ["rebind.test"]
    assert origin.seen == [("/clip.mp4", f"rebind.test:{origin.port}")]


def test_mixed_dns_answer_refused(monkeypatch):
    _mock(monkeypatch, lambda r: httpx.Response(200, stream=_Body(b"x")), addresses=("8.8.8.8", "10.0.0.1"))
    assert fetch_error("http://media.test/v.mp4", FetchPolicy(allowed_hosts=("media.test",))).code == \
        "media_fetch_disallowed"


def test_connect_timeout(monkeypatch):
    def handler(request):
        raise httpx.ConnectTimeout("timed out", request=request)

    _mock(monkeypatch, handler)
    err = fetch_error("http://media.test/v.mp4", FetchPolicy(allowed_hosts=("media.test",)))
    assert err.code == "media_fetch_timeout" and err.status == 504


# ---- stalls, sizes, lies ----

@pytest.mark.parametrize("path", ["/stall-headers", "/stall-body", "/forever?delay=0.05&chunk=1024"])
def test_stalls_and_slow_streams_hit_the_total_timeout(origin, path):
    err = fetch_error(f"{origin.base}{path}", policy(total_timeout=1.0), within=3.0)
    assert err.code == "media_fetch_timeout" and err.status == 504


@pytest.mark.parametrize("path", ["/declared-huge", "/forever", "/no-length"])
def test_byte_cap_while_streaming(origin, path):
    err = fetch_error(f"{origin.base}{path}", policy(max_bytes=CAP, total_timeout=10.0), within=3.0)
    assert err.code == "video_too_large" and err.status == 413


def test_cap_also_comes_from_video_limits(origin):
    err = fetch_error(f"{origin.base}/clip.mp4", policy(), limits=VideoLimits(max_bytes=1000))
    assert err.code == "video_too_large" and err.status == 413


def test_content_length_lies(origin):
    assert len(fetch(f"{origin.base}/lie-small", policy(max_bytes=CAP)).data) == 100  # never more than declared
    err = fetch_error(f"{origin.base}/lie-large", policy())
    assert err.code == "media_fetch_failed" and err.status == 502


@pytest.mark.parametrize("path, code, status", [
    ("/status/404", "media_fetch_failed", 422), ("/status/403", "media_fetch_failed", 422),
    ("/status/503", "media_fetch_failed", 502), ("/empty", "video_empty", 400),
    ("/redirect?to=", "media_fetch_failed", 422),  # a redirect without a Location
])
def test_origin_errors(origin, path, code, status):
    err = fetch_error(f"{origin.base}{path}", policy())
    assert (err.code, err.status) == (code, status)


def test_connection_refused(origin):
    port = origin.port
    origin.close()
    err = fetch_error(f"http://127.0.0.1:{port}/clip.mp4", policy())
    assert err.code == "media_fetch_failed" and err.status == 502


def test_cancelling_load_video_stops_a_stalled_download(origin):
    async def main():
        task = asyncio.ensure_future(load_video(f"{origin.base}/stall-headers",
                                                fetch_policy=policy(total_timeout=15.0)))
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - t0

    assert asyncio.run(main()) < 1.0


def test_load_video_checks_sampling_before_downloading(origin):
    from vreason.server.video import SamplingSpec

    with pytest.raises(VideoError) as err:
        asyncio.run(load_video(f"{origin.base}/clip.mp4", spec=SamplingSpec(num_frames=64), fetch_policy=policy()))
    assert err.value.code == "invalid_video_sampling" and origin.seen == []
