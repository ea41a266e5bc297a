"""V-Reason Lite in the model: which video tokens are kept, and the positions that keep the full
prompt's M-RoPE (server/lite.py says what Lite is and how many tokens it keeps).

vLLM's video-pruning path (enabled by `video_pruning_rate`, which the engine config sets to the
Lite rate) hands each video's embeddings to the model class's post-processing; the V-Reason
class replaces vLLM's EVS choice there with `keep_mask` and appends `media_positions`, and
vLLM's `recompute_mrope_positions` places them in the prompt.
"""

from __future__ import annotations

import torch
from vllm.utils.gpu_sync_debug import gpu_sync_allowed

from vreason.server.keys import LITE_KEY
from vreason.server.lite import kept_tokens


def keep_mask(embeds: torch.Tensor, frames: int, rate: float) -> torch.Tensor:
    """bool [N]: the `kept_tokens` tokens of one video (embeds [N, D] entering the language
    model, N = frames x tokens per frame) with the largest L2 norm, computed in fp32. Ties go
    to the earlier token (a stable sort), so the choice is a function of the embeddings alone."""
    n = embeds.shape[0]
    keep = kept_tokens(n // frames, frames, rate)
    norms = torch.linalg.vector_norm(embeds.float(), dim=-1)
    order = torch.argsort(norms, descending=True, stable=True)
    mask = torch.zeros(n, dtype=torch.bool, device=embeds.device)
    mask[order[:keep]] = True
    return mask


def media_positions(grid_thw: list[int], merge: int, t_factor: float) -> torch.Tensor:
    """long [N, 4]: each video token's (t, h, w) M-RoPE position relative to the video's start, by
    Qwen2.5-VL's rule as vLLM computes the unpruned prompt's (temporal index floor(k x t_factor) in
    float64, t_factor = seconds per temporal patch x tokens_per_second), and in the 4th channel
    where the text after the video starts: the largest position of the whole (unpruned) video + 1,
    as in the full prompt. vLLM's EVS puts the grid width there and truncates the seconds per
    patch to an integer, which moves tokens and the text after them; Lite keeps every kept token
    and every text token at its full-prompt position."""
    t, h, w = int(grid_thw[0]), int(grid_thw[1]) // merge, int(grid_thw[2]) // merge
    tt = (torch.arange(t, dtype=torch.float64) * t_factor).long()
    grid = torch.stack(torch.meshgrid(tt, torch.arange(h), torch.arange(w), indexing="ij")).reshape(3, -1)
    return torch.cat([grid, (grid.max() + 1).expand(1, grid.shape[1])]).T.contiguous()


class LitePruning:
    """Mixed in front of vLLM's Qwen2.5-VL class: with the Lite rate in additional_config
    (`keys.LITE_KEY`), vLLM's video-pruning post-processing keeps the tokens `keep_mask` picks at
    their full-prompt positions; without it, vLLM's own EVS runs unchanged (`--video-pruning-rate`).
    `vreason_lite_pruned` counts the video tokens pruned (the worker's stats report it)."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.vreason_lite_rate = float((vllm_config.additional_config or {}).get(LITE_KEY, 0.0))
        self.vreason_lite_pruned = 0
        if self.vreason_lite_rate and self.video_pruning_rate != self.vreason_lite_rate:
            raise ValueError(f"Lite rate {self.vreason_lite_rate} but vLLM's video_pruning_rate is "
                             f"{self.video_pruning_rate}: the placeholders would not match the kept tokens")

    def _postprocess_video_embeds_evs(self, video_embeds_split, video_input):
        if not self.vreason_lite_rate:
            return super()._postprocess_video_embeds_evs(video_embeds_split, video_input)
        merge = self.visual.spatial_merge_size
        seconds = video_input.get("second_per_grid_ts")
        tokens_per_second = getattr(self.config.vision_config, "tokens_per_second", 1.0)
        out = []
        for i, (emb, grid) in enumerate(zip(video_embeds_split, video_input["video_grid_thw"].tolist())):
            t_factor = (1.0 if seconds is None else float(seconds[i])) * tokens_per_second
            mask = keep_mask(emb, int(grid[0]), self.vreason_lite_rate)
            positions = media_positions(grid, merge, t_factor).to(emb.device)
            self.vreason_lite_pruned += emb.shape[0] - kept_tokens(emb.shape[0] // int(grid[0]), int(grid[0]),
                                                                     self.vreason_lite_rate)
            with gpu_sync_allowed():  # boolean indexing sizes its output on the host, as vLLM's EVS does
                emb, positions = emb[mask], positions[mask]
            # vLLM carries the positions as extra channels of the embeddings until it places them:
            # in fp32 they are exact (bf16 holds integers up to 256 only); the embeddings go back to
            # the model dtype, unchanged, when vLLM merges them into the prompt.
            out.append(torch.cat([emb.float(), positions.float()], dim=1))
        return tuple(out)
