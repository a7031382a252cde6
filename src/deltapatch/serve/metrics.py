"""Prometheus series of one server (its own registry, so several apps in one process, as in
tests, never share or clash). Per-patch series carry ``patch="NAME"`` and are dropped when the
patch is removed, so churn of uploads cannot grow the label set without bound.
``deltapatch_requests`` counts every API; ``deltapatch_api_requests`` splits the same count by
``api`` (``v1``: ``/v1/predict``; ``v2``: the Open Inference Protocol)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
APIS = ("v1", "v2")


class ServeMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("deltapatch_requests", "Answered prediction requests per task",
                                ["patch"], registry=r)
        self.api_requests = Counter("deltapatch_api_requests",
                                    "Answered prediction requests per API and task",
                                    ["api", "patch"], registry=r)
        self.latency = Histogram("deltapatch_request_seconds",
                                 "Time from a prediction request's arrival to its answer",
                                 ["patch"], buckets=_LATENCY, registry=r)
        self.errors = Counter("deltapatch_errors", "Requests answered with an error, by status",
                              ["status"], registry=r)
        self.batch_size = Histogram("deltapatch_batch_size", "Requests per batch",
                                    buckets=_SIZES, registry=r)
        self.batch_patches = Histogram("deltapatch_batch_patches",
                                       "Distinct tasks (patches and __base__) per batch",
                                       buckets=_SIZES, registry=r)
        self.forward_seconds = Histogram("deltapatch_batch_seconds", "Compute time per batch",
                                         buckets=_LATENCY, registry=r)
        self.queue_depth = Gauge("deltapatch_queue_depth", "Requests waiting for a batch",
                                 registry=r)
        self.loaded = Gauge("deltapatch_patches_loaded", "Patches the server serves",
                            registry=r)

    def answered(self, names: list[str], seconds: float, api: str = "v1") -> None:
        for n in names:
            self.requests.labels(patch=n).inc()
            self.api_requests.labels(api=api, patch=n).inc()
            self.latency.labels(patch=n).observe(seconds)

    def forget(self, name: str) -> None:
        """Drop a removed patch's series."""
        for metric in (self.requests, self.latency):
            try:
                metric.remove(name)
            except KeyError:
                pass
        for api in APIS:
            try:
                self.api_requests.remove(api, name)
            except KeyError:
                pass

    def text(self) -> bytes:
        return generate_latest(self.registry)
