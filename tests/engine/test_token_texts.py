"""Per-token texts of a multi-token delta with the demo model's real (Qwen2) tokenizer."""

from __future__ import annotations

import pytest

from vreason.server.engine.token_texts import token_texts


@pytest.fixture(scope="module")
def tokenizer(demo_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model)


@pytest.mark.parametrize("text", ["<think> square moves right</think><answer>B</answer>",
                                  "<think>a café in 東京 🙂</think>done"])
def test_pieces_are_per_token_and_join_to_the_text(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = token_texts(tokenizer, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == tokenizer.decode(ids) == text
    assert "</think>" in pieces  # the end of the thought is a token of its own here
    assert all("\ufffd" not in p for p in pieces)  # a split character lands whole on its last token


def test_single_token_and_special_tokens(tokenizer):
    assert token_texts(tokenizer, tokenizer.encode("B", add_special_tokens=False)) is None
    ids = tokenizer.encode("B", add_special_tokens=False) + [tokenizer.eos_token_id]
    assert token_texts(tokenizer, ids) == ("B", "")  # skipped like the delta's text skips it
    assert token_texts(tokenizer, ids, skip_special_tokens=False) == ("B", tokenizer.eos_token)
