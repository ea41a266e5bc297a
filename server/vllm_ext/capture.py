"""What the runner needs from the last decoder layer's forward, recorded by torch module hooks.

The hooks keep references (no copies) to the tensors of the current forward: the residual
stream entering layer L, the post-rotary queries, the stock attention output, and the
attention metadata (block table, sequence lengths, query start locations) that the backend
itself used. They are read by the runner right after the forward and replaced by the next one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LastLayerCapture:
    layer_name: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scale: float
    residual: torch.Tensor | None = None  # [T, hidden]
    query: torch.Tensor | None = None  # [T, Hq*D]
    attn_out: torch.Tensor | None = None  # [T, Hq*D]
    metadata: object | None = None
    calls: dict[str, int] = field(default_factory=lambda: {"layer_pre_hook": 0, "attention_hook": 0})

    def on_layer_input(self, module, args, kwargs):
        positions, hidden, residual = _layer_args(args, kwargs)
        # The layer's first op is the fused `residual = hidden + residual` of input_layernorm.
        self.residual = hidden if residual is None else hidden + residual
        self.calls["layer_pre_hook"] += 1

    def on_attention(self, module, args, kwargs, output):
        from vllm.forward_context import get_forward_context

        self.query = args[0] if args else kwargs["query"]
        self.attn_out = output
        meta = get_forward_context().attn_metadata
        self.metadata = meta.get(self.layer_name) if isinstance(meta, dict) else meta
        self.calls["attention_hook"] += 1


def _layer_args(args, kwargs):
    names = ("positions", "hidden_states", "residual")
    vals = list(args) + [kwargs.get(n) for n in names[len(args):]]
    return vals[0], vals[1], vals[2]
