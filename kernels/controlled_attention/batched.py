"""Vectorised torch path of controlled_attention (the CPU fast path; the spec is reference.py).

All rows at once: gather every row's blocks through the block table into a padded
[R, Hkv, Lmax, D] context, mask positions past each row's length, one softmax; the output is
the cached values weighted at the other positions plus the controlled values weighted at the
video positions (through a position -> dense-index map built from the runs).
"""

from __future__ import annotations

import torch


def _dense_index(vid_start: torch.Tensor, vid_len: torch.Tensor, length: int) -> torch.Tensor:
    """[R, length] int64: the dense video index of each position, -1 where not a video position."""
    t = torch.arange(length, device=vid_start.device)
    start, n = vid_start.long()[:, :, None], vid_len.long()[:, :, None]  # [R, K, 1]
    before = torch.cumsum(vid_len.long(), dim=1) - vid_len.long()  # dense offset of each run
    inside = (t >= start) & (t < start + n)  # [R, K, L]
    return torch.where(inside, before[:, :, None] + (t - start), -1).amax(dim=1)


def controlled_attention_batched(q, key_cache, value_cache, block_table, seq_lens, vid_start, vid_len,
                                 values, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    R, Hq, D = q.shape
    Hkv, N = key_cache.shape[1], key_cache.shape[2]
    G, P = Hq // Hkv, values.shape[2]
    L = int(seq_lens.max())
    nb = -(-L // N)
    # Table entries past a row's own blocks may hold anything: point them at block 0 (masked below).
    used = torch.arange(nb, device=q.device)[None, :] < (seq_lens.long()[:, None] + N - 1) // N
    blocks = torch.where(used, block_table[:, :nb].long(), 0)

    def context(cache):  # [R, Hkv, nb*N, D] -> first L positions, fp32
        return cache[blocks].permute(0, 2, 1, 3, 4).reshape(R, Hkv, nb * N, D)[:, :, :L].float()

    k, v = context(key_cache), context(value_cache)
    idx = _dense_index(vid_start, vid_len, L)  # [R, L]
    is_vid = idx >= 0
    s = torch.einsum("rhgd,rhld->rhgl", q.float().view(R, Hkv, G, D), k) * scale
    valid = torch.arange(L, device=q.device)[None, :] < seq_lens.long()[:, None]  # [R, L]
    s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1)
    # weights at video positions, scattered to dense order (positions past P are dropped)
    weights = torch.zeros(R, Hq, P + 1, dtype=torch.float32, device=q.device)
    dest = torch.where(is_vid & valid, idx, P).clamp(max=P)  # non-video -> the spare column P
    weights.scatter_add_(2, dest[:, None, :].expand(R, Hq, L), p.reshape(R, Hq, L))
    weights = weights[:, :, :P]
    # cached values everywhere but the video positions, plus the controlled values there:
    # no overlaid copy of the context is built
    p_rest = p.masked_fill(is_vid[:, None, None, :], 0.0)
    out = torch.einsum("rhgl,rhld->rhgd", p_rest, v)
    if P > 0:
        out = out + torch.einsum("rhgp,rhpd->rhgd", weights.view(R, Hkv, G, P), values.float())
    return out.reshape(R, Hq, D).to(q.dtype), weights
