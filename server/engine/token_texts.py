"""Per-token text of a multi-token delta, for `ChoiceDelta.token_texts`.

vLLM hands the front end several tokens in one output when it falls behind; the front end then
needs each token's text to count reasoning tokens exactly (server/api/chat.py `Choice.add`).
"""

from __future__ import annotations

from collections.abc import Sequence


def token_texts(tokenizer, token_ids: Sequence[int], skip_special_tokens: bool = True) -> tuple[str, ...] | None:
    """The text each of `token_ids` adds, in order (None for fewer than two tokens).

    Decodes growing prefixes so the pieces join to the decoded whole: a character split over
    several byte tokens (UTF-8 beyond ASCII) lands on the token that completes it, the ones
    before it get "". The front end uses the pieces only when they join to the delta's text.
    """
    if len(token_ids) < 2:
        return None
    pieces, prev = [], ""
    for j in range(1, len(token_ids) + 1):
        cur = tokenizer.decode(list(token_ids[:j]), skip_special_tokens=skip_special_tokens)
        if j < len(token_ids) and cur.endswith("\ufffd"):  # an incomplete character: wait for the rest
            pieces.append("")
            continue
        pieces.append(cur[len(prev):] if cur.startswith(prev) else cur)
        prev = cur
    return tuple(pieces)
