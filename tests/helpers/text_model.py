"""A tiny random text-only Qwen2 checkpoint (architecture Qwen2ForCausalLM), built from the demo
model's text dimensions and tokenizer: a model vLLM serves but V-Reason does not support."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def build_text_model(demo_model: Path, out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    text = json.loads((demo_model / "config.json").read_text())["text_config"]
    cfg = Qwen2Config(vocab_size=text["vocab_size"], hidden_size=text["hidden_size"],
                      intermediate_size=text["intermediate_size"], num_hidden_layers=text["num_hidden_layers"],
                      num_attention_heads=text["num_attention_heads"],
                      num_key_value_heads=text["num_key_value_heads"], max_position_embeddings=4096,
                      bos_token_id=text["bos_token_id"], eos_token_id=text["eos_token_id"],
                      pad_token_id=text["pad_token_id"], tie_word_embeddings=False)
    torch.manual_seed(seed)
    Qwen2ForCausalLM(cfg).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(demo_model / name, out / name)
    return out
