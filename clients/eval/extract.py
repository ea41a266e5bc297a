"""Answer extraction from model output: `<answer>...</answer>`, option letters, numbers.

Every function here is total: malformed output gives None (counted as unanswered and wrong),
never an exception.
"""

from __future__ import annotations

import re

from .prompt import LETTERS

_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL | re.IGNORECASE)
_THINK_END = re.compile(r"</think>", re.IGNORECASE)
# A thousands-grouped number (1,234,567.8) before a plain one (3,5 is a decimal comma).
_NUMBER = re.compile(r"[-+\u2212]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:[.,]\d+)?|\.\d+)(?:[eE][-+]?\d+)?")
_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_WORD_NUMBER = re.compile(r"\b(" + "|".join(_WORDS) + r")\b", re.IGNORECASE)
# A whole answer that is one letter: "b", "(B)", "B.", "[C]".
_BARE = re.compile(r"^[\(\[]?\s*([A-Za-z])\s*[\)\]]?\s*[.:)]?$")
# A capital letter with a delimiter leading the answer: "B. red", "(B) red", "B: red".
_LEAD = re.compile(r"^[\(\[]?([A-Z])(?:[\)\]]|[.:])")
# A letter after a cue word anywhere: "Option B", "the answer is (c).", "choice: D".
_CUE = re.compile(
    r"\b(?:answer|option|choice)s?\b(?:\s+is)?\s*[:\-]?\s*[\(\[]?([A-Za-z])[\)\]]?(?=$|[\s.,:;!)])",
    re.IGNORECASE,
)


def extract_answer(text: str | None) -> tuple[str | None, str]:
    """(answer text, how) from a model output.

    how: "tag" when a complete <answer>...</answer> exists (the *last* one wins: reasoning may
    quote the tags before answering), "fallback" for the text after the last </think> (or the
    whole output) when no tag is present, as Video-R1 does, "empty" when there is nothing.
    Callers accept a fallback only if it parses strictly for the item's type.
    """
    if not text:
        return None, "empty"
    tags = _ANSWER.findall(text)
    if tags:
        return tags[-1].strip(), "tag"
    parts = _THINK_END.split(text)
    tail = parts[-1].strip()
    if "<answer>" in tail.lower():  # opened but never closed: truncated, not an answer
        return None, "empty"
    return (tail, "fallback") if tail else (None, "empty")


def normalize_option(
    answer: str | None, options: list[str] | None = None, *, strict: bool = False
) -> str | None:
    """The option letter an answer names ("b.", "(B)", "Option B: red" -> "B"), or None.

    A lower-case letter counts when it is the whole answer or follows a cue word ("option b"),
    never when words follow it ("the answer is a red square" is not option A). An answer equal
    to an option's text maps to that option's letter. With options, letters beyond their count
    are rejected. ``strict`` (for fallback text without tags) accepts only a bare letter or an
    option's exact text.
    """
    if answer is None:
        return None
    s = answer.strip().strip("*_`'\"").strip()
    letter = None
    for pattern in (_BARE,) if strict else (_BARE, _LEAD):
        m = pattern.match(s)
        if m:
            letter = m.group(1).upper()
            break
    else:
        # The last cue wins: reasoning names options before the final one. A lower-case letter
        # followed by more words is an article ("the answer is a red square"), not an option.
        cues = [
            m.group(1)
            for m in _CUE.finditer(s)
            if m.group(1).isupper() or not re.match(r"\s+\w", s[m.end() :])
        ]
        if cues and not strict:
            letter = cues[-1].upper()
    if letter is None and options:
        wanted = _squash(s)
        for i, opt in enumerate(options):
            body = re.sub(r"^[A-Za-z][.):]\s*", "", str(opt).strip())
            if wanted and wanted in (_squash(body), _squash(str(opt))):
                letter = LETTERS[i]
                break
    n = len(options) if options else len(LETTERS)
    if letter is None or LETTERS.index(letter) >= n:
        return None
    return letter


def _squash(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", s.lower()).strip()


def parse_number(answer: str | None, *, strict: bool = False) -> float | None:
    """The first number in an answer ("1,234.5 px" -> 1234.5, "about 12 frames" -> 12.0,
    "three" -> 3.0), or None. ``strict``: the answer must be just one number with optional
    unit words (used for fallback text, where a stray number in prose is no answer)."""
    if answer is None:
        return None
    s = answer.strip().replace("\u2212", "-")
    m = _NUMBER.search(s)
    if m is None:
        w = _WORD_NUMBER.search(s)
        if w is None or (strict and _squash(s) != w.group(1).lower()):
            return None
        return float(_WORDS[w.group(1).lower()])
    if strict and not re.fullmatch(r"[~≈]?\s*" + re.escape(m.group(0)) + r"\s*[A-Za-z%°]{0,12}\.?", s):
        return None
    tok = m.group(0)
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?:[eE][-+]?\d+)?", tok):
        tok = tok.replace(",", "")
    else:
        tok = tok.replace(",", ".")
    try:
        return float(tok)
    except ValueError:
        return None


def number_text(answer: str | None) -> str | None:
    """The number token parse_number reads (for Video-R1's decimal-point consistency check)."""
    if answer is None:
        return None
    m = _NUMBER.search(answer)
    return m.group(0) if m else None
