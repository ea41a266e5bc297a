"""Worker classes that install the V-Reason model runner (named by dotted path in engine args)."""

from __future__ import annotations

import torch
from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm.v1.worker.cpu_worker import CPUWorker

from .runner import VReasonRunnerMixin


class VReasonCPUModelRunner(VReasonRunnerMixin, CPUModelRunner):
    pass


class VReasonCPUWorker(CPUWorker):
    """CPUWorker builds its runner inside init_device; swap in ours right after."""

    def init_device(self):
        super().init_device()
        if getattr(self, "use_v2_model_runner", False):
            raise RuntimeError("V-Reason supports vLLM's V1 model runner only (set VLLM_USE_V2_MODEL_RUNNER=0)")
        self.model_runner = VReasonCPUModelRunner(self.vllm_config, torch.device("cpu"))

    def vreason_stats(self) -> dict:
        """collective_rpc target: slots in use, controller bytes, totals and seam call counts."""
        return self.model_runner.vreason_stats()
