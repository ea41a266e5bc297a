"""Benchmark the V-Reason kernels and one controller inner step at 7B (Qwen2.5-VL-7B) dimensions.

Each kernel is timed against its torch reference and against its memory-bandwidth floor: the
bytes it must move divided by the device copy bandwidth measured in the same run. One inner
step (attention pass, tail forward, input-gradient backward, Adam update) is timed against the
floor of reading layer L's tail weights and lm_head twice in bf16. Needs CUDA; prints one
Markdown table.

    python bench/kernels.py                      # all batches and contexts
    python bench/kernels.py --batch 1 32 --context 4096 --repeats 50
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

HIDDEN, N_HEADS, N_KV, HEAD_DIM = 3584, 28, 4, 128
VOCAB, INTER, VIDEO = 152064, 18944, 2048
BLOCK_SIZE = 16
BF16 = torch.bfloat16
# tensors live here; only a CPU smoke test of the step logic changes it
DEVICE = "cuda"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32], help="controlled rows")
    p.add_argument("--context", type=int, nargs="+", default=[4096, 16384], help="context lengths")
    p.add_argument("--video", type=int, default=VIDEO, help="video tokens per row")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20, help="timed runs; the median is reported")
    p.add_argument("--skip-torch", action="store_true", help="do not time the torch references")
    return p.parse_args(argv)


def time_ms(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    """Median milliseconds of fn over `repeats` runs, each bracketed by CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth(warmup: int, repeats: int) -> float:
    """Bytes per ms of a 1 GiB device-to-device copy (read + write)."""
    src = torch.empty(2**28, dtype=torch.float32, device=DEVICE).normal_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), warmup, repeats)
    return 2 * src.numel() * src.element_size() / ms


@dataclass
class Row:
    name: str
    batch: int
    context: int | None
    triton_ms: float
    torch_ms: float | None
    floor_ms: float

    def markdown(self) -> str:
        ctx = "-" if self.context is None else str(self.context)
        torch_ms = "-" if self.torch_ms is None else f"{self.torch_ms:.3f}"
        speedup = "-" if self.torch_ms is None else f"{self.torch_ms / self.triton_ms:.2f}x"
        return (f"| {self.name} | {self.batch} | {ctx} | {self.triton_ms:.3f} | {torch_ms} | {speedup} "
                f"| {self.floor_ms:.3f} | {self.triton_ms / self.floor_ms:.2f}x |")


def attention_inputs(R: int, context: int, video: int):
    """A paged bf16 cache ([num_blocks, Hkv, block, 2D], split like vLLM) with one video run."""
    n_blocks = -(-context // BLOCK_SIZE)
    kv = torch.randn(R * n_blocks, N_KV, BLOCK_SIZE, 2 * HEAD_DIM, device=DEVICE, dtype=BF16)
    block_table = torch.randperm(R * n_blocks, device=DEVICE, dtype=torch.int32).view(R, n_blocks)
    seq_lens = torch.full((R,), context, dtype=torch.int32, device=DEVICE)
    vid_start = torch.full((R, 1), min(64, context - video), dtype=torch.int32, device=DEVICE)
    vid_len = torch.full((R, 1), video, dtype=torch.int32, device=DEVICE)
    values = torch.randn(R, N_KV, video, HEAD_DIM, device=DEVICE)
    q = torch.randn(R, N_HEADS, HEAD_DIM, device=DEVICE, dtype=BF16)
    return [q, kv[..., :HEAD_DIM], kv[..., HEAD_DIM:], block_table, seq_lens, vid_start, vid_len, values,
            HEAD_DIM**-0.5]


def attention_bytes(R: int, context: int, video: int) -> int:
    keys = R * context * N_KV * HEAD_DIM * 2
    cache_values = R * (context - video) * N_KV * HEAD_DIM * 2
    controlled = R * video * N_KV * HEAD_DIM * 4
    outputs = R * N_HEADS * HEAD_DIM * 2 + R * N_HEADS * video * 4
    return keys + cache_values + controlled + outputs


def update_inputs(R: int, video: int):
    N = R * N_KV * video
    state = [torch.randn(N, HEAD_DIM, device=DEVICE) for _ in range(5)]
    state[2].abs_()
    step = torch.full((N,), 3, dtype=torch.int32, device=DEVICE)
    lr = torch.full((N,), 1e-2, device=DEVICE)
    return state + [step, lr]


class Tail:
    """Layer L after attention (o_proj, residual, RMSNorm, SwiGLU MLP, residual), final norm, lm_head."""

    def __init__(self) -> None:
        def w(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, device=DEVICE, dtype=BF16) * shape[-1] ** -0.5

        self.o_proj, self.gate_up, self.down = w(HIDDEN, HIDDEN), w(2 * INTER, HIDDEN), w(HIDDEN, INTER)
        self.lm_head = w(VOCAB, HIDDEN)
        self.ln = torch.ones(HIDDEN, device=DEVICE, dtype=BF16)
        self.norm = torch.ones(HIDDEN, device=DEVICE, dtype=BF16)

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.o_proj, self.gate_up, self.down, self.lm_head))

    @staticmethod
    def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w

    def __call__(self, o: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        h = residual + F.linear(o, self.o_proj)
        gate, up = F.linear(self.rms_norm(h, self.ln), self.gate_up).chunk(2, dim=-1)
        h = h + F.linear(F.silu(gate) * up, self.down)
        return F.linear(self.rms_norm(h, self.norm), self.lm_head)


def inner_step(backend: str, attn_args: list, upd_state: list, tail: Tail, residual, alpha) -> None:
    from vreason.kernels import controlled_attention, controller_update, entropy_grad

    R, video = attn_args[0].shape[0], attn_args[7].shape[2]
    out, weights = controlled_attention(*attn_args, backend=backend)
    # o = c + sum_i w_i vn_i with the weights fixed: one attention pass serves all inner steps
    w = weights.view(R, N_KV, N_HEADS // N_KV, video)
    vn = attn_args[7]
    c = out.float().view(R, N_KV, -1, HEAD_DIM) - w @ vn
    o = (c + w @ vn).to(BF16).view(R, HIDDEN).requires_grad_()
    with torch.enable_grad():
        logits = tail(o, residual)
        _, grad_logits = entropy_grad(logits.detach(), alpha, backend=backend)
        (grad_o,) = torch.autograd.grad(logits, o, grad_logits.to(logits.dtype))
    grad_vn = w.transpose(-1, -2) @ grad_o.float().view(R, N_KV, -1, HEAD_DIM)
    delta, m, v, v0, _, step, lr = upd_state
    controller_update(delta, m, v, v0, grad_vn.view(-1, HEAD_DIM), step, lr, backend=backend)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/kernels.py needs a CUDA device; none found, nothing measured.")
        return 0
    from vreason.kernels import controlled_attention, controller_update, entropy_grad

    torch.manual_seed(0)
    bw = copy_bandwidth(args.warmup, args.repeats)
    rows: list[Row] = []

    def bench(name, batch, context, fn_triton, fn_torch, n_bytes) -> None:
        t = time_ms(fn_triton, args.warmup, args.repeats)
        r = None if args.skip_torch else time_ms(fn_torch, min(args.warmup, 2), max(3, args.repeats // 4))
        rows.append(Row(name, batch, context, t, r, n_bytes / bw))
        print(rows[-1].markdown(), file=sys.stderr, flush=True)

    tail = Tail()
    for R in args.batch:
        logits = torch.randn(R, VOCAB, device=DEVICE, dtype=BF16) * 3
        alpha = torch.ones(R, device=DEVICE)
        bench("entropy_grad", R, None, lambda: entropy_grad(logits, alpha),
              lambda: entropy_grad(logits, alpha, backend="torch"), R * VOCAB * (2 + 4))
        upd = update_inputs(R, args.video)
        bench("controller_update", R, None, lambda: controller_update(*upd),
              lambda: controller_update(*upd, backend="torch"), upd[0].numel() * 4 * 9)
        residual = torch.randn(R, HIDDEN, device=DEVICE, dtype=BF16)
        for ctx in args.context:
            attn = attention_inputs(R, ctx, args.video)
            bench("controlled_attention", R, ctx, lambda: controlled_attention(*attn),
                  lambda: controlled_attention(*attn, backend="torch"), attention_bytes(R, ctx, args.video))
            upd_step = update_inputs(R, args.video)
            bench("inner step (attn + tail fwd/bwd + update)", R, ctx,
                  lambda: inner_step("auto", attn, upd_step, tail, residual, alpha),
                  lambda: inner_step("torch", attn, upd_step, tail, residual, alpha),
                  2 * tail.weight_bytes())
            del attn
            torch.cuda.empty_cache()

    print(f"\n{torch.cuda.get_device_name()}, copy bandwidth {bw / 1e9:.0f} GB/s (measured), "
          f"median of {args.repeats} runs; floor = bytes that must move / copy bandwidth "
          f"(inner step: tail + lm_head weights read twice, bf16).\n")
    print("| op | batch | context | triton ms | torch ms | speedup | floor ms | triton / floor |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
