"""vLLM general plugin (entry point `vllm.general_plugins`): register the V-Reason model class.

It replaces the built-in Qwen2.5-VL architecture so that stock checkpoints load into the
subclass with no extra user flag. The subclass behaves exactly like the built-in model unless a
request asks for V-Reason (it only records the last layer's inputs for the runner).
"""

from __future__ import annotations

from vreason.server.keys import ARCHITECTURE

MODEL_CLASS = "vreason.server.vllm_ext.model:VReasonQwen2_5_VL"


def register() -> None:
    """Idempotent: vLLM calls it once in every process that loads plugins."""
    from vllm import ModelRegistry

    ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
