"""A vLLM stat logger (the documented StatLoggerBase interface) that keeps the latest scheduler
numbers for /metrics: running and waiting requests, KV cache use."""

from __future__ import annotations


def scheduler_stats_logger(snapshot: dict):
    """A factory for AsyncLLM(stat_loggers=[...]) writing into `snapshot`."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class SchedulerSnapshot(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0):
            self.engine_index = engine_index

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
            if scheduler_stats is not None:
                snapshot[engine_idx] = {"num_running": scheduler_stats.num_running_reqs,
                                        "num_waiting": scheduler_stats.num_waiting_reqs,
                                        "kv_cache_usage": scheduler_stats.kv_cache_usage}

        def log_engine_initialized(self):
            pass

    return SchedulerSnapshot
