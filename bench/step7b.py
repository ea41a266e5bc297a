"""Per-token cost of a V-Reason controlled request at Qwen2.5-VL-7B dimensions.

Random bf16 weights of layer L's tail and lm_head, a bf16 paged KV cache of layer L, 2048 video
tokens in a 4096-token context per row, defaults update_every 2, steps 1, apply now. It times
the work V-Reason adds to one decode step for R controlled rows:

- `new`: the in-forward overlay (server/controller + kernels): layer L's attention reads the
  cached Vn (on CPU this runs next to the stock attention, so it is counted as extra); the
  logits are already controlled; an update adds the hand-written input-gradient backward, the
  fused Adam in the slab and one lean tail forward. Its tail weights are what the server builds
  by default (`serving_tail`: transposed copies for the input gradient where they pay).
- `new-shared`: `new` with --vreason-transposed-tail off (the input gradient reads W itself: on
  CPU one `mv` per row, so R rows read each weight R times).

Each pass is compared with its byte floor = bytes it must move / copy bandwidth, the bandwidth
measured by a large device copy right before and after the timed section (floors use their
mean). A plain 7B decode step's floor (14.14 GB of weights + 56 KB of KV per context token per
row) is the comparison for the per-token overhead. Where GEMMs are compute-bound (a CPU
without native bf16: R rows cost about R times one), the byte floor is not reachable by any
plain step either, so the run also measures a plain step's GEMMs (28 decoder layers' linears and
lm_head, `F.linear` in bf16 on R rows, as vLLM runs them here): a lower bound on a measured plain
step, and the per-token overhead against it. Runs unchanged on CUDA (events not needed: it
synchronises around each timed call).

    .venv/bin/python bench/step7b.py [--impl new new-shared] [--batch 1 4] [--repeats 3] [--device cuda]

Before/after: time an earlier commit's code with this same script, `bash bench/at_commit.sh
COMMIT python3 bench/step7b.py ...` (a git worktree of COMMIT under the `vreason` namespace).
The pre-issue-12 controller (`old` in bench/RESULTS.md) was timed with a frozen copy that was
removed in issue 23; its last version is `bench/step7b.py --impl old` at commit b1fe02c, run in
a worktree of that commit.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch

HIDDEN, HQ, HKV, D, INTER, VOCAB = 3584, 28, 4, 128, 18944, 152064
CONTEXT, VIDEO, VIDEO_START, BLOCK = 4096, 2048, 1024, 16
PLAIN_WEIGHT_BYTES = 14.14e9
KV_BYTES_PER_TOKEN = 28 * 2 * HKV * D * 2  # all layers, K and V, bf16
U = HKV * VIDEO * D * 4  # one fp32 [Hkv, P, D] tensor


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bandwidth(device, nbytes=256 << 20, reps=3) -> float:
    """Copy bandwidth in bytes/s (read + write counted), median of a few large copies."""
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * nbytes / statistics.median(times)


def timed(fn, device, repeats):
    """(median seconds, bandwidth before, bandwidth after) of fn() after one warm-up call."""
    fn()
    bw0 = bandwidth(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), bw0, bandwidth(device)


def make_weights(device):
    """Layer L's tail and lm_head, random bf16, as plain tensors (no transposed copies)."""
    from vreason.server.controller import TailWeights

    g = torch.Generator(device="cpu").manual_seed(0)
    r = lambda *s: (torch.randn(*s, generator=g) * 0.02).to(torch.bfloat16).to(device)  # noqa: E731
    ones = lambda: torch.ones(HIDDEN, dtype=torch.bfloat16, device=device)  # noqa: E731
    return TailWeights(o_proj=r(HIDDEN, HQ * D), post_norm=ones(), gate_up=r(2 * INTER, HIDDEN),
                       down=r(HIDDEN, INTER), final_norm=ones(), lm_head=r(VOCAB, HIDDEN), eps=1e-6)


def plain_gemm_seconds(rows: int, device, repeats: int) -> float:
    """Measured seconds of a plain 7B decode step's GEMMs on R rows: 28 x one decoder layer's
    linears (qkv, o_proj, gate_up, down) + lm_head, bf16 `F.linear`. A lower bound on a plain step
    (no attention, norms or sampling), measured next to the V-Reason passes."""
    import torch.nn.functional as F

    g = torch.Generator(device="cpu").manual_seed(7)
    r = lambda *s: (torch.randn(*s, generator=g) * 0.02).to(torch.bfloat16).to(device)  # noqa: E731
    layer = [r((HQ + 2 * HKV) * D, HIDDEN), r(HIDDEN, HQ * D), r(2 * INTER, HIDDEN), r(HIDDEN, INTER)]
    head = r(VOCAB, HIDDEN)
    xs = {w.shape[1]: r(rows, w.shape[1]) for w in layer}

    def one_layer():
        for w in layer:
            F.linear(xs[w.shape[1]], w)

    t_layer = timed(one_layer, device, repeats)[0]
    t_head = timed(lambda: F.linear(xs[HIDDEN], head), device, repeats)[0]
    return 28 * t_layer + t_head


def weight_bytes(w) -> dict[str, int]:
    b = lambda t: t.numel() * t.element_size()  # noqa: E731
    tail = (w.o_proj, w.post_norm, w.gate_up, w.down, w.final_norm, w.lm_head)
    return {"o_proj": b(w.o_proj), "gate_up": b(w.gate_up), "down": b(w.down), "lm_head": b(w.lm_head),
            "tail": sum(b(t) for t in tail)}


class Batch:
    """R rows: queries, layer L's paged cache, video runs, residual stream, stock logits."""

    def __init__(self, rows: int, w, device):
        from vreason.server.controller import tail_logits

        g = torch.Generator(device="cpu").manual_seed(rows)
        nb = CONTEXT // BLOCK
        self.key = torch.randn(rows * nb, HKV, BLOCK, D, generator=g).to(torch.bfloat16).to(device)
        self.value = torch.randn(rows * nb, HKV, BLOCK, D, generator=g).to(torch.bfloat16).to(device)
        self.block_table = torch.arange(rows * nb, dtype=torch.int32, device=device).view(rows, nb)
        self.seq_lens = torch.full((rows,), CONTEXT, dtype=torch.int32, device=device)
        self.vid_start = torch.full((rows, 1), VIDEO_START, dtype=torch.int32, device=device)
        self.vid_len = torch.full((rows, 1), VIDEO, dtype=torch.int32, device=device)
        self.q = torch.randn(rows, HQ, D, generator=g).to(torch.bfloat16).to(device)
        self.residual = torch.randn(rows, HIDDEN, generator=g).to(device)
        self.o = torch.randn(rows, HQ * D, generator=g).to(device) * 0.1
        self.logits = tail_logits(self.o, self.residual, w)
        self.delta = torch.randn(rows, HKV, VIDEO, D, generator=g).to(device) * 1e-2
        self.rows = rows
        self.scale = D ** -0.5

    def v0(self, r: int) -> torch.Tensor:
        """[Hkv, P, D] cached values of row r at its video positions."""
        nb = CONTEXT // BLOCK
        blocks = self.value[r * nb:(r + 1) * nb].permute(1, 0, 2, 3).reshape(HKV, CONTEXT, D)
        return blocks[:, VIDEO_START:VIDEO_START + VIDEO]


def new_impl(batch: Batch, w, params):
    """The overlay path: layer L's attention reads the slab's Vn; updates use the main forward."""
    from vreason.kernels import controlled_attention
    from vreason.server.controller import ControllerSlab, ControllerState, UpdateInputs, controller_step

    slab = ControllerSlab(batch.rows, VIDEO, HKV, D, torch.bfloat16, batch.q.device)
    states = []
    for r in range(batch.rows):
        s = ControllerState.create(f"r{r}", params, [(VIDEO_START, VIDEO)], slab)
        s.load(batch.v0(r).float())
        s.delta.copy_(batch.delta[r])
        s.vn.copy_(batch.v0(r))
        s.updates = 1
        states.append(s)
    slots = torch.tensor([s.slot for s in states], device=batch.q.device)

    def step(update: bool):
        for s in states:
            s.steps = 1 if update else 2  # the update schedule follows the steps run
        values = slab.vn[slots].permute(0, 2, 1, 3)  # [R, Hkv, P, D]
        o, a = controlled_attention(batch.q, batch.key, batch.value, batch.block_table, batch.seq_lens,
                                    batch.vid_start, batch.vid_len, values, batch.scale)
        upd = None
        if update:
            upd = UpdateInputs(list(range(batch.rows)), o.flatten(1).float(), a, batch.residual)
        logits = batch.logits.clone()  # the main forward's (controlled) logits
        controller_step(states, logits, upd, w).finish()
    return step


def pass_bytes(update: bool, rows: int, wb: dict[str, int], apply: str = "now") -> float:
    """Bytes each pass must move at least (its own floor), bf16 weights, KV of layer L only."""
    kv_l = 2 * CONTEXT * HKV * D * 2  # layer L's keys and values of one row
    attn = rows * (kv_l + U / 2)  # + the controlled values (cached Vn, bf16)
    if not update:
        return attn
    backward = wb["lm_head"] + wb["down"] + 2 * wb["gate_up"] + 2 * wb["o_proj"]  # recompute gate_up, o_proj
    adam = rows * (5 + 4 + 0.5 + 1) * U  # 5 reads, 4 writes fp32, Vn bf16 write, grad_vn
    return attn + backward + (wb["tail"] if apply == "now" else 0) + adam


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impl", nargs="+", default=["new"], choices=["new", "new-shared"])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--apply", default="now", choices=["now", "next"],
                    help="the update's apply mode (next: no tail forward after the update)")
    args = ap.parse_args()
    from vreason.server.controller import VReasonParams, serving_tail

    device = torch.device(args.device)
    params = VReasonParams(apply=args.apply)  # defaults: update_every 2, steps 1 (apply now unless --apply)
    w = make_weights(device)
    wb = weight_bytes(w)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, threads {torch.get_num_threads()}; tail weights "
          f"{wb['tail'] / 1e9:.3f} GB bf16; P={VIDEO}, L={CONTEXT}; apply {args.apply}; repeats {args.repeats}",
          file=sys.stderr)
    lines = ["| impl | rows | pass | measured s | bytes GB | floor s | x floor | copy GB/s before/after |",
             "|---|---|---|---|---|---|---|---|"]
    summary = ["| impl | rows | per-token extra s | plain step floor s | overhead vs plain floor | "
               "extra bytes vs plain | plain GEMMs measured s | overhead vs measured plain GEMMs |",
               "|---|---|---|---|---|---|---|---|"]
    plain_measured = {rows: plain_gemm_seconds(rows, device, args.repeats) for rows in args.batch}
    for impl in args.impl:
        for rows in args.batch:
            batch = Batch(rows, w, device)
            step = new_impl(batch, serving_tail(w, impl == "new"), params)
            res = {}
            for update in (False, True):
                secs, bw0, bw1 = timed(lambda: step(update), device, args.repeats)
                bw = (bw0 + bw1) / 2
                nbytes = pass_bytes(update, rows, wb, args.apply)
                res[update] = (secs, nbytes, bw)
                label = "update" if update else "non-update"
                lines.append(f"| {impl} | {rows} | {label} | {secs:.3f} | {nbytes / 1e9:.3f} | {nbytes / bw:.3f} | "
                             f"{secs / (nbytes / bw):.2f} | {bw0 / 1e9:.1f} / {bw1 / 1e9:.1f} |")
                print(lines[-1], file=sys.stderr, flush=True)
            per_token = (res[False][0] + res[True][0]) / 2
            bw = (res[False][2] + res[True][2]) / 2
            plain = PLAIN_WEIGHT_BYTES + rows * KV_BYTES_PER_TOKEN * CONTEXT
            extra_bytes = (res[False][1] + res[True][1]) / 2
            summary.append(f"| {impl} | {rows} | {per_token:.3f} | {plain / bw:.3f} | "
                           f"+{100 * per_token / (plain / bw):.0f}% | +{100 * extra_bytes / plain:.1f}% | "
                           f"{plain_measured[rows]:.3f} | +{100 * per_token / plain_measured[rows]:.0f}% |")
            del batch, step
    print("\n".join(lines))
    print()
    print("\n".join(summary))
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
