"""Write a random Qwen2.5-VL checkpoint with Qwen2.5-VL-7B's text widths and 2 decoder layers
(bench only): the demo model's tokenizer, processor and small vision tower (its output widened to
the 7B hidden size), transformers' own initialisation, fp32 (about 6.2 GB on disk).

Benchmarks serve it to measure at real widths through the real server: each layer, the lm_head
(vocabulary 152064) and the V-Reason tail cost what they cost at 7B; a 7B decode has 28 layers
where this has 2.

    .venv/bin/python bench/wide_model.py DIR
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

WIDTHS = dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
              vocab_size=152064, num_hidden_layers=2)
"""Qwen2.5-VL-7B's text config, but 2 layers."""


def build(out: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from vreason.server.checkpoints.demo import build_demo_model

    base = build_demo_model(Path(tempfile.mkdtemp(prefix="vreason-wide-base-")))
    cfg = AutoConfig.from_pretrained(base)
    for k, v in WIDTHS.items():
        setattr(cfg.text_config, k, v)
    cfg.text_config.rope_parameters = {**cfg.text_config.rope_parameters, "mrope_section": [16, 24, 24]}  # head dim 128
    cfg.vision_config.out_hidden_size = WIDTHS["hidden_size"]
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(cfg).to(torch.float32).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    AutoProcessor.from_pretrained(base).save_pretrained(out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path)
    print(build(p.parse_args().dir))


if __name__ == "__main__":
    main()
