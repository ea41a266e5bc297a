"""The Video-R1 evaluation prompt (the protocol V-Reason reports follow) and the request body.

The template text is reproduced as the protocol constant it is: results are comparable with
published numbers only if the wording matches (method-paper.md section 4.2). Its missing full
stop after "thought expressions" is in the original and kept on purpose.
"""

from __future__ import annotations

import string

QUESTION_TEMPLATE = (
    "{question}\n"
    "Please think about this question as if you were a human pondering deeply. "
    "Engage in an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', "
    "'let's break it down', etc, or other natural language thought expressions "
    "It's encouraged to include self-reflection or verification in the reasoning process. "
    "Provide your detailed reasoning between the <think> </think> tags, and then give your final answer "
    "between the <answer> </answer> tags."
)

TYPE_SUFFIX = {
    "multiple-choice": " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the "
    "<answer> </answer> tags.",
    "numerical": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
    "regression": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> "
    "tags.",
    "free-form": " Please provide your text answer within the <answer> </answer> tags.",
}
TYPES = tuple(TYPE_SUFFIX)
LETTERS = string.ascii_uppercase


def lettered_options(options: list[str]) -> list[str]:
    """Options as "A. text" lines; options that already start with their letter are kept."""
    out = []
    for i, opt in enumerate(options):
        opt = str(opt).strip()
        letter = LETTERS[i]
        has_letter = len(opt) >= 2 and opt[0].upper() == letter and opt[1] in ".):"
        out.append(opt if has_letter else f"{letter}. {opt}")
    return out


def build_prompt(question: str, qtype: str, options: list[str] | None = None) -> str:
    """The text part of the user turn: question (+ options), template, type suffix."""
    if qtype not in TYPE_SUFFIX:
        raise ValueError(f"unknown question type {qtype!r}; expected one of {TYPES}")
    problem = question.rstrip()
    if qtype == "multiple-choice" and options:
        # Video-R1 joins problem + "Options:\n" + options; a newline keeps them readable.
        problem = problem + "\nOptions:\n" + "\n".join(lettered_options(options))
    return QUESTION_TEMPLATE.format(question=problem) + TYPE_SUFFIX[qtype]


def chat_body(
    model: str,
    video_url: str,
    prompt: str,
    *,
    max_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    vreason=None,
    mm_processor_kwargs: dict | None = None,
    stream: bool = False,
) -> dict:
    """A /v1/chat/completions JSON body with one video and the prompt (video first, as Video-R1)."""
    body = {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": video_url}},
                    {"type": "text", "text": prompt},
                ],
            }
        ],
    }
    if vreason is not None:
        body["vreason"] = vreason
    if mm_processor_kwargs:
        body["mm_processor_kwargs"] = mm_processor_kwargs
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body
