"""Qwen2.5-VL subclass that records the last layer's inputs for the V-Reason runner."""

from __future__ import annotations

from vllm.config import VllmConfig
from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

from vreason.server.controller import TailWeights

from .capture import LastLayerCapture


class VReasonQwen2_5_VL(Qwen2_5_VLForConditionalGeneration):
    """Same weights, same outputs; plus hooks on layer L and plain weights for its tail."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        layer = self.language_model.model.layers[-1]
        attn = layer.self_attn
        # On CPU vLLM repacks linear weights and frees the plain copies; the tail needs them.
        for linear in (attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj):
            linear._cpu_skip_gemm_dispatch = True
        self.vreason_capture = LastLayerCapture(
            layer_name=attn.attn.layer_name, num_heads=attn.num_heads,
            num_kv_heads=attn.num_kv_heads, head_dim=attn.head_dim, scale=attn.scaling)
        layer.register_forward_pre_hook(self.vreason_capture.on_layer_input, with_kwargs=True)
        attn.attn.register_forward_hook(self.vreason_capture.on_attention, with_kwargs=True)

    def vreason_tail_weights(self) -> TailWeights:
        layer = self.language_model.model.layers[-1]
        vocab = self.config.get_text_config().vocab_size
        return TailWeights(
            o_proj=layer.self_attn.o_proj.weight, post_norm=layer.post_attention_layernorm.weight,
            gate_up=layer.mlp.gate_up_proj.weight, down=layer.mlp.down_proj.weight,
            final_norm=self.language_model.model.norm.weight,
            lm_head=self.language_model.lm_head.weight[:vocab],
            eps=layer.post_attention_layernorm.variance_epsilon)
