"""The embedded demo models: deterministic tiny random Qwen2.5-VL (the default), Qwen2-VL and Qwen3-VL checkpoints.

`build_demo_model(out_dir)` writes real (seeded) weights in safetensors, a byte-level BPE
tokenizer trained locally on a built-in corpus with the Qwen special tokens, the Qwen2.5-VL chat
template and the image/video processor configs. It loads in HF transformers and in vLLM.

The weights are random: answers are gibberish. The scales are chosen so that next-token
distributions are peaked and differ from step to step (a standard 0.02 init gives near-uniform
logits, where V-Reason's entropy signal would not show), and so that the last layer's attention
over video positions visibly moves the logits.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

MARKER = "vreason_demo_model.json"
DEMO_FORMAT_VERSION = 2
DEMO_DTYPE = "float32"
"""The dtype the embedded demo checkpoints (this one and smollm2.py's) are built in, and served in
unless --dtype says otherwise: vLLM's `auto` would serve them in bfloat16 on CPU, where SmolLM2's
answers fall apart."""
# Whole-word tokens for the think/answer protocol (the real Qwen2.5 vocabulary splits them;
# single tokens here let the scripted variant below emit them deterministically).
PROTOCOL_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
SCRIPT = "<think> square moves right</think><answer>B</answer>"

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
VOCAB_SIZE = 2048

CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_WORDS = (
    "the a an video frame shows square circle triangle red green blue yellow white black moves "
    "left right up down towards away from first then after before finally answer think reason "
    "question option what which where when how many count colour color shape object objects "
    "scene camera motion direction speed fast slow stops starts appears disappears is are was "
    "were and or not because so therefore let me check again step one two three four five six "
    "seven eight nine ten number total order sequence time second end beginning middle top "
    "bottom center corner background foreground moving static same different larger smaller "
    "<think> </think> <answer> </answer> A B C D E yes no correct wrong maybe I we it this that"
).split()


def _corpus(seed: int) -> list[str]:
    """A deterministic English-like corpus (independent of the Python version's stdlib)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(4000):
        n = rng.randint(4, 18)
        words = [rng.choice(_WORDS) for _ in range(n)]
        lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ",", ":"]))
    lines += [f"{i} {i + 1} {i * 2}" for i in range(500)]
    return lines


def _build_tokenizer(seed: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        bos_token=None, model_max_length=32768, clean_up_tokenization_spaces=False,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_bos_token": "<|vision_start|>",
                              "vision_eos_token": "<|vision_end|>"},
    )
    hf_tok.add_tokens(PROTOCOL_TOKENS)
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


def _rescale_for_peaked_outputs(model, seed: int) -> None:
    """Re-draw weights so that logits are peaked and attention contributes visibly."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    text = model.model.language_model
    with torch.no_grad():
        def redraw(w, std):
            w.copy_(torch.randn(w.shape, generator=gen) * std)

        redraw(text.embed_tokens.weight, 1.0)
        redraw(model.lm_head.weight, 0.35)
        for layer in text.layers:
            a = layer.self_attn
            for proj in (a.q_proj, a.k_proj):
                redraw(proj.weight, 0.15)
            redraw(a.v_proj.weight, 0.2)
            redraw(a.o_proj.weight, 0.2)
            redraw(layer.mlp.gate_proj.weight, 0.1)
            redraw(layer.mlp.up_proj.weight, 0.1)
            redraw(layer.mlp.down_proj.weight, 0.1)


def _script_weights(model, tok, script: str) -> None:
    """Make the model a deterministic bigram machine that answers `script` to any prompt.

    Attention and MLP outputs are zeroed, so the last hidden state is the current token's
    embedding; lm_head row y is aligned with the embedding of the token before y in the chain
    (the prompt's final newline, then the script's tokens, then <|im_end|>).
    """
    import torch

    chain = [tok.convert_tokens_to_ids(tok.tokenize("\n"))[-1]] + tok.encode(script) + [tok.eos_token_id]
    if len(set(chain)) != len(chain):
        raise ValueError(f"script tokens must be distinct for a bigram chain: {chain}")
    text = model.model.language_model
    emb = text.embed_tokens.weight
    with torch.no_grad():
        for layer in text.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for prev, nxt in zip(chain, chain[1:]):
            model.lm_head.weight[nxt] = 4.0 * emb[prev] / emb[prev].norm()


VISION_CONFIG = dict(
    depth=2, hidden_size=64, intermediate_size=128, num_heads=2, in_channels=3,
    patch_size=14, spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2,
    window_size=112, fullatt_block_indexes=[1],
)
"""The small random Qwen2.5-VL vision tower (out_hidden_size is the language model's hidden size)."""

QWEN2_VL_VISION_CONFIG = dict(
    depth=2, embed_dim=64, mlp_ratio=2, num_heads=2, in_channels=3, patch_size=14, spatial_merge_size=2,
    temporal_patch_size=2,
)
"""The small random Qwen2-VL vision tower (hidden_size is the language model's hidden size)."""

QWEN3_VL_VISION_CONFIG = dict(
    depth=2, hidden_size=64, intermediate_size=128, num_heads=2, in_channels=3, patch_size=16, spatial_merge_size=2,
    temporal_patch_size=2, num_position_embeddings=256, deepstack_visual_indexes=[0],
)
"""The small random Qwen3-VL vision tower (out_hidden_size is the language model's hidden size;
DeepStack adds the features of its first block to the language model's first layer)."""

ARCHITECTURES = {"qwen2_5_vl": "Qwen2.5-VL", "qwen2_vl": "Qwen2-VL", "qwen3_vl": "Qwen3-VL"}
"""The demo model's architectures (`build_demo_model`): key -> family name."""
DEFAULT_ARCHITECTURE = "qwen2_5_vl"


def build_processor(tok, chat_template: str, architecture: str = DEFAULT_ARCHITECTURE):
    """The family's processor with the demo's small image/video sizes (112x112 video frames)."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    if architecture == "qwen3_vl":
        # 16-pixel patches; the video's pixel budget covers all its frames. Pixels are normalised
        # to [-1, 1] for images and videos alike, as in Qwen3-VL's own processor configs: vLLM
        # normalises video pixels inside the model with the image processor's mean and std.
        norm = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
        img_proc = Qwen2VLImageProcessor(size={"shortest_edge": 64 * 64, "longest_edge": 256 * 256},
                                         patch_size=16, temporal_patch_size=2, merge_size=2, **norm)
        vid_proc = Qwen3VLVideoProcessor(size={"shortest_edge": 64 * 64, "longest_edge": 16 * 128 * 128},
                                         patch_size=16, temporal_patch_size=2, merge_size=2, min_frames=2,
                                         max_frames=64, fps=2.0, do_sample_frames=False, cap_pixels_per_frame=False,
                                         **norm)
        return Qwen3VLProcessor(image_processor=img_proc, tokenizer=tok, video_processor=vid_proc,
                                chat_template=chat_template)

    img_proc = Qwen2VLImageProcessor(size={"shortest_edge": 56 * 56, "longest_edge": 224 * 224},
                                     patch_size=14, temporal_patch_size=2, merge_size=2)
    vid_proc = Qwen2VLVideoProcessor(size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112},
                                     patch_size=14, temporal_patch_size=2, merge_size=2,
                                     min_frames=2, max_frames=64, fps=2.0, do_sample_frames=False)
    cls = Qwen2VLProcessor if architecture == "qwen2_vl" else Qwen2_5_VLProcessor
    return cls(image_processor=img_proc, tokenizer=tok, video_processor=vid_proc, chat_template=chat_template)


def build_demo_model(out_dir: str | Path, seed: int = 0, script: str | None = None,
                     architecture: str = DEFAULT_ARCHITECTURE) -> Path:
    """Write the tiny random checkpoint of `architecture` (a key of ARCHITECTURES) to `out_dir`
    and return its path. Both families share the tokenizer, chat template, text widths and the
    re-drawn language-model weights; each has its own small random vision tower.

    With `script`, the model instead answers every prompt with exactly that text (greedy): a
    real checkpoint with a known answer, for end-to-end tests of answer parsing.
    """
    import torch
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration, Qwen3VLConfig, Qwen3VLForConditionalGeneration)

    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown demo architecture {architecture!r}: one of {', '.join(ARCHITECTURES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _build_tokenizer(seed)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = len(tok)

    processor = build_processor(tok, CHAT_TEMPLATE, architecture)
    rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]}
    text_extra = {}
    if architecture == "qwen2_vl":
        config_cls, model_cls = Qwen2VLConfig, Qwen2VLForConditionalGeneration
        vision = {**QWEN2_VL_VISION_CONFIG, "hidden_size": 128}
    elif architecture == "qwen3_vl":
        config_cls, model_cls = Qwen3VLConfig, Qwen3VLForConditionalGeneration
        vision = {**QWEN3_VL_VISION_CONFIG, "out_hidden_size": 128}
        rope["mrope_interleaved"] = True
        text_extra = {"head_dim": 32}
    else:
        config_cls, model_cls = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
        vision = {**VISION_CONFIG, "out_hidden_size": 128}
    cfg = config_cls(
        text_config=dict(
            vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
            rms_norm_eps=1e-6, tie_word_embeddings=False, use_sliding_window=False,
            rope_parameters=rope, **text_extra,
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"], dtype=DEMO_DTYPE,
        ),
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = model_cls(cfg).to(torch.float32).eval()
    _rescale_for_peaked_outputs(model, seed)
    if script is not None:
        _script_weights(model, tok, script)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    (out / MARKER).write_text(json.dumps({
        "format_version": DEMO_FORMAT_VERSION, "seed": seed, "script": script, "architecture": architecture,
        "note": "random weights: for tests and demos only, the answers are meaningless",
    }, indent=2))
    return out


def is_demo_model(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def ensure_demo_model(cache_dir: str | Path, seed: int = 0, script: str | None = None,
                      architecture: str = DEFAULT_ARCHITECTURE) -> Path:
    """Build the demo model into `cache_dir/demo-<architecture>-v{N}...` once; reuse it afterwards."""
    kind = "" if script is None else "-scripted"
    name = architecture.replace("_vl", "-vl")
    target = Path(cache_dir) / f"demo-{name}-v{DEMO_FORMAT_VERSION}-seed{seed}{kind}"
    return build_once(target, lambda tmp: build_demo_model(tmp, seed, script, architecture), is_demo_model)


def build_once(target: Path, build: Callable[[Path], object], is_built: Callable[[Path], bool]) -> Path:
    """`target` if `is_built(target)`, else `build` it in a scratch folder renamed to `target` at the end."""
    if is_built(target):
        return target
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        import shutil
        shutil.rmtree(tmp)
    build(tmp)
    tmp.rename(target)  # atomic: a half-written model is never picked up
    return target
