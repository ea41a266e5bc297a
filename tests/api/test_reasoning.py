"""The <think> split, whole and streamed at every possible cut."""

from __future__ import annotations

import pytest

from vreason.server.api.reasoning import ReasoningSplitter, split_reasoning

CASES = [
    ("<think>look at the square</think><answer>B</answer>", "look at the square", "<answer>B</answer>"),
    ("plain answer", None, "plain answer"),
    ("Sure. <think>hmm</think> It is <answer>3</answer>", "hmm", "Sure.  It is <answer>3</answer>"),
    ("<think>never closed", "never closed", ""),
    ("<think>a</think>x<think>b</think>y", "ab", "xy"),
    ("a < b and <thin is not a tag", None, "a < b and <thin is not a tag"),
    ("</think>stray close", None, "</think>stray close"),
    ("<think></think>", "", ""),
]


@pytest.mark.parametrize("text,reasoning,content", CASES)
def test_whole_text(text, reasoning, content):
    assert split_reasoning(text) == (reasoning, content)


@pytest.mark.parametrize("text,reasoning,content", CASES)
def test_every_two_and_three_way_cut_gives_the_same_split(text, reasoning, content):
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1, 3):
            s = ReasoningSplitter()
            parts = [s.feed(p) for p in (text[:i], text[i:j], text[j:])] + [s.finish()]
            r = "".join(p[0] for p in parts)
            c = "".join(p[1] for p in parts)
            assert c == content and (r if s.saw_reasoning else None) == reasoning, (i, j)


def test_choice_counts_per_token_and_falls_back_to_the_whole_delta():
    from vreason.server.api.chat import Choice
    from vreason.server.engine.types import ChoiceDelta

    c = Choice(split=True)
    c.add(ChoiceDelta(0, "<think>a", 2, token_texts=("<think>", "a")))
    c.add(ChoiceDelta(0, "b</think>xy", 5, token_texts=("b", "</think>", "xy")))
    assert (c.reasoning, c.content, c.reasoning_tokens) == ("ab", "xy", 4)  # "xy" is the answer
    # pieces that do not add up to the text are not trusted: the delta counts as one piece
    c.add(ChoiceDelta(0, "<think>z", 7, "stop", token_texts=("<", "think>")))
    assert (c.reasoning, c.content, c.reasoning_tokens) == ("abz", "xy", 6)
