"""vLLM general plugin (entry point `vllm.general_plugins`): register the V-Reason model class.

It replaces each supported built-in architecture (keys.ARCHITECTURES) so that stock checkpoints
load into the V-Reason subclass with no extra user flag. A subclass behaves exactly like the
built-in model unless a request asks for V-Reason.
"""

from __future__ import annotations

from vreason.server.keys import ARCHITECTURES


def register() -> None:
    """Idempotent: vLLM calls it once in every process that loads plugins."""
    from vllm import ModelRegistry

    for architecture, cls in ARCHITECTURES.items():
        ModelRegistry.register_model(architecture, f"vreason.server.vllm_ext.model:{cls}")
