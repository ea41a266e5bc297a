"""The engine's prompt-side rules that mirror `vllm serve`: developer messages, prompt logprobs."""

from __future__ import annotations

from types import SimpleNamespace

from vreason.server.engine.types import PromptLogprob
from vreason.server.engine.vllm_engine import _developer_as_system, _prompt_logprobs

QWEN_LIKE = "{% for message in messages %}<|im_start|>{{ message['role'] }}{% endfor %}"


def test_developer_becomes_system_merged_first():
    chat = [{"role": "system", "content": "terse"}, {"role": "user", "content": "hi"},
            {"role": "developer", "content": [{"type": "text", "text": "French"}]}]
    assert _developer_as_system(chat, QWEN_LIKE) == [{"role": "system", "content": "terse\n\nFrench"},
                                                     {"role": "user", "content": "hi"}]


def test_a_lone_first_developer_message_is_just_renamed():
    chat = [{"role": "developer", "content": "terse"}, {"role": "user", "content": "hi"}]
    assert _developer_as_system(chat, QWEN_LIKE) == [{"role": "system", "content": "terse"}, chat[1]]


def test_a_template_that_names_developer_gets_it_as_sent():
    chat = [{"role": "user", "content": "hi"}, {"role": "developer", "content": "terse"}]
    assert _developer_as_system(chat, QWEN_LIKE + "{% if role == 'developer' %}{% endif %}") == chat
    assert _developer_as_system(chat[:1], QWEN_LIKE) == chat[:1]


def test_prompt_logprobs_are_plain_and_clamped():
    lp = SimpleNamespace
    got = _prompt_logprobs([None, {5: lp(logprob=-0.5, rank=1, decoded_token="a"),
                                   9: lp(logprob=float("-inf"), rank=7, decoded_token=None)}])
    assert got == [None, {5: PromptLogprob(-0.5, 1, "a"), 9: PromptLogprob(-9999.0, 7, None)}]
