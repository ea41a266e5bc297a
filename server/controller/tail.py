"""The last decoder layer's tail: a lean forward, its hand-written input-gradient backward, and
the plain fp32 autograd reference that both are tested against.

o (attention output, heads concatenated) -> o_proj -> + residual -> post-attention RMSNorm ->
SwiGLU MLP -> + residual -> final RMSNorm -> lm_head -> logits.

The lean path reads every weight in its stored dtype and orientation (no fp32 copy of any
weight, which at 7B in bf16 would be 3 GB per call) with fp32 accumulation and fp32 outputs
(see mm32 for the CPU details). Activations stay fp32; they are rounded to the weight dtype
only as GEMM inputs. Autograd is not used: its backward through bf16 weights is slow on CPU,
and the input gradient needs only `grad @ W` per linear (W read once, stored orientation).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TailWeights:
    """Plain weight tensors of layer L's tail, the final norm and lm_head (read, never written)."""

    o_proj: torch.Tensor  # [hidden, Hq*D]
    post_norm: torch.Tensor  # [hidden]
    gate_up: torch.Tensor  # [2*I, hidden] (gate rows first, then up rows)
    down: torch.Tensor  # [hidden, I]
    final_norm: torch.Tensor  # [hidden]
    lm_head: torch.Tensor  # [vocab, hidden]
    eps: float
    transposed: Transposed | None = None
    """Contiguous W.T copies for the input gradient (see serving_tail); None: read W itself."""

    def transposed_bytes(self) -> int:
        return self.transposed.nbytes() if self.transposed is not None else 0


@dataclass(frozen=True)
class Transposed:
    """Contiguous transposed copies of the tail's linears, read by the input gradient only.

    On a CPU without native bf16 the only fast bf16 GEMM is the forward form x @ W.T over a
    row-major W (see mm32: x @ W as a GEMM is far slower, one `mv` per row reads W once per
    row). With W.T stored contiguously, x @ W is that forward form, so R rows read each weight
    once, not R times.
    Same values as W (a copy, no rounding): the gradient is unchanged.
    """

    o_proj: torch.Tensor  # [Hq*D, hidden]
    gate_up: torch.Tensor  # [hidden, 2*I]
    down: torch.Tensor  # [I, hidden]
    lm_head: torch.Tensor  # [hidden, vocab]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.o_proj, self.gate_up, self.down, self.lm_head))


def wants_transposed(w: TailWeights) -> bool:
    """True where Transposed pays: CPU weights in a reduced precision (bf16/fp16).

    fp32 weights use an fp32 GEMM, which reads W.T at full speed; CUDA GEMMs take the
    transposed view as it is (`torch.mm(out_dtype=fp32)`): neither gains from a copy.
    """
    return w.lm_head.device.type == "cpu" and w.lm_head.dtype in (torch.bfloat16, torch.float16)


def with_transposed(w: TailWeights) -> TailWeights:
    """w plus its Transposed copies (at 7B in bf16: 1.52 GB, the size of the tail itself)."""
    t = lambda x: x.t().contiguous()  # noqa: E731
    return replace(w, transposed=Transposed(t(w.o_proj), t(w.gate_up), t(w.down), t(w.lm_head)))


def serving_tail(w: TailWeights, transposed: bool = True) -> TailWeights:
    """The tail weights a server holds: with Transposed copies where they pay, unless turned off."""
    return with_transposed(w) if transposed and wants_transposed(w) else w


def f32(t: torch.Tensor) -> torch.Tensor:
    """t as fp32: itself when it is fp32 already (a decode step's ops are dispatched one by one on
    the host, so even a no-op cast costs one dispatch there)."""
    return t if t.dtype == torch.float32 else t.float()


def mm32(x: torch.Tensor, w: torch.Tensor, transpose: bool) -> torch.Tensor:
    """x @ w.T (transpose=True, a forward linear) or x @ w (an input gradient), fp32 result.

    w is read in its stored orientation and dtype (never copied); x is rounded to w's dtype.
    - fp32 w: a plain fp32 GEMM.
    - CUDA/ROCm: `torch.mm(out_dtype=fp32)`, fp32 accumulation and output, as vLLM's logits path.
    - CPU, bf16/fp16 w: that overload does not exist there; products accumulate in fp32 and are
      rounded to w's dtype on output (like vLLM's own CPU logits). The forward is `F.linear`,
      as vLLM runs it (oneDNN builds no bf16 matmul on a CPU without native bf16). For x @ w
      the GEMM paths are pathologically slow there (measured on an AVX2 machine: 15-18 s for
      lm_head and 4 rows, against 0.24 s for the forward), while a matrix-vector product over
      the transposed view runs at forward speed, so each row is one `mv` (R rows read w R
      times; TailWeights.transposed avoids that).
    """
    if w.dtype == torch.float32:
        return torch.mm(f32(x), w.t() if transpose else w)
    if w.is_cuda:
        return torch.mm(x.to(w.dtype), w.t() if transpose else w, out_dtype=torch.float32)
    if transpose:
        return F.linear(x.to(w.dtype), w).float()
    wt, x = w.t(), x.to(w.dtype)
    return torch.stack([torch.mv(wt, row) for row in x]).float()


@dataclass
class TailActs:
    """The fp32 activations of one tail forward that its backward needs."""

    h_mid: torch.Tensor  # residual + o_proj(o)
    r1: torch.Tensor  # rsqrt(mean(h_mid^2) + eps), [R, 1]
    gate: torch.Tensor
    up: torch.Tensor
    h_out: torch.Tensor  # h_mid + down(silu(gate) * up)
    r2: torch.Tensor  # rsqrt(mean(h_out^2) + eps), [R, 1]


def _rsqrt_ms(x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def tail_acts(o: torch.Tensor, residual: torch.Tensor, w: TailWeights) -> TailActs:
    """The tail up to (not including) the final norm and lm_head. o: [R, Hq*D], residual: [R, hidden]."""
    h_mid = f32(residual) + mm32(o, w.o_proj, True)
    r1 = _rsqrt_ms(h_mid, w.eps)
    gate, up = mm32(h_mid * r1 * f32(w.post_norm), w.gate_up, True).chunk(2, dim=-1)
    h_out = h_mid + mm32(F.silu(gate) * up, w.down, True)
    return TailActs(h_mid, r1, gate, up, h_out, _rsqrt_ms(h_out, w.eps))


def head_logits(acts: TailActs, w: TailWeights) -> torch.Tensor:
    """Final RMSNorm and lm_head: fp32 logits [R, vocab]."""
    return mm32(acts.h_out * acts.r2 * f32(w.final_norm), w.lm_head, True)


def tail_logits(o: torch.Tensor, residual: torch.Tensor, w: TailWeights) -> torch.Tensor:
    """Lean tail forward: o: [R, Hq*D], residual (stream entering layer L): [R, hidden] -> fp32 logits."""
    return head_logits(tail_acts(o, residual, w), w)


def _rms_norm_backward(g_y: torch.Tensor, x: torch.Tensor, r: torch.Tensor,
                       weight: torch.Tensor) -> torch.Tensor:
    """y = x * r * weight with r = rsqrt(mean(x^2) + eps): dL/dx from dL/dy."""
    u = g_y * f32(weight)
    return r * u - x * (r.pow(3) * (u * x).mean(-1, keepdim=True))


def _grad_mm(g: torch.Tensor, w: TailWeights, name: str) -> torch.Tensor:
    """g @ W for the tail linear `name`: the forward form over its Transposed copy when there is one."""
    if w.transposed is not None:
        return mm32(g, getattr(w.transposed, name), True)
    return mm32(g, getattr(w, name), False)


def tail_input_grad(acts: TailActs, grad_logits: torch.Tensor, w: TailWeights) -> torch.Tensor:
    """dL/do [R, Hq*D] fp32 from dL/dlogits [R, vocab], through the tail whose activations are `acts`."""
    g = _rms_norm_backward(_grad_mm(grad_logits, w, "lm_head"), acts.h_out, acts.r2, w.final_norm)
    g_act = _grad_mm(g, w, "down")
    s = torch.sigmoid(acts.gate)
    silu = acts.gate * s
    g_gate = g_act * acts.up * (s * (1.0 + acts.gate * (1.0 - s)))
    g_x = _grad_mm(torch.cat([g_gate, g_act * silu], dim=-1), w, "gate_up")
    g = g + _rms_norm_backward(g_x, acts.h_mid, acts.r1, w.post_norm)
    return _grad_mm(g, w, "o_proj")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.to(x.dtype)


def tail_reference(o: torch.Tensor, residual: torch.Tensor, w: TailWeights,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The spec: the tail in plain differentiable torch, every tensor cast to `dtype` (tests use
    float64 as ground truth). Slow at 7B (it copies every weight); never on the serving path."""
    c = lambda t: t.to(dtype)  # noqa: E731
    h_mid = c(residual) + F.linear(c(o), c(w.o_proj))
    gate, up = F.linear(rms_norm(h_mid, w.post_norm, w.eps), c(w.gate_up)).chunk(2, dim=-1)
    h_out = h_mid + F.linear(F.silu(gate) * up, c(w.down))
    return F.linear(rms_norm(h_out, w.final_norm, w.eps), c(w.lm_head))
