"""Triton kernels: paged decode attention with a read-time overlay of controlled video values.

One program per (row, kv head, split) serves all G query heads of the group (the grouped-decode
pattern), so each key/value tile is read once per group. Scores are kept in the log2 domain.
The raw scores at video positions go straight into `weights`; once the final log-sum-exp is
known they are turned into probabilities in place. With more than one split (few rows, long
contexts) the partial results are merged by a second, small kernel.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from .._utils import Launch, interpreting, next_power_of_2

# a finite floor for the running max, so that a split with no keys yields m = floor, l = 0
# instead of inf - inf = NaN (a constexpr: Triton's compiler reads no other globals)
_M_FLOOR = tl.constexpr(-1.0e30)

# Triton compiles a variant per specialisation of the int arguments (== 1, a multiple of 16) and
# of pointer alignment. These change from step to step with the batch (run count, video length,
# split count and the strides that follow them) or are vLLM's choice (the block table's width),
# so they are not specialised: serving launches only the variants warm-up compiled.
_PER_STEP = ["n_runs", "P", "S", "stride_btr", "stride_vsr", "stride_vlr", "stride_wr", "stride_wh",
             "stride_pmr", "stride_pmh"]
# pointers read one scalar (or gathered entry) at a time: alignment buys nothing there, and a row
# slice (the overlay's per-row retry) would change it
_GATHERED = ["bt_ptr", "sl_ptr", "vs_ptr", "vl_ptr"]


@triton.jit
def _normalize_weights(
    w_ptr,  # [R, Hq, P] fp32: raw log2 scores in, probabilities out
    vl_ptr,  # [R, max_runs] int32
    i_r,
    o_qh,  # [BLOCK_G] query heads of the group
    m_g,  # [BLOCK_G]
    b_lse,  # [BLOCK_G] log2-sum-exp2 of the scores
    n_runs,
    P,
    stride_wr,
    stride_wh,
    stride_vlr,
    BLOCK_P: tl.constexpr,
):
    n_vid = tl.zeros([], tl.int32)
    for k in range(n_runs):
        n_vid += tl.load(vl_ptr + i_r * stride_vlr + k)
    for start in range(0, P, BLOCK_P):
        o_p = start + tl.arange(0, BLOCK_P)
        p_w = w_ptr + i_r * stride_wr + o_qh[:, None] * stride_wh + o_p[None, :]
        # [BLOCK_G, BLOCK_P]; slots past the row's video length become exp2(-inf) = 0
        b_w = tl.load(p_w, mask=m_g[:, None] & (o_p < n_vid)[None, :], other=float("-inf"))
        tl.store(p_w, tl.exp2(b_w - b_lse[:, None]), mask=m_g[:, None] & (o_p < P)[None, :])


@triton.jit(do_not_specialize=_PER_STEP, do_not_specialize_on_alignment=_GATHERED)
def _controlled_attention_kernel(
    q_ptr,  # [R, Hq, D]
    k_ptr,  # [num_blocks, Hkv, block_size, D], any strides
    v_ptr,  # [num_blocks, Hkv, block_size, D], any strides
    bt_ptr,  # [R, max_blocks] int32
    sl_ptr,  # [R] int32, context length including the current token
    vs_ptr,  # [R, max_runs] int32, video run starts
    vl_ptr,  # [R, max_runs] int32, video run lengths (0 = unused)
    vn_ptr,  # [R, Hkv, P, D], controlled values at video positions (dense order)
    o_ptr,  # [R, Hq, D], written without SPLIT
    w_ptr,  # [R, Hq, P] fp32
    po_ptr,  # [R, Hq, S, D] fp32, unnormalised partial outputs, written with SPLIT
    pm_ptr,  # [R, Hq, S] fp32, partial running max (log2), written with SPLIT
    pl_ptr,  # [R, Hq, S] fp32, partial sum of exp2, written with SPLIT
    scale_log2,
    G,  # query heads per kv head
    n_runs,
    P,
    S,
    stride_qr, stride_qh, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_btr, stride_vsr, stride_vlr,
    stride_nr, stride_nh, stride_np, stride_nd,
    stride_or, stride_oh,
    stride_wr, stride_wh,
    stride_por, stride_poh,
    stride_pmr, stride_pmh,
    D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_P: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    SPLIT: tl.constexpr,
):
    i_r = tl.program_id(0).to(tl.int64)
    i_h = tl.program_id(1).to(tl.int64)
    i_s = tl.program_id(2).to(tl.int64)
    o_g = tl.arange(0, BLOCK_G)
    o_d = tl.arange(0, BLOCK_D)
    m_g = o_g < G
    m_d = o_d < D
    o_qh = i_h * G + o_g

    seq_len = tl.load(sl_ptr + i_r).to(tl.int64)
    tiles = tl.cdiv(tl.cdiv(seq_len, BLOCK_N), S)
    lo = i_s * tiles * BLOCK_N
    hi = tl.minimum(lo + tiles * BLOCK_N, seq_len)

    # [BLOCK_G, BLOCK_D]
    p_q = q_ptr + i_r * stride_qr + o_qh[:, None] * stride_qh + o_d[None, :] * stride_qd
    b_q = tl.load(p_q, mask=m_g[:, None] & m_d[None, :], other=0.0)
    if UPCAST:
        b_q = b_q.to(tl.float32)
    b_m = tl.full([BLOCK_G], _M_FLOOR, tl.float32)
    b_l = tl.zeros([BLOCK_G], tl.float32)
    b_acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        o_n = start + tl.arange(0, BLOCK_N).to(tl.int64)
        m_n = o_n < hi
        b_blk = tl.load(bt_ptr + i_r * stride_btr + o_n // BLOCK_SIZE, mask=m_n, other=0).to(tl.int64)
        o_t = o_n % BLOCK_SIZE
        # dense video index of each position (its rank over the runs in order), -1 elsewhere
        b_idx = tl.full([BLOCK_N], -1, tl.int64)
        base = tl.zeros([], tl.int64)
        for k in range(n_runs):
            run_start = tl.load(vs_ptr + i_r * stride_vsr + k).to(tl.int64)
            run_len = tl.load(vl_ptr + i_r * stride_vlr + k).to(tl.int64)
            hit = (o_n >= run_start) & (o_n < run_start + run_len)
            b_idx = tl.where(hit, base + o_n - run_start, b_idx)
            base += run_len
        m_vid = m_n & (b_idx >= 0) & (b_idx < P)

        # [BLOCK_N, BLOCK_D]
        p_k = k_ptr + b_blk[:, None] * stride_kb + i_h * stride_kh + o_t[:, None] * stride_kt \
            + o_d[None, :] * stride_kd
        b_k = tl.load(p_k, mask=m_n[:, None] & m_d[None, :], other=0.0)
        if UPCAST:
            b_k = b_k.to(tl.float32)
        # [BLOCK_G, BLOCK_N]
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * scale_log2
        b_s = tl.where(m_n[None, :], b_s, float("-inf"))
        p_w = w_ptr + i_r * stride_wr + o_qh[:, None] * stride_wh + b_idx[None, :]
        tl.store(p_w, b_s, mask=m_g[:, None] & m_vid[None, :])

        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        b_alpha = tl.exp2(b_m - b_m_new)
        b_p = tl.exp2(b_s - b_m_new[:, None])
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        b_m = b_m_new

        # values: the cache outside the video, the controlled values inside it
        p_v = v_ptr + b_blk[:, None] * stride_vb + i_h * stride_vh + o_t[:, None] * stride_vt \
            + o_d[None, :] * stride_vd
        p_vn = vn_ptr + i_r * stride_nr + i_h * stride_nh + b_idx[:, None] * stride_np \
            + o_d[None, :] * stride_nd
        if vn_ptr.dtype == v_ptr.dtype:
            # one gather, each row's source picked before the load: a single [BLOCK_N, BLOCK_D]
            # tile in the input dtype, not two loads each widened to fp32 (register pressure)
            b_v = tl.load(tl.where(m_vid[:, None], p_vn, p_v), mask=m_n[:, None] & m_d[None, :], other=0.0)
        else:
            b_v = tl.load(p_v, mask=(m_n & ~m_vid)[:, None] & m_d[None, :], other=0.0)
            b_vn = tl.load(p_vn, mask=m_vid[:, None] & m_d[None, :], other=0.0)
            b_v = tl.where(m_vid[:, None], b_vn, b_v.to(b_vn.dtype))
        b_acc = b_acc * b_alpha[:, None] + tl.dot(b_p, b_v.to(tl.float32), input_precision=PRECISION)

    if not SPLIT:
        # an empty row (seq_len 0) gives l = 0: write zeros rather than 0 / 0
        b_l_safe = tl.where(b_l > 0, b_l, 1.0)
        p_o = o_ptr + i_r * stride_or + o_qh[:, None] * stride_oh + o_d[None, :]
        b_o = b_acc / b_l_safe[:, None]
        tl.store(p_o, b_o.to(o_ptr.dtype.element_ty), mask=m_g[:, None] & m_d[None, :])
        # the raw scores were stored by other threads of this program
        tl.debug_barrier()
        _normalize_weights(w_ptr, vl_ptr, i_r, o_qh, m_g, b_m + tl.log2(b_l_safe), n_runs, P,
                           stride_wr, stride_wh, stride_vlr, BLOCK_P)
    else:
        p_po = po_ptr + i_r * stride_por + o_qh[:, None] * stride_poh + i_s * D + o_d[None, :]
        tl.store(p_po, b_acc, mask=m_g[:, None] & m_d[None, :])
        tl.store(pm_ptr + i_r * stride_pmr + o_qh * stride_pmh + i_s, b_m, mask=m_g)
        tl.store(pl_ptr + i_r * stride_pmr + o_qh * stride_pmh + i_s, b_l, mask=m_g)


@triton.jit(do_not_specialize=_PER_STEP, do_not_specialize_on_alignment=_GATHERED)
def _controlled_attention_combine_kernel(
    po_ptr,  # [R, Hq, S, D] fp32
    pm_ptr,  # [R, Hq, S] fp32
    pl_ptr,  # [R, Hq, S] fp32
    vl_ptr,  # [R, max_runs] int32
    o_ptr,  # [R, Hq, D]
    w_ptr,  # [R, Hq, P] fp32: raw log2 scores in, probabilities out
    G,
    n_runs,
    P,
    S,
    stride_por, stride_poh,
    stride_pmr, stride_pmh,
    stride_vlr,
    stride_or, stride_oh,
    stride_wr, stride_wh,
    D: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    i_r = tl.program_id(0).to(tl.int64)
    i_h = tl.program_id(1).to(tl.int64)
    o_g = tl.arange(0, BLOCK_G)
    o_d = tl.arange(0, BLOCK_D)
    m_g = o_g < G
    m_gd = m_g[:, None] & (o_d < D)[None, :]
    o_qh = i_h * G + o_g

    b_m = tl.full([BLOCK_G], _M_FLOOR, tl.float32)
    b_l = tl.zeros([BLOCK_G], tl.float32)
    b_acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for i_s in range(S):
        b_ms = tl.load(pm_ptr + i_r * stride_pmr + o_qh * stride_pmh + i_s, mask=m_g, other=_M_FLOOR)
        b_ls = tl.load(pl_ptr + i_r * stride_pmr + o_qh * stride_pmh + i_s, mask=m_g, other=0.0)
        p_po = po_ptr + i_r * stride_por + o_qh[:, None] * stride_poh + i_s * D + o_d[None, :]
        b_as = tl.load(p_po, mask=m_gd, other=0.0)
        b_m_new = tl.maximum(b_m, b_ms)
        b_alpha = tl.exp2(b_m - b_m_new)
        b_beta = tl.exp2(b_ms - b_m_new)
        b_l = b_l * b_alpha + b_ls * b_beta
        b_acc = b_acc * b_alpha[:, None] + b_as * b_beta[:, None]
        b_m = b_m_new

    b_l_safe = tl.where(b_l > 0, b_l, 1.0)
    p_o = o_ptr + i_r * stride_or + o_qh[:, None] * stride_oh + o_d[None, :]
    tl.store(p_o, (b_acc / b_l_safe[:, None]).to(o_ptr.dtype.element_ty), mask=m_gd)
    _normalize_weights(w_ptr, vl_ptr, i_r, o_qh, m_g, b_m + tl.log2(b_l_safe), n_runs, P,
                       stride_wr, stride_wh, stride_vlr, BLOCK_P)


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 0 elsewhere (the interpreter: never split)."""
    if device.type != "cuda":
        return 0
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


def _blocks(G: int, D: int, itemsize: int) -> tuple[int, int, int]:
    """(BLOCK_G, BLOCK_D, BLOCK_N). tl.dot wants every dimension >= 16; a key/value tile holds 16 KiB
    (64 positions x 128 dims of bf16, 32 of fp32): larger tiles spill registers (bench/ptxas.py)."""
    BLOCK_D = max(16, next_power_of_2(D))
    return max(16, next_power_of_2(G)), BLOCK_D, max(16, min(64, 16384 // (BLOCK_D * itemsize)))


def split_count(device: torch.device, rows: int, num_kv_heads: int, max_context: int) -> int:
    """Context splits for `rows` rows: more than 1 when (rows x kv heads) programs cannot fill the
    GPU (batch 1 decode), each split at least 256 positions. `max_context` is the block table's
    width times the block size: it bounds the context without a host sync on seq_lens."""
    sms, programs = _sm_count(device), rows * num_kv_heads
    if programs >= sms:
        return 1
    return max(1, min(triton.cdiv(2 * sms, programs), triton.cdiv(max_context, 256), 64))


def controlled_attention_launches(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    vid_start: torch.Tensor,
    vid_len: torch.Tensor,
    values: torch.Tensor,
    scale: float,
    num_splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[Launch]]:
    """The outputs (allocated, not yet written) and the launches that fill them, in order."""
    R, Hq, D = q.shape
    Hkv, block_size = key_cache.shape[1], key_cache.shape[2]
    G = Hq // Hkv
    P = values.shape[2]
    BLOCK_G, BLOCK_D, BLOCK_N = _blocks(G, D, max(q.element_size(), values.element_size()))
    BLOCK_P = 64
    S = num_splits or split_count(q.device, R, Hkv, block_table.shape[1] * block_size)

    out = torch.empty(R, Hq, D, dtype=q.dtype, device=q.device)
    weights = torch.empty(R, Hq, P, dtype=torch.float32, device=q.device)
    if S > 1:
        po = torch.empty(R, Hq, S, D, dtype=torch.float32, device=q.device)
        pm = torch.empty(R, Hq, S, dtype=torch.float32, device=q.device)
        pl = torch.empty(R, Hq, S, dtype=torch.float32, device=q.device)
    else:
        po, pm, pl = out, weights, weights
    # the interpreter's bf16 tl.dot returns garbage (triton 3.8), so it computes in fp32; fp32
    # inputs use exact fp32 products, half inputs keep tensor cores (tf32 only for p @ v)
    upcast = interpreting() or q.dtype == torch.float32
    precision = "ieee" if upcast else "tf32"

    launches = [Launch(_controlled_attention_kernel, (R, Hkv, S), (
        q, key_cache, value_cache, block_table, seq_lens, vid_start, vid_len, values,
        out, weights, po, pm, pl,
        scale * math.log2(math.e), G, vid_start.shape[1], P, S,
        *q.stride(), *key_cache.stride(), *value_cache.stride(),
        block_table.stride(0), vid_start.stride(0), vid_len.stride(0),
        *values.stride(), out.stride(0), out.stride(1), weights.stride(0), weights.stride(1),
        po.stride(0), po.stride(1), pm.stride(0), pm.stride(1),
    ), dict(D=D, BLOCK_SIZE=block_size, BLOCK_G=BLOCK_G, BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N, BLOCK_P=BLOCK_P,
            UPCAST=upcast, PRECISION=precision, SPLIT=S > 1, num_warps=8))]
    if S > 1:
        launches.append(Launch(_controlled_attention_combine_kernel, (R, Hkv), (
            po, pm, pl, vid_len, out, weights, G, vid_len.shape[1], P, S,
            po.stride(0), po.stride(1), pm.stride(0), pm.stride(1), vid_len.stride(0),
            out.stride(0), out.stride(1), weights.stride(0), weights.stride(1),
        ), dict(D=D, BLOCK_G=BLOCK_G, BLOCK_D=BLOCK_D, BLOCK_P=BLOCK_P, num_warps=4)))
    return out, weights, launches


def controlled_attention_triton(*args, num_splits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch on inputs already checked by `vreason.kernels.controlled_attention` (R > 0); the
    arguments of `controlled_attention_launches`."""
    out, weights, launches = controlled_attention_launches(*args, num_splits=num_splits)
    for launch in launches:
        launch()
    return out, weights
