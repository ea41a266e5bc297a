"""GPU worker with the V-Reason V1 model runner (import only where CUDA vLLM is installed)."""

from __future__ import annotations

from vllm.config import CUDAGraphMode
from vllm.logger import init_logger
from vllm.v1.worker.gpu_model_runner import GPUModelRunner
from vllm.v1.worker.gpu_worker import Worker

from vreason.server.keys import DISABLED_KEY

from .runner import VReasonRunnerMixin

logger = init_logger("vllm.vreason")


class VReasonGPUModelRunner(VReasonRunnerMixin, GPUModelRunner):
    pass


def graph_mode(mode: CUDAGraphMode, additional_config: dict | None) -> CUDAGraphMode:
    """The CUDA graph mode to run: PIECEWISE in place of a mode with FULL graphs, unless V-Reason
    was found unable to run on this deployment before the engine started (then vLLM's choice).

    A FULL graph replays layer L's attention without running Python, so the overlay (overlay.py)
    would not run; PIECEWISE keeps attention outside the captured pieces. (A posted plan the
    forward did not consume fails that step's controlled requests.)"""
    if (additional_config or {}).get(DISABLED_KEY) or not mode.has_full_cudagraphs():
        return mode
    return CUDAGraphMode.PIECEWISE


class VReasonGPUWorker(Worker):
    def _make_model_runner(self):
        if self.use_v2_model_runner:
            raise RuntimeError("V-Reason supports vLLM's V1 model runner only (set VLLM_USE_V2_MODEL_RUNNER=0)")
        cc = self.vllm_config.compilation_config
        mode = graph_mode(cc.cudagraph_mode, self.vllm_config.additional_config)
        if mode != cc.cudagraph_mode:
            logger.warning("V-Reason: cudagraph mode %s -> %s (the overlay runs in the attention op)",
                           cc.cudagraph_mode.name, mode.name)
            cc.cudagraph_mode = mode
        return VReasonGPUModelRunner(self.vllm_config, self.device)

    def vreason_stats(self, drain_step_seconds: bool = False) -> dict:
        """collective_rpc target: the runner's `WorkerStats`, as plain types (`WorkerStats.from_dict`)."""
        return self.model_runner.vreason_stats(drain_step_seconds).to_dict()
