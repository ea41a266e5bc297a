"""Reading one layer's paged KV cache in the layout its attention backend wrote.

vLLM gives each attention layer a view [num_blocks, Hkv, block_size, 2*D], and backends pack a
block differently. Each layout below was found by writing known keys and values through the
backend's own cache-write op and reading them back (tests/vllm_ext/test_paged_cache.py does
this for every x86 CPU ISA on any x86 machine); the worker proves the layout again at start-up
on the real hardware, against the backend's own attention output (layout_probe.py).

- FlashAttention/Triton (GPU): each token's key, then its value, in the last dimension.
- CPU, ISA "vec"/"vec16": per block and KV head, block_size*D key elements stored TRANSPOSED
  ([D, block_size], so the kernel vectorises q.k over tokens), then block_size*D value elements
  as [block_size, D].
- CPU, ISA "amx" (bf16 on CPUs with AMX tiles): keys in tiles of 16 tokens with head dims in
  pairs, offset(t, d) = (t//16)*16*D + (d//2)*32 + (t%16)*2 + d%2; values in blocks of 16 head
  dims with tokens in pairs, offset(t, d) = (d//16)*16*block_size + (t//2)*32 + (d%16)*2 + t%2.
  Neither is a strided view of [block_size, D]; each is a strided 6-D view, read by gathering.

vLLM's CPU backend picks other ISAs elsewhere ("neon" on ARM, "vsx" POWER, "vxe" s390x, "rvv"
RISC-V); their packing has not been read, so they are refused (V-Reason disabled, with the reason).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CPU_BACKENDS = ("CPU_ATTN",)
TOKEN_INTERLEAVED_BACKENDS = ("FLASH_ATTN", "TRITON_ATTN")
CPU_ISAS = ("vec", "vec16", "amx")
AMX_TILE = 16  # tokens per key tile and head dims per value block in the "amx" packing


class UnsupportedLayout(NotImplementedError):
    """The backend or ISA packs its cache in a way V-Reason cannot read (the message says which)."""


@dataclass(frozen=True)
class PagedKV:
    """One layer's keys and values, each [num_blocks, Hkv, block_size, D] as the model sees them.

    `key`/`value` are the backend's own storage: plain strided views when `strided`, else packed
    6-D views that only `tokens` and `blocks` know how to read.
    """

    key: torch.Tensor
    value: torch.Tensor
    block_size: int
    head_dim: int
    packing: str  # "strided" or "amx"

    @property
    def strided(self) -> bool:
        return self.packing == "strided"

    def tokens(self, part: str, block_row: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """[Hkv, P, D] keys ("key") or values ("value") of one request at token `positions` [P]."""
        n = self.block_size
        blocks = block_row.to(positions.device).long()[positions // n]
        t = positions % n
        p = positions.numel()
        if self.strided:
            out = getattr(self, part)[blocks, :, t]  # [P, Hkv, D]
        elif part == "key":  # [B, Hkv, N/16, 16, D/2, 2]
            out = self.key[blocks, :, t // AMX_TILE, t % AMX_TILE].reshape(p, -1, self.head_dim)
        else:  # [B, Hkv, D/16, N/2, 16, 2]
            out = self.value[blocks, :, :, t // 2, :, t % 2].reshape(p, -1, self.head_dim)
        return out.transpose(0, 1)

    def blocks(self, part: str, ids: torch.Tensor) -> torch.Tensor:
        """[*ids.shape, Hkv, block_size, D] keys or values of the blocks `ids` (a copy unless strided
        views can be indexed as they are)."""
        cache = getattr(self, part)[ids.long()]
        if self.strided:
            return cache
        lead, n, d = cache.shape[:-4], self.block_size, self.head_dim
        if part == "key":  # (t1, t0, d1, d0) already in token-major order
            return cache.reshape(*lead, n, d)
        return cache.permute(*range(len(lead)), -3, -1, -4, -2).reshape(*lead, n, d)

    def contiguous_rows(self, block_table: torch.Tensor, seq_lens: torch.Tensor):
        """(key, value, table) for the rows of `block_table` [R, W]: the caches as plain
        [R*nb, Hkv, N, D] copies of each row's first nb blocks, and a table [R, nb] into them.

        For packings that are not strided views (the attention kernels read [.., N, D] views);
        table entries past a row's own blocks may hold anything and are read as block 0.
        """
        n = self.block_size
        r = block_table.shape[0]
        nb = max(1, -(-int(seq_lens.max()) // n)) if r else 1
        used = torch.arange(nb, device=block_table.device)[None, :] < (seq_lens.long()[:, None] + n - 1) // n
        ids = torch.where(used, block_table[:, :nb].long(), 0).flatten()
        table = torch.arange(r * nb, dtype=torch.int32, device=block_table.device).view(r, nb)
        return self.blocks("key", ids), self.blocks("value", ids), table


def split_kv(kv_cache: torch.Tensor, backend: str, isa: str | None = None) -> PagedKV:
    """kv_cache: one layer's [num_blocks, Hkv, block_size, 2*D] cache -> its keys and values.

    Raises UnsupportedLayout for a backend or CPU ISA whose packing is not known.
    """
    b, h, n, two_d = kv_cache.shape
    d = two_d // 2
    if backend in TOKEN_INTERLEAVED_BACKENDS:
        return PagedKV(kv_cache[..., :d], kv_cache[..., d:], n, d, "strided")
    if backend not in CPU_BACKENDS:
        raise UnsupportedLayout(f"V-Reason cannot read the KV cache of attention backend {backend!r}")
    if isa not in CPU_ISAS:
        raise UnsupportedLayout(f"V-Reason cannot read vLLM's CPU KV cache packed for ISA {isa!r} (it reads "
                                f"{', '.join(CPU_ISAS)}: x86 CPUs)")
    if not kv_cache.is_contiguous():
        raise UnsupportedLayout("V-Reason expects a contiguous CPU KV cache")
    sb, sh, off = kv_cache.stride(0), kv_cache.stride(1), kv_cache.storage_offset()
    if isa != "amx":
        key = kv_cache.as_strided((b, h, n, d), (sb, sh, 1, n), off)
        value = kv_cache.as_strided((b, h, n, d), (sb, sh, d, 1), off + n * d)
        return PagedKV(key, value, n, d, "strided")
    if n % AMX_TILE or d % AMX_TILE:
        raise UnsupportedLayout(f"ISA 'amx' with block size {n} and head dim {d}: V-Reason reads the amx "
                                f"packing for multiples of {AMX_TILE} only")
    t = AMX_TILE
    key = kv_cache.as_strided((b, h, n // t, t, d // 2, 2), (sb, sh, t * d, 2, 2 * t, 1), off)
    value = kv_cache.as_strided((b, h, d // t, n // 2, t, 2), (sb, sh, t * n, 2 * t, 2, 1), off + n * d)
    return PagedKV(key, value, n, d, "amx")


def token_runs(token_ids, targets: set[int]) -> list[tuple[int, int]]:
    """(start, length) of each maximal run of target token ids, in order."""
    runs, start = [], None
    for i, tok in enumerate(token_ids):
        if tok in targets:
            if start is None:
                start = i
        elif start is not None:
            runs.append((start, i - start))
            start = None
    if start is not None:
        runs.append((start, len(token_ids) - start))
    return runs


def run_positions(runs: list[tuple[int, int]]) -> torch.Tensor:
    """The token positions [P] int64 of `runs` (start, length), in order."""
    parts = [torch.arange(a, a + n) for a, n in runs]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
