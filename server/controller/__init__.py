"""V-Reason's controller: pure torch (no vLLM). See DESIGN section 2 for the method."""

from .objective import SwitchState, entropy, switching_loss
from .params import ParamError, VReasonParams
from .state import ControllerState, state_bytes
from .step import RowInputs, controller_step, needs_attention, pad_values
from .tail import TailWeights, tail_logits
from .values import controlled_values

__all__ = [
    "ControllerState", "ParamError", "RowInputs", "SwitchState", "TailWeights", "VReasonParams",
    "controlled_values", "controller_step", "entropy", "needs_attention", "pad_values",
    "state_bytes", "switching_loss", "tail_logits",
]
