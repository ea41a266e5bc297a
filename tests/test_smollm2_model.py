"""The grafted SmolLM2-in-Qwen2.5-VL checkpoint computes SmolLM2's own text logits.

Reference: HF transformers' LlamaForCausalLM on the same dequantized GGUF weights. In float64
the two must agree to rounding (~1e-16 per op; the only float32 parts, the RoPE angles, use the
same formula in both models), so any structural slip (a q/k permutation, a bias, RoPE vs M-RoPE,
an untied head) shows as an O(1) difference. In float32, the dtype served, the grafted model's
error against the float64 truth must be of the same size as LlamaForCausalLM's own float32 error.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow

TEXTS = ["The capital of France is",
         "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(scope="module")
def reference():
    """SmolLM2's logits on TEXTS in float64 and float32 (model freed afterwards)."""
    from vreason.server.checkpoints.smollm2 import load_smollm2

    model, tok = load_smollm2(torch.float32)
    ids = [torch.tensor([tok.encode(t, add_special_tokens=False)]) for t in TEXTS]
    with torch.no_grad():
        f32 = [model(i).logits[0] for i in ids]
        model.double()
        f64 = [model(i).logits[0] for i in ids]
    return ids, f32, f64, tok


def _grafted_logits(path, ids, dtype):
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval().to(dtype)
    with torch.no_grad():
        return [model(input_ids=i).logits[0] for i in ids]


def test_tokenizer_is_smollm2s_plus_vision_tokens(smollm2_model, reference):
    from transformers import AutoTokenizer

    from vreason.server.checkpoints.smollm2 import VISION_TOKENS

    _, _, _, ref_tok = reference
    tok = AutoTokenizer.from_pretrained(smollm2_model)
    for t in TEXTS + ["Hello, world! Numbers 12345 and émigrés."]:
        assert tok.encode(t, add_special_tokens=False) == ref_tok.encode(t, add_special_tokens=False)
    assert [tok.convert_tokens_to_ids(t) for t in VISION_TOKENS] == list(range(len(ref_tok), len(tok)))
    assert all(len(tok.encode(t, add_special_tokens=False)) == 1 for t in VISION_TOKENS)


def test_text_logits_equal_smollm2_in_float64(smollm2_model, reference):
    ids, _, ref64, _ = reference
    for got, want in zip(_grafted_logits(smollm2_model, ids, torch.float64), ref64):
        vocab = want.shape[-1]
        assert (got[:, :vocab] - want).abs().max() <= 1e-9 * want.abs().max()
        assert torch.equal(got[:, vocab:], torch.zeros_like(got[:, vocab:]))  # the new tokens' rows are zero


def test_text_logits_float32_error_matches_smollm2s_own(smollm2_model, reference):
    ids, ref32, ref64, _ = reference
    for got, own, want in zip(_grafted_logits(smollm2_model, ids, torch.float32), ref32, ref64):
        vocab = want.shape[-1]
        own_err = (own.double() - want).abs().max()
        err = (got[:, :vocab].double() - want).abs().max()
        assert err <= 4 * own_err + 1e-6 * want.abs().max(), (err, own_err)
