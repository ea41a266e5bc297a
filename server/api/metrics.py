"""Prometheus metrics: vLLM-style names people already graph, plus V-Reason's own.

Request-level series are observed by the chat service as responses flow; engine-level ones
(running/waiting requests, KV cache use, controller state) are read from the engine at scrape
time by a custom collector, and the inner-step durations the engine gathered since the last
scrape go into a prometheus_client Histogram then.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from vreason.server.messages import WorkerStats

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
STEP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class Metrics:
    def __init__(self, model_name: str, engine) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        r, self.model = self.registry, model_name
        self.success = Counter("vllm:request_success", "Finished requests by finish reason",
                               labels + ["finished_reason"], registry=r)
        self.rejected = Counter("vreason:requests_rejected", "Requests refused before generation, by reason",
                                labels + ["reason"], registry=r)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens processed", labels, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Tokens generated", labels, registry=r)
        self.controlled = Counter("vreason:controlled_requests", "Requests run with V-Reason", labels, registry=r)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token", labels,
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Time between output tokens", labels,
                             buckets=TOKEN_BUCKETS, registry=r)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency", labels,
                             buckets=LATENCY_BUCKETS, registry=r)
        self.inner_step = Histogram("vreason:inner_step_seconds", "V-Reason work per engine step", labels,
                                    buckets=STEP_BUCKETS, registry=r)
        self.inner_step.labels(model_name)  # the series exists (all zero) before the first step
        self.engine = engine
        self._engine_state = _EngineCollector(model_name)
        self.registry.register(self._engine_state)

    async def render(self) -> bytes:
        """Read the engine once (its gauges, controller totals and the inner-step durations since
        the last scrape), then write the Prometheus text exposition."""
        snap = await self.engine.metrics_snapshot() if hasattr(self.engine, "metrics_snapshot") else {}
        for seconds in (snap.get("vreason") or WorkerStats()).step_seconds:
            self.inner_step.labels(self.model).observe(seconds)
        self._engine_state.snap = snap
        return generate_latest(self.registry)


class _EngineCollector:
    """Engine-side gauges and counters from the snapshot `Metrics.render` took for this scrape."""

    def __init__(self, model_name: str) -> None:
        self.model, self.snap = model_name, {}

    def collect(self):
        snap, lab = self.snap, [self.model]

        def gauge(name, doc, value):
            g = GaugeMetricFamily(name, doc, labels=["model_name"])
            g.add_metric(lab, float(value))
            return g

        yield gauge("vllm:num_requests_running", "Requests in the engine's running batch", snap.get("num_running", 0))
        yield gauge("vllm:num_requests_waiting", "Requests waiting in the engine", snap.get("num_waiting", 0))
        yield gauge("vllm:kv_cache_usage_perc", "KV cache usage (1 = full)", snap.get("kv_cache_usage", 0.0))
        vr = snap.get("vreason") or WorkerStats()
        totals = vr.totals
        yield gauge("vreason:active_controllers", "Requests holding a V-Reason controller", vr.active_slots)
        yield gauge("vreason:controller_memory_bytes", "Bytes of controller state in use", vr.controller_bytes)
        for name, key, doc in (("vreason:updates", "updates", "Controller updates applied"),
                               ("vreason:skipped_updates", "skipped_updates", "Updates skipped (non-finite loss)"),
                               ("vreason:controllers_created", "created", "Controllers created"),
                               ("vreason:lite_tokens_pruned", "lite_pruned_tokens",
                                "Video tokens V-Reason Lite pruned before the language model")):
            c = CounterMetricFamily(name, doc, labels=["model_name"])
            c.add_metric(lab, float(totals.get(key, 0)))
            yield c
