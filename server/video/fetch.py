"""Download ``http(s)`` videos without becoming an SSRF proxy.

Fetching is off unless the server names the hosts it may contact. For every hop (the first URL
and each redirect): the host must match the allowlist, its DNS answers must all be public
addresses (unless ``allow_private``), and the connection goes to the vetted address itself, so
a second DNS lookup cannot swap in another one (DNS rebinding). Redirects are followed by hand
and vetted like the first URL. The body is counted while it streams in and cut off at the cap;
one deadline bounds the whole download, redirects included.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
from dataclasses import dataclass
from urllib.parse import unquote

import httpx

from .errors import MEDIA_FETCH_DISALLOWED, MEDIA_FETCH_FAILED, MEDIA_FETCH_TIMEOUT, VIDEO_EMPTY, VideoError
from .options import VideoLimits
from .source import VideoSource, short_url, suffix_for, too_large

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_REDIRECTS = (301, 302, 303, 307, 308)
# Cloud instance-metadata endpoints (AWS/GCP/Azure/OpenStack, AWS IPv6, Alibaba). All but the
# IPv6 one are already non-global; they are named so the error says why.
_METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"))
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


@dataclass(frozen=True)
class FetchPolicy:
    """Which ``http(s)`` video URLs the server may download, and within which bounds.

    allowed_hosts: exact host names or IP literals, ``"*.example.com"`` (any subdomain, not
        ``example.com`` itself), or ``"*"`` (any host). Empty: fetching is disabled.
    max_bytes: cap on the downloaded body; None uses ``VideoLimits.max_bytes`` (the smaller wins).
    connect_timeout: seconds to open each connection. total_timeout: seconds for the whole
        download, DNS and redirects included.
    max_redirects: redirects followed (each one vetted like the original URL).
    allow_private: also allow private, loopback, link-local and other non-public addresses
        (for tests and closed networks; never on a server reachable by untrusted clients).
    """

    allowed_hosts: tuple[str, ...] = ()
    max_bytes: int | None = None
    connect_timeout: float = 5.0
    total_timeout: float = 30.0
    max_redirects: int = 3
    allow_private: bool = False

    def __post_init__(self) -> None:
        # Misconfiguration is a server bug, not a client fault: plain ValueError.
        if isinstance(self.allowed_hosts, str):
            raise ValueError("FetchPolicy.allowed_hosts must be a sequence of host patterns, not a string")
        object.__setattr__(self, "allowed_hosts", tuple(_pattern(h) for h in self.allowed_hosts))
        if self.max_bytes is not None and (type(self.max_bytes) is not int or self.max_bytes < 1):
            raise ValueError(f"FetchPolicy.max_bytes must be a positive int or None, got {self.max_bytes!r}")
        for name in ("connect_timeout", "total_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise ValueError(f"FetchPolicy.{name} must be a positive number, got {value!r}")
        if type(self.max_redirects) is not int or self.max_redirects < 0:
            raise ValueError(f"FetchPolicy.max_redirects must be an int >= 0, got {self.max_redirects!r}")

    @property
    def enabled(self) -> bool:
        """True when at least one host may be contacted."""
        return bool(self.allowed_hosts)

    def host_allowed(self, host: str) -> bool:
        """Whether ``host`` (as in a URL: IDNA-encoded, any case) matches the allowlist."""
        host = _normal_host(host)
        for pattern in self.allowed_hosts:
            if pattern == "*" or pattern == host:
                return True
            if pattern.startswith("*.") and host.endswith(pattern[1:]):
                return True
        return False

    def byte_cap(self, limits: VideoLimits) -> int:
        return limits.max_bytes if self.max_bytes is None else min(self.max_bytes, limits.max_bytes)


def _normal_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    try:
        return ipaddress.ip_address(host.strip("[]")).compressed
    except ValueError:
        return host


def _pattern(raw: str) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"allowed host must be a string, got {raw!r}")
    text = raw.strip().lower()
    if text == "*":
        return text
    wildcard = text.startswith("*.")
    body = _normal_host(text[2:] if wildcard else text)
    if not body or "*" in body or any(c in body for c in "/@?#\\ ") or (":" in body and not _is_ip(body)):
        raise ValueError(f"invalid allowed media host {raw!r}: use 'host', '*.domain' or '*'")
    return "*." + body if wildcard else body


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def blocked_reason(ip: IPAddress) -> str | None:
    """Why a connection to ``ip`` is refused (None: a public unicast address).

    IPv6 forms that carry an IPv4 address (mapped, 6to4, Teredo, NAT64) are judged by it.
    """
    if ip in _METADATA:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and any(ip in net for net in _NAT64):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return blocked_reason(embedded)
    for attr, reason in (("is_unspecified", "an unspecified address"), ("is_loopback", "a loopback address"),
                         ("is_link_local", "a link-local address"), ("is_multicast", "a multicast address"),
                         ("is_private", "a private address"), ("is_reserved", "a reserved address")):
        if getattr(ip, attr):
            return reason
    if not ip.is_global:  # e.g. carrier-grade NAT 100.64.0.0/10
        return "a non-public address"
    return None


def _disallowed(message: str) -> VideoError:
    return VideoError(message, code=MEDIA_FETCH_DISALLOWED)


def _failed(message: str, status: int = 422) -> VideoError:
    # 422: the URL answered but not with a usable video (not retryable); 502: the origin failed
    # or could not be reached (retryable).
    return VideoError(message, code=MEDIA_FETCH_FAILED, status=status)


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """All addresses ``host`` resolves to for a TCP connection (module-level so tests can stub DNS)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[IPAddress, None] = {}
    for *_, sockaddr in infos:
        seen[ipaddress.ip_address(sockaddr[0].split("%", 1)[0])] = None
    return list(seen)


async def _vet(url: httpx.URL, policy: FetchPolicy) -> list[IPAddress]:
    """Check one hop's URL and return the vetted addresses to connect to, in resolver order."""
    if url.scheme not in ("http", "https"):
        raise _disallowed(f"media URL scheme must be http or https, got {url.scheme!r}")
    if url.userinfo:
        raise _disallowed("media URLs with user info (user:password@) are not allowed")
    host = url.raw_host.decode("ascii")
    if not host:
        raise _disallowed("media URL has no host")
    if not policy.host_allowed(host):
        raise _disallowed(f"media host {host!r} is not in this server's allowed media hosts")
    try:
        addresses = await resolve_host(host, url.port or (443 if url.scheme == "https" else 80))
    except (OSError, UnicodeError, ValueError):
        raise _failed(f"could not resolve media host {host!r}", status=502) from None
    if not addresses:
        raise _failed(f"media host {host!r} has no address", status=502)
    if not policy.allow_private:
        # Every answer must be public: a mixed answer lets a resolver steer us to the bad one.
        for ip in addresses:
            reason = blocked_reason(ip)
            if reason:
                raise _disallowed(f"media host {host!r} resolves to {reason}; private, loopback, "
                                  "link-local, multicast and metadata destinations are not allowed")
    return addresses


def make_client(policy: FetchPolicy) -> httpx.AsyncClient:
    """The HTTP client of one hop (module-level so tests can swap in a mock transport)."""
    # trust_env=False: a proxy from the environment would make the vetted address meaningless.
    timeout = httpx.Timeout(connect=policy.connect_timeout, read=policy.total_timeout,
                            write=policy.total_timeout, pool=policy.connect_timeout)
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)


def _request(client: httpx.AsyncClient, url: httpx.URL, ip: IPAddress) -> httpx.Request:
    host = url.raw_host.decode("ascii")
    extensions = {}
    if url.scheme == "https" and not _is_ip(host):
        extensions["sni_hostname"] = host  # TLS still names (and verifies) the host, not the IP
    netloc = url.netloc.decode("ascii")
    return client.build_request(
        "GET", url.copy_with(host=str(ip)), extensions=extensions,
        headers={"Host": netloc, "Accept-Encoding": "identity", "User-Agent": "vreason-media-fetch"})


async def _read_capped(response: httpx.Response, cap: int) -> bytes:
    declared = response.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > cap:
        raise too_large("media", f"{int(declared)} bytes", cap)
    body = bytearray()
    # Raw bytes: no content decoding, so a compressed body cannot expand past the count.
    async for chunk in response.aiter_raw():
        if len(body) + len(chunk) > cap:
            raise too_large("media", f"at least {len(body) + len(chunk)} bytes", cap)
        body += chunk
    if not body:
        raise VideoError("media URL returned an empty body", code=VIDEO_EMPTY)
    return bytes(body)


async def _open(stack: contextlib.AsyncExitStack, url: httpx.URL, addresses: list[IPAddress],
                policy: FetchPolicy) -> httpx.Response:
    """Send the GET to the first vetted address that accepts a connection."""
    for i, ip in enumerate(addresses):
        # A fresh client per attempt: no pooled connection (verified for one host) serves another.
        client = await stack.enter_async_context(make_client(policy))
        try:
            response = await client.send(_request(client, url, ip), stream=True)
        except httpx.ConnectError:
            if i == len(addresses) - 1:
                raise
            continue
        stack.push_async_callback(response.aclose)
        return response
    raise AssertionError("unreachable: _vet never returns an empty list")


async def _download(url: str, policy: FetchPolicy, cap: int) -> VideoSource:
    try:
        current = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise _disallowed(f"invalid media URL {short_url(url)}") from None
    for _ in range(policy.max_redirects + 1):
        addresses = await _vet(current, policy)
        async with contextlib.AsyncExitStack() as stack:
            response = await _open(stack, current, addresses, policy)
            if response.status_code in _REDIRECTS:
                location = response.headers.get("location")
                if not location:
                    raise _failed(f"media URL answered HTTP {response.status_code} without a Location")
                try:
                    target = current.join(location)
                except (httpx.InvalidURL, ValueError):
                    raise _disallowed("media URL redirects to an invalid URL") from None
                if current.scheme == "https" and target.scheme == "http":
                    raise _disallowed("media URL redirects from https to http")
                current = target
                continue
            if not 200 <= response.status_code < 300:
                raise _failed(f"media URL answered HTTP {response.status_code}",
                              status=502 if response.status_code >= 500 else 422)
            data = await _read_capped(response, cap)
        return VideoSource(data=data, suffix=suffix_for(os.path.splitext(unquote(current.path))[1]))
    raise _failed(f"media URL redirected more than {policy.max_redirects} times")


async def fetch_video(url: str, policy: FetchPolicy, limits: VideoLimits) -> VideoSource:
    """Download an ``http(s)`` video under ``policy``; the bytes come back as a ``VideoSource``.

    Raises ``VideoError``: ``media_fetch_disallowed`` (400: fetching off, host not allowed,
    blocked address, bad scheme or redirect), ``media_fetch_failed`` (422 for an unusable
    answer or too many redirects, 502 when the origin fails or cannot be reached),
    ``media_fetch_timeout`` (504), ``video_too_large`` (413), ``video_empty`` (400).
    """
    if not policy.enabled:
        raise _disallowed("http(s) video URLs are not enabled on this server")
    try:
        async with asyncio.timeout(policy.total_timeout):
            return await _download(url, policy, policy.byte_cap(limits))
    except (TimeoutError, httpx.TimeoutException) as exc:
        what = (f"could not connect to the media host within {policy.connect_timeout:g} s"
                if isinstance(exc, httpx.ConnectTimeout) else
                f"fetching the media URL took longer than {policy.total_timeout:g} s")
        raise VideoError(what, code=MEDIA_FETCH_TIMEOUT, status=504) from None
    except httpx.HTTPError as exc:
        raise _failed(f"fetching the media URL failed ({type(exc).__name__})", status=502) from None
