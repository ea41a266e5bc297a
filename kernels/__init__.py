"""Kernels for V-Reason: Triton ops with pure-torch references (the spec).

Importable on a CPU-only machine: triton is imported only when a Triton path is taken.
"""

from .controlled_attention import controlled_attention
from .controller_update import controller_update
from .entropy_grad import entropy_grad

__all__ = ["controlled_attention", "controller_update", "entropy_grad"]
