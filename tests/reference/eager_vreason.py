"""Eager oracle of DESIGN section 2: HF transformers, one request, the obvious loop, no vLLM.

Every step re-runs the whole sequence through the HF model with a forward hook that replaces
the last layer's value projections at the video positions by the controlled values
Vn = normrestore(V0 + dV). dV is a leaf optimised with torch.optim.Adam through the whole
model (only layer L depends on it). Greedy decoding, fp32.
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


def _entropy(z):
    lp = torch.log_softmax(z.float(), -1)
    return -(lp.exp() * lp).sum(-1)


def eager_generate(model, inputs: dict, video_token_id: int, eos_id: int, max_new_tokens: int,
                   params: VReasonParams | None) -> tuple[list[int], list[dict]]:
    """Returns (generated token ids, trace rows {entropy, ema, alpha, updated})."""
    ids = inputs["input_ids"]
    pos = (ids[0] == video_token_id).nonzero().flatten()
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

    handle = attn.v_proj.register_forward_hook(hook)
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}

    def logits_of(seq):
        kw = dict(extra)
        if "mm_token_type_ids" in kw:  # generated tokens are text (type 0)
            tt = kw["mm_token_type_ids"]
            kw["mm_token_type_ids"] = torch.cat([tt, tt.new_zeros(1, seq.shape[1] - tt.shape[1])], dim=1)
        return model(input_ids=seq, attention_mask=torch.ones_like(seq), **kw).logits[0, -1].float()

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
                if params.force_alpha is not None:
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
            rows.append(row)
            tok = int(z.argmax())
            tokens.append(tok)
            if tok == eos_id:
                break
            seq = torch.cat([seq, torch.tensor([[tok]])], dim=1)
        return tokens, rows
    finally:
        handle.remove()
