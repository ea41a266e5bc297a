"""Chat messages the end-to-end tests send."""

from __future__ import annotations

QUESTION = "What moves in this video?"


def video_messages(url: str, text: str = QUESTION) -> list[dict]:
    """One user message: the video at `url`, then `text`."""
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                         {"type": "text", "text": text}]}]
