"""GPU worker with the V-Reason V1 model runner (import only where CUDA vLLM is installed)."""

from __future__ import annotations

from vllm.v1.worker.gpu_model_runner import GPUModelRunner
from vllm.v1.worker.gpu_worker import Worker

from .runner import VReasonRunnerMixin


class VReasonGPUModelRunner(VReasonRunnerMixin, GPUModelRunner):
    pass


class VReasonGPUWorker(Worker):
    def _make_model_runner(self):
        if self.use_v2_model_runner:
            raise RuntimeError("V-Reason supports vLLM's V1 model runner only (set VLLM_USE_V2_MODEL_RUNNER=0)")
        return VReasonGPUModelRunner(self.vllm_config, self.device)

    def vreason_stats(self) -> dict:
        return self.model_runner.vreason_stats()
