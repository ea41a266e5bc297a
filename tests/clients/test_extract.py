"""Answer extraction: tags, fallbacks, option letters, numbers (hand-made cases, malformed included)."""

from __future__ import annotations

import pytest
from vreason.clients.eval.extract import extract_answer, normalize_option, parse_number

OPTS = ["left", "right", "up", "down"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>hmm</think>\n<answer>B</answer>", ("B", "tag")),
        ("<answer>  C  </answer>", ("C", "tag")),
        ("<answer>\nB. right\n</answer>", ("B. right", "tag")),
        # several tags: the last wins (reasoning may quote the format before answering)
        ("<think>I will write <answer>A</answer> if ...</think><answer>D</answer>", ("D", "tag")),
        ("<ANSWER>b</ANSWER>", ("b", "tag")),
        ("<answer></answer>", ("", "tag")),
        # no tags: the text after the last </think>, or the whole output
        ("<think>long</think> B", ("B", "fallback")),
        ("42", ("42", "fallback")),
        # truncated: an opened tag never closed is no answer
        ("<think>x</think><answer>B", (None, "empty")),
        ("<think>never finished", ("<think>never finished", "fallback")),
        ("", (None, "empty")),
        (None, (None, "empty")),
        ("<think>only thoughts</think>", (None, "empty")),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("B", "B"),
        ("b", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("B)", "B"),
        ("[C]", "C"),
        ("  d  ", "D"),
        ("B. right", "B"),
        ("(B) right", "B"),
        ("B: right", "B"),
        ("**B**", "B"),
        ("'A'", "A"),
        ("Option C", "C"),
        ("The answer is (d).", "D"),
        ("answer: b", "B"),
        ("I think option A, no, option C", "C"),
        ("right", "B"),
        ("Down", "D"),  # the option's text maps to its letter
        ("E", None),
        ("(F)", None),  # beyond the four options
        ("the answer is a red square", None),  # an article, not option A
        ("A red square moving", None),  # capital A without a delimiter is a word
        ("", None),
        (None, None),
        ("???", None),
        ("42", None),
    ],
)
def test_normalize_option(answer, expected):
    assert normalize_option(answer, OPTS) == expected


def test_normalize_option_without_options_and_strict():
    assert normalize_option("H.") == "H"
    # fallback text (no tags) is read strictly: a bare letter or an option's text only
    assert normalize_option("B", OPTS, strict=True) == "B"
    assert normalize_option("up", OPTS, strict=True) == "C"
    assert normalize_option("The answer is B", OPTS, strict=True) is None
    assert normalize_option("B. right", OPTS, strict=True) is None


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("42", 42.0),
        ("3.14", 3.14),
        ("-7", -7.0),
        ("\u22124", -4.0),
        (".5", 0.5),
        ("+2", 2.0),
        ("1,234", 1234.0),
        ("1,234,567.5", 1234567.5),
        ("3,5", 3.5),  # thousands vs decimal comma
        ("60 px", 60.0),
        ("about 12 frames", 12.0),
        ("12.5%", 12.5),
        ("2.5e3", 2500.0),
        ("three", 3.0),
        ("Twelve shapes", 12.0),
        ("between 10 and 12", 10.0),  # the first number
        ("", None),
        ("none", None),
        ("many", None),
        (None, None),
        ("-", None),
    ],
)
def test_parse_number(answer, expected):
    assert parse_number(answer) == expected


def test_parse_number_strict_rejects_prose():
    assert parse_number("3 shapes", strict=True) == 3.0
    assert parse_number("~3", strict=True) == 3.0
    assert parse_number("I count 3 shapes", strict=True) is None
    assert parse_number("3 or 4", strict=True) is None
    assert parse_number("no one knows", strict=True) is None
