"""Static contract: the vLLM seams V-Reason overrides still exist with the shapes we rely on.

The runtime counterpart (each seam is actually called while serving) is
tests/e2e/test_vreason_e2e.py::test_overridden_seams_are_called.
"""

from __future__ import annotations

import inspect

import pytest

vllm = pytest.importorskip("vllm")


def test_runner_seams_exist():
    from vllm.v1.worker.gpu_model_runner import ExecuteModelState, GPUModelRunner

    for name in ("load_model", "initialize_kv_cache", "_update_states", "_model_forward", "sample_tokens",
                 "get_model", "_setup_eagle3_aux_hidden_state_outputs"):
        assert callable(getattr(GPUModelRunner, name)), name
    assert "aux_hidden_states" in ExecuteModelState._fields
    assert "logits" in ExecuteModelState._fields and "spec_decode_metadata" in ExecuteModelState._fields
    assert list(inspect.signature(GPUModelRunner.sample_tokens).parameters)[1] == "grammar_output"


def test_worker_seams_exist():
    from vllm.v1.worker.cpu_worker import CPUWorker
    from vllm.v1.worker.gpu_worker import Worker

    assert "init_device" in vars(CPUWorker)
    assert "_make_model_runner" in vars(Worker)


def test_our_classes_override_them():
    from vreason.server.vllm_ext import worker, worker_gpu
    from vreason.server.vllm_ext.runner import VReasonRunnerMixin

    for name in ("load_model", "initialize_kv_cache", "_update_states", "_model_forward", "sample_tokens"):
        assert name in vars(VReasonRunnerMixin)
    assert "init_device" in vars(worker.VReasonCPUWorker)
    assert "_make_model_runner" in vars(worker_gpu.VReasonGPUWorker)
    assert issubclass(worker.VReasonCPUModelRunner, VReasonRunnerMixin)


def test_attention_and_aux_seams_exist():
    """Layer L is observed through its attention impl's forward (called by vLLM's attention op)
    and the EAGLE3 aux hidden-state outputs; no module hooks."""
    from vllm.model_executor.layers.attention import attention
    from vllm.model_executor.models.interfaces import SupportsEagle3, supports_eagle3
    from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration

    src = inspect.getsource(attention.unified_attention_with_output)
    assert "self.impl.forward(" in src
    assert SupportsEagle3 in Qwen2_5_VLForConditionalGeneration.__mro__
    assert supports_eagle3(Qwen2_5_VLForConditionalGeneration)
    for name in ("set_aux_hidden_state_layers", "get_eagle3_default_aux_hidden_state_layers"):
        assert callable(getattr(SupportsEagle3, name)), name
    from vreason.server.vllm_ext.model import VReasonModel, VReasonQwen2_VL

    assert "get_eagle3_default_aux_hidden_state_layers" in vars(VReasonModel)
    # vLLM's Qwen2-VL class lacks the interface; our subclass declares it, and its language model
    # (vLLM's Qwen2Model) is the EAGLE model mixin that emits the aux outputs
    from vllm.model_executor.models.qwen2 import Qwen2Model
    from vllm.model_executor.models.qwen2_vl import Qwen2VLForConditionalGeneration

    assert not supports_eagle3(Qwen2VLForConditionalGeneration) and supports_eagle3(VReasonQwen2_VL)
    assert "_set_aux_hidden_state_layers" in dir(Qwen2Model)


def test_overlay_impl_delegates_and_counts():
    """The wrapper runs the stock impl, then the overlay only when a plan is posted."""
    import torch

    from vreason.server.vllm_ext.overlay import LayerOverlay, OverlayImpl

    class Stock:
        head_size = 4

        def forward(self, layer, query, key, value, kv_cache, attn_metadata, output=None, **kw):
            output.fill_(1.0)
            return output

    overlay = LayerOverlay("layer", 2, 1, 4, 0.5)
    impl = OverlayImpl(Stock(), overlay)
    out = torch.zeros(3, 8)
    impl.forward(None, torch.zeros(3, 2, 4), None, None, None, object(), output=out)
    assert impl.head_size == 4 and torch.equal(out, torch.ones(3, 8))
    assert overlay.calls == {"attention_impl": 1, "overlay_applied": 0}


def test_no_module_hooks_on_the_model():
    from vreason.server.vllm_ext import model

    assert "register_forward_pre_hook" not in inspect.getsource(model)
    assert "register_forward_hook" not in inspect.getsource(model)


def test_plugin_registers_the_model():
    from vllm import ModelRegistry

    from vreason.server.keys import ARCHITECTURES
    from vreason.server.vllm_ext.plugin import register

    register()
    for architecture, name in ARCHITECTURES.items():
        cls = ModelRegistry._try_load_model_cls(architecture)
        assert cls is not None and cls.__name__ == name


def test_full_cuda_graphs_become_piecewise_only_where_vreason_can_run():
    """The overlay runs in Python inside layer L's attention op, which a FULL graph replays
    without Python: the GPU worker asks for PIECEWISE then, and leaves vLLM's choice alone where
    V-Reason was disabled before the engine started."""
    from vllm.config import CUDAGraphMode

    from vreason.server.keys import DISABLED_KEY
    from vreason.server.vllm_ext.worker_gpu import graph_mode

    for mode in (CUDAGraphMode.FULL, CUDAGraphMode.FULL_AND_PIECEWISE, CUDAGraphMode.FULL_DECODE_ONLY):
        assert graph_mode(mode, {}) == CUDAGraphMode.PIECEWISE
        assert graph_mode(mode, None) == CUDAGraphMode.PIECEWISE
        assert graph_mode(mode, {DISABLED_KEY: ["tensor parallelism"]}) == mode
    for mode in (CUDAGraphMode.PIECEWISE, CUDAGraphMode.NONE):
        assert graph_mode(mode, {}) == mode
