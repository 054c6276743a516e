"""Prometheus metrics of the service: requests and their latency by route, patents predicted, the model served."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from patentml.serve.holder import Loaded

#: Latency buckets (seconds): a TF-IDF answer takes milliseconds, a MiniLM batch seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics:
    """The metrics of one app, in a registry of its own (two apps in one process do not collide)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("patentml_http_requests", "HTTP requests by method, route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("patentml_http_request_seconds", "Time to answer a request, by route", ["route"],
                                 buckets=BUCKETS, registry=self.registry)
        self.patents = Counter("patentml_predicted_patents", "Abstracts classified", registry=self.registry)
        self.model = Gauge("patentml_model_info", "The model being served (value 1)", ["model_id", "variant"],
                           registry=self.registry)
        self.reloads = Counter("patentml_model_loads", "Models loaded (start-up and champion changes)",
                               registry=self.registry)
        self.failures = Counter("patentml_model_load_failures", "Failed attempts to load a model",
                                registry=self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def predicted(self, n: int) -> None:
        self.patents.inc(n)

    def swapped(self, old: "Loaded | None", new: "Loaded") -> None:
        if old is not None:
            self.model.remove(old.predictor.model_id, old.predictor.variant)
        self.model.labels(new.predictor.model_id, new.predictor.variant).set(1)
        self.reloads.inc()

    def load_failed(self, error: str) -> None:
        self.failures.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
