"""Eager oracle of docs/design.md section 2: HF transformers, one request, the obvious loop, no vLLM.

Every step re-runs the whole sequence through the HF model with a forward hook that replaces
the last layer's value projections at the video positions by the controlled values
Vn = normrestore(V0 + dV). dV is a leaf optimised with torch.optim.Adam through the whole
model (only layer L depends on it). Greedy decoding, fp32.

M-RoPE positions are built here by the original rule of each family (`mrope_positions`:
Qwen2.5-VL scales the temporal index by seconds per patch, Qwen2-VL counts patches, Qwen3-VL
gives each temporal patch its own run of temporal index 0 after its timestamp text) and passed
to the model: transformers 5.19's `get_rope_index` starts the text after a video at
`max(h, w) // merge` past the video's start, ignoring the temporal axis, which disagrees with
the original rule (and vLLM) by whole nats once a video has 3 or more temporal patches.
The model is any HF Qwen2-VL, Qwen2.5-VL or Qwen3-VL model (`model.model.language_model` the decoder).
"""

from __future__ import annotations

import math

import torch

from vreason.server.controller.params import VReasonParams


def _controlled(v0, delta, norm_restore):
    u = v0 + delta
    if norm_restore == "none":
        return u
    return u / torch.linalg.vector_norm(u, dim=-1, keepdim=True).clamp_min(1e-6) * \
        torch.linalg.vector_norm(v0, dim=-1, keepdim=True)


def mrope_positions(input_ids: torch.Tensor, video_token_id: int, video_grid_thw: torch.Tensor,
                    second_per_grid_ts, spatial_merge_size: int, tokens_per_second: float | None) -> torch.Tensor:
    """[3, L] (temporal, height, width) positions of one sequence, by the original rule.

    Text tokens take the same position on all three axes, counting on from the previous token.
    The i-th run of video tokens, with llm grid (t, h, w) = (T, H / merge, W / merge), takes
    (temporal index of its patch k, row, column) + s, where s is the position the run starts
    at; the text after it starts at the maximum position of the run + 1 (not at s + max(h, w),
    as transformers 5.19 has it). The temporal index is floor(k * second_per_grid_t *
    tokens_per_second) for Qwen2.5-VL and k for Qwen2-VL (`second_per_grid_ts` None).
    """
    ids = input_ids.tolist()
    grids = iter(video_grid_thw.tolist())
    secs = iter(torch.as_tensor(second_per_grid_ts, dtype=torch.float64).tolist()
                if second_per_grid_ts is not None else [])
    out, i, nxt = [], 0, 0
    while i < len(ids):
        if ids[i] != video_token_id:
            out.append(torch.full((3, 1), nxt, dtype=torch.long))
            nxt, i = nxt + 1, i + 1
            continue
        t, h, w = next(grids)
        h, w = h // spatial_merge_size, w // spatial_merge_size
        if second_per_grid_ts is None:
            tt = torch.arange(t)
        else:
            tt = (torch.arange(t, dtype=torch.float64) * next(secs) * tokens_per_second).long()
        grid = torch.stack(torch.meshgrid(tt, torch.arange(h), torch.arange(w), indexing="ij")).reshape(3, -1)
        if ids[i:i + grid.shape[1]] != [video_token_id] * grid.shape[1]:
            raise ValueError(f"video run at {i} is not {grid.shape[1]} tokens long")
        out.append(grid + nxt)
        nxt, i = int(out[-1].max()) + 1, i + grid.shape[1]
    if next(grids, None) is not None:
        raise ValueError("more video grids than video runs")
    return torch.cat(out, dim=1)


def _entropy(z):
    lp = torch.log_softmax(z.float(), -1)
    return -(lp.exp() * lp).sum(-1)


def video_embeddings(model, inputs: dict) -> torch.Tensor:
    """[N, D]: the prompt's video tokens as they enter the language model (the vision merger's
    output), in prompt order."""
    with torch.no_grad():
        out = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
    return torch.cat(list(out.pooler_output))


def _pruned_prompt(model, inputs: dict, video_token_id: int, keep: torch.Tensor, prompt_pos: torch.Tensor):
    """(input ids, M-RoPE positions, input embeddings) of the prompt without the video tokens
    `keep` drops: every kept token at its full-prompt position, kept video tokens embedded as in
    the full prompt (V-Reason Lite, given its choice of tokens)."""
    full = inputs["input_ids"][0]
    cols = full != video_token_id
    cols[~cols] = keep
    ids = full[cols][None]
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids).clone()
        embeds[0, ids[0] == video_token_id] = video_embeddings(model, inputs)[keep].to(embeds.dtype)
    return ids, prompt_pos[:, cols], embeds


def eager_generate(model, inputs: dict, video_token_id: int, eos_id: int, max_new_tokens: int,
                   params: VReasonParams | None, keep_logits: bool = False,
                   forced: list[int] | None = None, keep: torch.Tensor | None = None) -> tuple[list[int], list[dict]]:
    """Returns (generated token ids, trace rows {entropy, ema, alpha, updated}); with
    `keep_logits` each row also holds the fp32 logits the token was chosen from. With `forced`,
    step t appends forced[t - 1] instead of its greedy token (teacher forcing: the controller's
    trace along a given token path, for servers whose arithmetic differs, e.g. bf16). With
    `keep` (bool over the prompt's video tokens), the prompt holds only those video tokens, each
    at its full-prompt position (V-Reason Lite); the controller then covers those tokens only."""
    ids = inputs["input_ids"]
    attn = model.model.language_model.layers[-1].self_attn
    hkv, d = attn.config.num_key_value_heads, attn.head_dim
    state = {"vn": None, "v0": None}

    def hook(module, args, out):
        if state["v0"] is None:
            state["v0"] = out[0, pos].detach().view(len(pos), hkv, d).transpose(0, 1).clone()
        if state["vn"] is None:
            return out
        out = out.clone()
        out[0, pos] = state["vn"].transpose(0, 1).reshape(len(pos), hkv * d).to(out.dtype)
        return out

    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    cfg = model.config
    grids = inputs["video_grid_thw"]
    if cfg.model_type == "qwen3_vl":  # one run per temporal patch, each after its timestamp text
        grids = torch.repeat_interleave(grids, grids[:, 0], dim=0)
        grids[:, 0] = 1
    prompt_pos = mrope_positions(ids[0], video_token_id, grids, inputs.get("second_per_grid_ts"),
                                 cfg.vision_config.spatial_merge_size,
                                 getattr(cfg.vision_config, "tokens_per_second", None))
    embeds = None
    if keep is not None:
        ids, prompt_pos, embeds = _pruned_prompt(model, inputs, video_token_id, keep, prompt_pos)
    pos = (ids[0] == video_token_id).nonzero().flatten()
    handle = attn.v_proj.register_forward_hook(hook)

    def logits_of(seq):
        gen = seq.shape[1] - ids.shape[1]  # generated tokens are text: one position each
        tail = torch.arange(1, gen + 1) + int(prompt_pos.max())
        position_ids = torch.cat([prompt_pos, tail.expand(3, -1)], dim=1)[:, None, :]
        mask = torch.ones_like(seq)
        if embeds is not None:
            x = torch.cat([embeds, model.get_input_embeddings()(seq[:, ids.shape[1]:])], dim=1)
            return model(inputs_embeds=x, attention_mask=mask, position_ids=position_ids).logits[0, -1].float()
        kw = dict(extra, position_ids=position_ids)
        if "mm_token_type_ids" in kw:  # generated tokens are text (type 0)
            tt = kw["mm_token_type_ids"]
            kw["mm_token_type_ids"] = torch.cat([tt, tt.new_zeros(1, seq.shape[1] - tt.shape[1])], dim=1)
        return model(input_ids=seq, attention_mask=mask, **kw).logits[0, -1].float()

    try:
        seq, tokens, rows = ids, [], []
        with torch.no_grad():
            logits_of(seq)  # records V0
        delta = torch.zeros_like(state["v0"], requires_grad=True)
        opt = torch.optim.Adam([delta], lr=params.lr if params else 1e-2)
        ema = peak = 0.0
        for t in range(1, max_new_tokens + 1):
            def set_vn():
                state["vn"] = None if params is None else _controlled(state["v0"], delta, params.norm_restore)
            with torch.no_grad():
                set_vn()
                z = logits_of(seq)
            h = float(_entropy(z))
            row = {"entropy": h, "updated": False}
            if params is not None:
                ema = params.beta * ema + (1 - params.beta) * h
                alpha = -1.0 if ema < peak else 1.0
                peak = max(peak, ema)
                if getattr(params, "force_alpha", None) is not None:  # a test-only knob (knobs.py)
                    alpha = float(params.force_alpha)
                row.update(ema=ema, alpha=alpha)
                if t % params.update_every == 0:
                    for _ in range(params.steps):
                        opt.zero_grad()
                        set_vn()
                        zz = logits_of(seq)
                        loss = alpha * (math.log(zz.shape[-1]) - _entropy(zz))
                        loss.backward()
                        opt.step()
                    row["updated"] = True
                    if params.apply == "now":
                        with torch.no_grad():
                            set_vn()
                            z = logits_of(seq)
            if keep_logits:
                row["logits"] = z.detach().clone()
            rows.append(row)
            tok = int(z.argmax()) if forced is None else forced[t - 1]
            tokens.append(tok)
            if tok == eos_id or (forced is not None and t == len(forced)):
                break
            seq = torch.cat([seq, torch.tensor([[tok]])], dim=1)
        return tokens, rows
    finally:
        handle.remove()
