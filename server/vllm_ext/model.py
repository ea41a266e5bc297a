"""The V-Reason model classes: one small subclass per supported architecture over one mixin.

Each wraps its last layer's attention impl (the overlay) and asks for the residual stream
entering that layer through vLLM's auxiliary hidden-state outputs (the EAGLE3 mechanism). What
differs between families is only what vLLM's class lacks: Qwen2-VL's does not declare
`SupportsEagle3`, so its subclass does (its language model, vLLM's Qwen2Model, already emits the
aux outputs). Qwen3-VL's class has all of it. The plugin (plugin.py) registers each class for its Hugging Face architecture.
"""

from __future__ import annotations

from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import SupportsEagle3
from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from vllm.model_executor.models.qwen2_vl import Qwen2VLForConditionalGeneration
from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration

from vreason.server.controller import TailWeights

from .lite import LitePruning
from .overlay import LayerOverlay, OverlayImpl


class VReasonModel:
    """Mixed in front of a Qwen-VL class whose language model is a Qwen2 or Qwen3 decoder (layer
    L: grouped-query attention, x * w RMSNorms, a SwiGLU MLP, no output gate): same weights, same
    outputs while no plan is posted; plus plain weights for its tail."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        layer = self.language_model.model.layers[-1]
        attn = layer.self_attn
        # On CPU vLLM repacks linear weights and frees the plain copies; the tail needs them.
        for linear in (attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj):
            linear._cpu_skip_gemm_dispatch = True
        self.vreason_overlay = LayerOverlay(attn.attn.layer_name, attn.num_heads, attn.num_kv_heads,
                                            attn.head_dim, attn.scaling)
        attn.attn.impl = OverlayImpl(attn.attn.impl, self.vreason_overlay)

    def get_eagle3_default_aux_hidden_state_layers(self) -> tuple[int, ...]:
        """vLLM's aux output k is the residual stream entering layer k: we need layer L's."""
        return (len(self.language_model.model.layers) - 1,)

    def vreason_attention_backend(self) -> str:
        """The name of layer L's attention backend (the overlay reads its paged-cache layout)."""
        return self.language_model.model.layers[-1].self_attn.attn.attn_backend.get_name()

    def vreason_tail_modules(self) -> dict:
        """Layer L's tail linears and lm_head: the modules whose weights the controller reads."""
        layer = self.language_model.model.layers[-1]
        return {"o_proj": layer.self_attn.o_proj, "gate_up_proj": layer.mlp.gate_up_proj,
                "down_proj": layer.mlp.down_proj, "lm_head": self.language_model.lm_head}

    def vreason_tail_weights(self) -> TailWeights:
        """The tail as the controller computes it: x * w RMSNorms, SwiGLU MLP, no attention gate."""
        layer = self.language_model.model.layers[-1]
        vocab = self.config.get_text_config().vocab_size
        return TailWeights(
            o_proj=layer.self_attn.o_proj.weight, post_norm=layer.post_attention_layernorm.weight,
            gate_up=layer.mlp.gate_up_proj.weight, down=layer.mlp.down_proj.weight,
            final_norm=self.language_model.model.norm.weight,
            lm_head=self.language_model.lm_head.weight[:vocab],
            eps=layer.post_attention_layernorm.variance_epsilon)


class VReasonQwen2_5_VL(VReasonModel, LitePruning, Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`); prunes video tokens for Lite (lite.py)."""


class VReasonQwen2_VL(VReasonModel, Qwen2VLForConditionalGeneration, SupportsEagle3):
    """Qwen2-VL (`Qwen2VLForConditionalGeneration`); declares the aux-output interface vLLM's
    class leaves out."""


class VReasonQwen3_VL(VReasonModel, Qwen3VLForConditionalGeneration):
    """Qwen3-VL dense (`Qwen3VLForConditionalGeneration`). Its q/k RMSNorms act before layer L's
    attention (the overlay gets the normed, rotated query), and DeepStack adds visual features
    only after the first layers, which the aux residual entering layer L already includes."""
