"""Start-up support checks on vLLM's own config objects and on the loaded model's modules."""

from __future__ import annotations

import pytest

from vreason.server.engine.support import config_reasons
from vreason.server.vllm_ext.support import model_reasons
from vreason.server.keys import ARCHITECTURES, UNSUPPORTED_ARCHITECTURES


@pytest.fixture(scope="module")
def configs(demo_model):
    from vllm.config import CacheConfig, ModelConfig, ParallelConfig

    return ModelConfig(model=str(demo_model), dtype="float32"), ParallelConfig(), CacheConfig()


def test_stock_configuration_is_supported(configs):
    assert config_reasons(*configs) == ()


@pytest.mark.parametrize("field,value,words", [
    ("tensor_parallel_size", 2, "--tensor-parallel-size 1"),
    ("pipeline_parallel_size", 2, "--pipeline-parallel-size"),
    ("decode_context_parallel_size", 2, "--decode-context-parallel-size"),
])
def test_parallelism_is_refused_with_the_flag_to_change(configs, field, value, words):
    from vllm.config import ParallelConfig

    model, _, cache = configs
    parallel = ParallelConfig()
    object.__setattr__(parallel, field, value)  # as the engine-args path sets it, without spawning ranks
    (reason,) = config_reasons(model, parallel, cache)
    assert words in reason


def test_kv_dtype_lora_and_speculative_decoding_are_refused(configs):
    from vllm.config import CacheConfig, LoRAConfig, SpeculativeConfig

    model, parallel, _ = configs
    (reason,) = config_reasons(model, parallel, CacheConfig(cache_dtype="fp8"))
    assert "--kv-cache-dtype auto" in reason
    (reason,) = config_reasons(model, parallel, CacheConfig(), lora_config=LoRAConfig())
    assert "--enable-lora" in reason

    ngram = SpeculativeConfig(method="ngram", num_speculative_tokens=2, prompt_lookup_max=3, prompt_lookup_min=1,
                              target_model_config=model, target_parallel_config=parallel)
    (reason,) = config_reasons(model, parallel, CacheConfig(), speculative_config=ngram)
    assert "speculative decoding (ngram)" in reason and "--speculative-config" in reason


@pytest.mark.parametrize("arch", [*UNSUPPORTED_ARCHITECTURES, "LlavaOnevisionForConditionalGeneration"])
def test_other_architectures_are_refused(configs, arch):
    model, parallel, cache = configs
    archs = model.hf_config.architectures
    try:
        model.hf_config.architectures = [arch]
        (reason,) = config_reasons(model, parallel, cache)
        model.hf_config.architectures = ["Qwen2VLForConditionalGeneration"]
        assert config_reasons(model, parallel, cache) == ()
    finally:
        model.hf_config.architectures = archs
    assert arch in reason and all(a in reason for a in ARCHITECTURES)
    # The architectures users ask for most say what the tail lacks (the MoE ones: the routed MLP).
    if arch in UNSUPPORTED_ARCHITECTURES:
        assert UNSUPPORTED_ARCHITECTURES[arch] in reason
        assert ("routed" in reason) == ("Moe" in arch)


def test_model_reasons_backend_quantization_and_class():
    import torch
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    class Linear(torch.nn.Module):
        def __init__(self, method):
            super().__init__()
            self.quant_method = method

    class Fp8LinearMethod:  # stands in for any quantised method: only its type name is read
        pass

    plain = {name: Linear(UnquantizedLinearMethod()) for name in ("o_proj", "gate_up_proj", "down_proj")}
    lm_head = torch.nn.Module()  # no quant_method attribute: a plain weight
    ok = {**plain, "lm_head": lm_head}
    assert model_reasons(object(), "CPU_ATTN", ok) == ()
    assert model_reasons(object(), "FLASH_ATTN", ok) == ()
    (reason,) = model_reasons(object(), "FLASHINFER", ok)
    assert "FLASHINFER" in reason and "--attention-backend" in reason
    (reason,) = model_reasons(object(), "CPU_ATTN", {**ok, "down_proj": Linear(Fp8LinearMethod())})
    assert "down_proj (Fp8LinearMethod)" in reason
    (reason,) = model_reasons(torch.nn.Linear(2, 2), "CPU_ATTN", None)
    assert "not the V-Reason subclass" in reason
