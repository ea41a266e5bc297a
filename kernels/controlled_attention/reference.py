"""Pure-torch reference (the spec) of paged decode attention with controlled video values."""

from __future__ import annotations

import torch


def video_positions(vid_start: torch.Tensor, vid_len: torch.Tensor) -> list[torch.Tensor]:
    """Per row, the video positions in dense order (run 0's positions first, then run 1's, ...)."""
    rows = []
    for starts, lens in zip(vid_start.tolist(), vid_len.tolist()):
        runs = [torch.arange(s, s + n) for s, n in zip(starts, lens) if n > 0]
        rows.append(torch.cat(runs) if runs else torch.zeros(0, dtype=torch.long))
    return rows


def controlled_attention_reference(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    vid_start: torch.Tensor,
    vid_len: torch.Tensor,
    values: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One row at a time: gather the context through the block table, overlay, softmax (fp32).

    Shapes as in `vreason.kernels.controlled_attention`. Raises ValueError when a row's video
    runs leave [0, seq_len) or hold more positions than `values` has room for.
    """
    R, Hq, D = q.shape
    Hkv, block_size = key_cache.shape[1], key_cache.shape[2]
    G = Hq // Hkv
    max_p = values.shape[2]
    out = torch.zeros(R, Hq, D, dtype=q.dtype, device=q.device)
    weights = torch.zeros(R, Hq, max_p, dtype=torch.float32, device=q.device)
    for r, pos in enumerate(video_positions(vid_start, vid_len)):
        n = int(seq_lens[r])
        pos = pos.to(q.device)
        if len(pos) > max_p or (len(pos) and (int(pos.min()) < 0 or int(pos.max()) >= n)):
            raise ValueError(f"row {r}: video runs must lie in [0, {n}) and hold <= {max_p} positions")
        t = torch.arange(n, device=q.device)
        blocks = block_table[r, t // block_size].long()
        offs = t % block_size
        # [Hkv, n, D]
        k = key_cache[blocks, :, offs].transpose(0, 1).float()
        v = value_cache[blocks, :, offs].transpose(0, 1).float()
        v[:, pos] = values[r, :, : len(pos)].float()
        # [Hkv, G, n]
        s = scale * torch.einsum("hgd,hnd->hgn", q[r].float().view(Hkv, G, D), k)
        p = torch.softmax(s, dim=-1)
        out[r] = torch.einsum("hgn,hnd->hgd", p, v).reshape(Hq, D).to(q.dtype)
        weights[r, :, : len(pos)] = p[:, :, pos].reshape(Hq, len(pos))
    return out, weights
