"""V-Reason Lite's rule (server/lite.py, vllm_ext/lite.py) against vLLM's own video-pruning
functions: the same token count as vLLM's processor writes, and positions that vLLM's
`recompute_mrope_positions` turns into the full prompt's."""

from __future__ import annotations

import pytest
import torch

from tests.reference.eager_vreason import mrope_positions
from vreason.server.lite import check_rate, kept_tokens

# vLLM (and vllm_ext, which imports it) is imported inside the tests: importing it while pytest
# collects would set Triton up before the kernel tests turn its interpreter on.
VID, IMG, START, END = 7, 8, 5, 6


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5, 0.75, 0.9, 0.999])
def test_kept_count_is_vllms(rate):
    from vllm.multimodal.video_prune.evs import compute_retained_tokens_count

    for per in (1, 4, 16, 63, 330):
        for frames in range(1, 17):
            assert kept_tokens(per, frames, rate) == compute_retained_tokens_count(per, frames, rate)


def test_rate_zero_keeps_everything_and_bad_rates_are_refused():
    assert kept_tokens(16, 4, 0.0) == 64
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="vreason-lite-rate"):
            check_rate(bad)


def test_keep_mask_keeps_the_largest_norms_and_breaks_ties_by_order():
    from vreason.server.vllm_ext.lite import keep_mask

    torch.manual_seed(0)
    emb = torch.randn(24, 16)
    keep = keep_mask(emb, 4, 0.5)
    norms = emb.norm(dim=-1)
    assert int(keep.sum()) == 12 and norms[keep].min() > norms[~keep].max()
    tied = torch.ones(8, 4)  # all equal: the earliest win
    assert keep_mask(tied, 2, 0.5).tolist() == [True] * 4 + [False] * 4
    assert int(keep_mask(emb, 4, 0.99).sum()) == 6  # at least one frame's worth


@pytest.mark.parametrize("grid,seconds,tps", [([8, 8, 12], 2.0, 2.0), ([4, 12, 8], 1.0, 2.0),
                                               ([3, 4, 4], 0.5, 2.0), ([2, 16, 16], 1.0, 1.0)])
def test_kept_tokens_and_the_text_after_keep_full_prompt_positions(grid, seconds, tps):
    """vLLM places each video's pruned positions with `recompute_mrope_positions`; with Lite's
    4th channel every kept video token and every text token lands where the full prompt has it
    (the original rule, tests/reference), including the text after a video whose temporal
    positions pass its width, which vLLM's EVS channels move."""
    from vllm.multimodal.video_prune.evs import compute_mrope_for_media, recompute_mrope_positions

    from vreason.server.vllm_ext.lite import keep_mask, media_positions

    n = grid[0] * grid[1] * grid[2] // 4
    full = torch.tensor([1, 2, 3, START] + [VID] * n + [END, 9, 10, 11])
    want = mrope_positions(full, VID, torch.tensor([grid]), [seconds], 2, tps)
    torch.manual_seed(1)
    mask = keep_mask(torch.randn(n, 8), grid[0], 0.5)
    cols = full != VID
    cols[~cols] = mask
    pruned = full[cols]
    start = torch.arange(len(pruned)).expand(3, -1).clone()  # text positions, as before the video
    mine = media_positions(grid, 2, seconds * tps)[mask].T
    got, delta = recompute_mrope_positions(pruned, [mine], start, 0, START, IMG, VID)
    assert torch.equal(got, want[:, cols])
    assert delta == int(want.max()) + 1 - len(pruned)
    evs = compute_mrope_for_media(torch.tensor(grid), 2, tokens_per_second=tps,
                                  video_second_per_grid=int(seconds))[mask].T
    evs_got, _ = recompute_mrope_positions(pruned, [evs], start, 0, START, IMG, VID)
    if (grid[0] - 1) * seconds * tps >= grid[2] // 2 or seconds != int(seconds):
        assert not torch.equal(evs_got, want[:, cols])  # why Lite does not use vLLM's EVS channels
