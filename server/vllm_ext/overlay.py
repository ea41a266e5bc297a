"""Layer L's attention with the controlled values overlaid, inside vLLM's main forward.

`OverlayImpl` wraps the attention impl object of the model's last decoder layer (an object the
model subclass built: composition, no vLLM class or module is patched). vLLM calls
`impl.forward` from its attention custom op, which it runs outside torch.compile's graphs (and
outside CUDA-graph pieces under PIECEWISE), so the wrapper's Python runs at every step in every
compilation mode. It first runs the stock impl for all rows (which also writes the paged cache),
then, when the runner has posted a plan for this step, for the planned rows:
- copies V0 of requests whose prefill ends in this forward into their slab slot;
- recomputes the last token's attention with the slot's cached Vn at the video positions
  (never writing the paged cache: prefix-cached blocks stay shared);
- overwrites the attention output of rows that carry an offset, so vLLM's own o_proj, MLP,
  norm and lm_head produce the controlled logits;
- keeps the output and the video weights for rows that update at this step.
The plan is input only; what the attention produced (and what failed) comes back as an
`OverlayResult`, which the runner takes after the forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vreason.kernels.controlled_attention import controlled_attention
from vreason.server.controller.step import to_device

from .paged_cache import split_kv


@dataclass(frozen=True)
class OverlayPlan:
    """One step's plan, posted by the runner before the forward and read by the wrapper."""

    rows: torch.Tensor  # [K] int64 batch rows that attend (device)
    slots: torch.Tensor  # [K] int64 slab slots (device)
    vid_start: torch.Tensor  # [K, runs] int32 (device)
    vid_len: torch.Tensor  # [K, runs] int32 (device)
    p_max: int
    overlay: torch.Tensor  # [M] int64 indices into the K rows: replace the stock output (offset rows)
    fresh: torch.Tensor  # [K - M] int64 the other rows (Vn == V0), compared with the stock output on check
    loads: list = field(default_factory=list)  # (state, batch row, positions) to copy V0 for
    attend_states: list = field(default_factory=list)  # the K rows' controller states, in order
    check: bool = False  # compare with the stock output where Vn == V0 (debug/test flag)

    @classmethod
    def for_rows(cls, attend: list, loads: list, device: torch.device, check: bool) -> OverlayPlan:
        """The plan for `attend`, the (batch row, controller state) pairs that attend at layer L:
        each state's slab slot, its controlled-position runs and whether it carries an offset.
        Its index tensors reach the device in one non-blocking copy from pinned memory
        (`to_device`): planning never waits for the device."""
        k, runs = len(attend), max([1] + [len(s.runs) for _, s in attend])
        pad = lambda xs: xs + [0] * (runs - len(xs))  # noqa: E731
        starts = [x for _, s in attend for x in pad([a for a, _ in s.runs])]
        lengths = [x for _, s in attend for x in pad([n for _, n in s.runs])]
        overlay = [j for j, (_, s) in enumerate(attend) if s.has_offset]
        fresh = [j for j, (_, s) in enumerate(attend) if not s.has_offset]
        ids = [i for i, _ in attend] + [s.slot for _, s in attend] + overlay + fresh
        both = to_device(torch.tensor(ids + starts + lengths, dtype=torch.long), device)
        ids_d, spans = both.split([len(ids), 2 * k * runs])
        rows, slots, overlay_d, fresh_d = ids_d.split([k, k, len(overlay), len(fresh)])
        spans = spans.view(2, k, runs).to(torch.int32)
        return cls(rows=rows, slots=slots, vid_start=spans[0], vid_len=spans[1],
                   p_max=max([1] + [s.num_positions for _, s in attend]), overlay=overlay_d, fresh=fresh_d,
                   loads=loads, check=check, attend_states=[s for _, s in attend])


@dataclass
class OverlayResult:
    """What layer L's attention produced for one step's plan, taken by the runner after the forward."""

    last: torch.Tensor | None = None  # [K] token index of each planned row's last query token
    o: torch.Tensor | None = None  # [K, Hq*D] fp32
    a: torch.Tensor | None = None  # [K, Hq, p_max] fp32
    max_error: float = 0.0
    checked: int = 0  # rows compared with the stock output
    failed: dict = field(default_factory=dict)  # index into the K rows -> what its attention raised
    load_failed: list = field(default_factory=list)  # (state, exception) whose V0 copy raised
    error: BaseException | None = None  # what failed for the whole step (the runner fails its controlled rows)


class LayerOverlay:
    """The runner's handle on layer L: the slab, the posted plan and its result, plus call counts."""

    def __init__(self, layer_name: str, num_heads: int, num_kv_heads: int, head_dim: int, scale: float):
        self.layer_name, self.num_heads, self.num_kv_heads = layer_name, num_heads, num_kv_heads
        self.head_dim, self.scale = head_dim, scale
        self.slab = None
        self.plan: OverlayPlan | None = None
        self.result: OverlayResult | None = None
        self.calls = {"attention_impl": 0, "overlay_applied": 0}

    def post(self, plan: OverlayPlan | None) -> None:
        """The plan for the coming forward (None: nothing to overlay)."""
        self.plan, self.result = plan, None

    def take(self) -> OverlayResult | None:
        """After the forward: what the posted plan produced (None if layer L's attention did not
        run it); clears both."""
        result, self.plan, self.result = self.result, None, None
        return result

    def apply(self, plan: OverlayPlan, layer, query, kv_cache, meta, output) -> OverlayResult:
        """Run `plan` on layer L's cache and output. Never raises: what fails is reported in the
        result (`failed`, `load_failed` per request, `error` for the whole step) and the stock
        output of the affected rows stands."""
        self.calls["overlay_applied"] += 1
        result = OverlayResult()
        try:
            self._apply(plan, result, layer, query, kv_cache, meta, output)
        except Exception as e:  # noqa: BLE001 - not one request's (the layout, the plan's index math)
            result.error = e
        return result

    def _apply(self, plan, result, layer, query, kv_cache, meta, output) -> None:
        slab = self.slab
        kv = split_kv(kv_cache, layer.attn_backend.get_name(), getattr(layer, "isa", None))
        for state, row, positions in plan.loads:
            try:  # one request's copy: a failure is that request's alone (the runner fails it)
                state.load(kv.tokens("value", meta.block_table[row], positions).float())
            except Exception as e:  # noqa: BLE001
                result.load_failed.append((state, e))
        if plan.rows.numel() == 0:
            return
        last = (meta.query_start_loc[plan.rows + 1] - 1).long()
        q = query.view(query.shape[0], self.num_heads, self.head_dim)[last]
        seq_lens, table = meta.seq_lens[plan.rows], meta.block_table[plan.rows]
        if kv.strided:
            key_cache, value_cache = kv.key, kv.value
        else:  # a packing the kernels cannot index: the planned rows' blocks, unpacked
            key_cache, value_cache, table = kv.contiguous_rows(table, seq_lens)

        def attend(js):
            values = slab.vn[plan.slots[js], :plan.p_max].permute(0, 2, 1, 3)  # [k, Hkv, P, D]
            return controlled_attention(q[js], key_cache, value_cache, table[js], seq_lens[js],
                                        plan.vid_start[js], plan.vid_len[js], values, self.scale)

        k = plan.rows.numel()
        try:
            o, a = attend(slice(None))
        except Exception:  # noqa: BLE001 - retry one row at a time; the rows that still raise fail
            o = q.new_zeros(q.shape)
            a = torch.zeros(k, self.num_heads, plan.p_max, dtype=torch.float32, device=q.device)
            for j in range(k):
                try:
                    o[j:j + 1], a[j:j + 1] = attend(slice(j, j + 1))
                except Exception as e:  # noqa: BLE001
                    result.failed[j] = e
        out = output.view(output.shape[0], self.num_heads, self.head_dim)
        if plan.check and plan.fresh.numel():
            result.max_error = (o[plan.fresh].float() - out[last[plan.fresh]].float()).abs().max().item()
            result.checked = plan.fresh.numel()
        overlay = plan.overlay
        if result.failed:  # a failed row keeps the stock output (its request is ended by the runner)
            keep = torch.tensor([int(j) not in result.failed for j in overlay.tolist()], dtype=torch.bool)
            overlay = overlay[keep.to(overlay.device)]
        out.index_copy_(0, last[overlay], o[overlay].to(out.dtype))
        result.last, result.o, result.a = last, o.flatten(1).float(), a


class OverlayImpl:
    """Wraps layer L's attention impl; every attribute but `forward` is the wrapped impl's."""

    def __init__(self, inner, overlay: LayerOverlay):
        self.__dict__["inner"] = inner
        self.__dict__["overlay"] = overlay

    def __getattr__(self, name):
        return getattr(self.__dict__["inner"], name)

    def __setattr__(self, name, value):
        setattr(self.__dict__["inner"], name, value)

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output=None, **kwargs):
        result = self.inner.forward(layer, query, key, value, kv_cache, attn_metadata, output=output,
                                    **kwargs)
        overlay = self.overlay
        overlay.calls["attention_impl"] += 1
        if overlay.plan is not None and attn_metadata is not None:
            overlay.result = overlay.apply(overlay.plan, layer, query, kv_cache, attn_metadata, output)
        return result
