"""Prometheus metrics: vLLM-style names people already graph, plus V-Reason's own.

Request-level series are observed by the chat service as responses flow; engine-level ones
(running/waiting requests, KV cache use, controller state) are read from the engine at scrape
time by a custom collector.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

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
        self.registry.register(_EngineCollector(engine, model_name))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    def __init__(self, engine, model_name: str) -> None:
        self.engine, self.model = engine, model_name
        self.step_counts = [0] * (len(STEP_BUCKETS) + 1)
        self.step_sum = 0.0

    def collect(self):
        snap = self.engine.metrics_snapshot() if hasattr(self.engine, "metrics_snapshot") else {}
        lab = [self.model]

        def gauge(name, doc, value):
            g = GaugeMetricFamily(name, doc, labels=["model_name"])
            g.add_metric(lab, float(value))
            return g

        yield gauge("vllm:num_requests_running", "Requests in the engine's running batch", snap.get("num_running", 0))
        yield gauge("vllm:num_requests_waiting", "Requests waiting in the engine", snap.get("num_waiting", 0))
        yield gauge("vllm:kv_cache_usage_perc", "KV cache usage (1 = full)", snap.get("kv_cache_usage", 0.0))
        vr = snap.get("vreason") or {}
        totals = vr.get("totals", {})
        yield gauge("vreason:active_controllers", "Requests holding a V-Reason controller", vr.get("active_slots", 0))
        yield gauge("vreason:controller_memory_bytes", "Bytes of controller state in use",
                    vr.get("controller_bytes", 0))
        for name, key, doc in (("vreason:updates", "updates", "Controller updates applied"),
                               ("vreason:skipped_updates", "skipped_updates", "Updates skipped (non-finite loss)"),
                               ("vreason:controllers_created", "created", "Controllers created")):
            c = CounterMetricFamily(name, doc, labels=["model_name"])
            c.add_metric(lab, float(totals.get(key, 0)))
            yield c
        for s in snap.get("step_seconds", []):
            self.step_sum += s
            self.step_counts[next((i for i, b in enumerate(STEP_BUCKETS) if s <= b), len(STEP_BUCKETS))] += 1
        h = HistogramMetricFamily("vreason:inner_step_seconds", "V-Reason work per engine step",
                                  labels=["model_name"])
        cum, buckets = 0, []
        for b, n in zip([*map(str, STEP_BUCKETS), "+Inf"], self.step_counts):
            cum += n
            buckets.append((b, cum))
        h.add_metric(lab, buckets, self.step_sum)
        yield h
