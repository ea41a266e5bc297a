"""Front-end settings (HTTP concerns only), built once by the CLI and held on app.state."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class APISettings:
    api_key: str | None = None
    """When set, every route but /health (/ping) and /metrics needs `Authorization: Bearer <key>`."""
    allowed_origins: tuple[str, ...] = ()
    """CORS origins allowed to call the API from a browser (empty: no CORS headers)."""
    max_body_bytes: int = 100 * 1024 * 1024
    """Larger request bodies are refused with 413 before they are read."""
    max_queue: int = 256
    """At most this many chat requests admitted at once (running + waiting); more get 429."""
    request_timeout: float = 600.0
    """Seconds a chat request may take end to end before it is aborted (504)."""
    keep_alive_timeout: float = 75.0
    """Seconds an idle HTTP/1.1 connection stays open. Longer than common client pools keep one
    (httpx, and so the OpenAI SDK: 5 s), so a client never reuses a connection the server is
    closing at that moment (uvicorn's own default is also 5 s: the two race)."""
    reasoning_split: bool = True
    """Move <think>...</think> text to message.reasoning (and reasoning_content)."""
    test_knobs: bool = False
    """Accept the test-only vreason knobs (force_alpha, nan_at_step, fail_at_step) from clients."""

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be at least 1024")
        if self.max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        if not self.keep_alive_timeout > 0:
            raise ValueError("keep_alive_timeout must be positive")
        if not self.request_timeout > 0:
            raise ValueError("request_timeout must be positive")
