"""GPU worker with the V-Reason V1 model runner (import only where CUDA vLLM is installed)."""

from __future__ import annotations

from vllm.config import CUDAGraphMode
from vllm.logger import init_logger
from vllm.v1.worker.gpu_model_runner import GPUModelRunner
from vllm.v1.worker.gpu_worker import Worker

from .runner import VReasonRunnerMixin

logger = init_logger("vllm.vreason")


class VReasonGPUModelRunner(VReasonRunnerMixin, GPUModelRunner):
    pass


class VReasonGPUWorker(Worker):
    def _make_model_runner(self):
        if self.use_v2_model_runner:
            raise RuntimeError("V-Reason supports vLLM's V1 model runner only (set VLLM_USE_V2_MODEL_RUNNER=0)")
        cc = self.vllm_config.compilation_config
        if cc.cudagraph_mode.has_full_cudagraphs():
            # A FULL graph replays layer L's attention without running Python, so the overlay
            # (overlay.py) would not run; PIECEWISE keeps attention outside the captured pieces.
            # (A posted plan the forward did not consume fails that step's controlled requests.)
            logger.warning("V-Reason: cudagraph mode %s -> PIECEWISE (the overlay runs in the attention op)",
                           cc.cudagraph_mode.name)
            cc.cudagraph_mode = CUDAGraphMode.PIECEWISE
        return VReasonGPUModelRunner(self.vllm_config, self.device)

    def vreason_stats(self, drain_step_seconds: bool = False) -> dict:
        """collective_rpc target: the runner's `WorkerStats`, as plain types (`WorkerStats.from_dict`)."""
        return self.model_runner.vreason_stats(drain_step_seconds).to_dict()
