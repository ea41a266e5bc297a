"""Split <think>...</think> text from the answer, incrementally (tags may be cut across chunks).

Qwen2.5-VL has no single-token <think>, so the split is done on text. Text between the tags goes
to `reasoning`; everything else (e.g. "<answer>B</answer>") stays `content`. The whole-text split
feeds the same splitter, so streamed and non-streamed answers always agree.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def _partial_tag_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningSplitter:
    def __init__(self) -> None:
        self.inside = False
        self._pending = ""
        self.saw_reasoning = False

    def feed(self, text: str) -> tuple[str, str]:
        """Consume more text; returns (reasoning, content) that can be emitted now."""
        buf, reasoning, content = self._pending + text, [], []
        while buf:
            tag = CLOSE if self.inside else OPEN
            i = buf.find(tag)
            if i >= 0:
                (reasoning if self.inside else content).append(buf[:i])
                buf = buf[i + len(tag):]
                self.inside = not self.inside
                self.saw_reasoning = True
                continue
            keep = _partial_tag_suffix(buf, tag)
            (reasoning if self.inside else content).append(buf[:len(buf) - keep])
            buf = buf[len(buf) - keep:]
            break
        self._pending = buf
        return "".join(reasoning), "".join(content)

    def finish(self) -> tuple[str, str]:
        """Flush what was held back as a possible tag start (the text ended first)."""
        rest, self._pending = self._pending, ""
        return (rest, "") if self.inside else ("", rest)


def split_reasoning(text: str) -> tuple[str | None, str]:
    s = ReasoningSplitter()
    r1, c1 = s.feed(text)
    r2, c2 = s.finish()
    return (r1 + r2 if s.saw_reasoning else None), c1 + c2
