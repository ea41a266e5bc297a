"""V-Reason's controller: pure torch (no vLLM). See docs/design.md section 2 for the method."""

from .objective import SwitchState, entropy
from .params import ParamError, VReasonParams
from .slab import ControllerSlab
from .state import ControllerState, state_bytes
from .step import StepReport, UpdateInputs, controller_step, group_apply, group_grad
from .tail import (TailWeights, Transposed, serving_tail, tail_acts, tail_input_grad, tail_logits, tail_reference,
                   wants_transposed, with_transposed)
from .values import controlled_values

__all__ = [
    "ControllerSlab", "ControllerState", "ParamError", "StepReport", "SwitchState", "TailWeights",
    "UpdateInputs", "VReasonParams", "controlled_values", "controller_step", "entropy", "group_apply",
    "Transposed", "group_grad", "serving_tail", "state_bytes", "tail_acts", "tail_input_grad", "tail_logits",
    "tail_reference", "wants_transposed", "with_transposed",
]
