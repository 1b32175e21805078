"""``GET /metrics``: the server in Prometheus text format (prometheus-client).

One :class:`ServerMetrics` per app, in a registry of its own (two apps in one process never
share counters). Names are prefixed ``rollout_``:

- ``rollout_inits_total{outcome}``: admitted (``started``), answered from a record
  (``duplicate``), refused (``409``, ``429``, ``503``, ``422``...);
- ``rollout_in_flight{phase}``: rollouts queued, running, delivering (read from the tally);
- ``rollout_results_total{status,finish_reason}`` and ``rollout_results_lost_total``;
- ``rollout_taken_over_total``: rollouts of stopped workers this one took over;
- ``rollout_seconds`` (init to result), ``rollout_llm_call_seconds`` (one chat request,
  retries included), ``rollout_tool_seconds`` (a rollout's tool time): histograms;
- ``rollout_trainer_requests_total{kind}``, ``rollout_trainer_retries_total{kind}``,
  ``rollout_trainer_errors_total{kind,error}``: chat and delivery attempts as they happen.

With ``rollout serve --workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set by the parent,
:mod:`rollout._cli.workers`), every worker writes its figures to that directory and
``/metrics`` on any of them adds up all (prometheus-client's multiprocess mode; the
in-flight gauge sums live workers, refreshed every second by each).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from .._wire.models import RolloutResult
from .phases import Phase, Tally

__all__ = ["CONTENT_TYPE", "ServerMetrics"]

#: The content type of the text format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class ServerMetrics:
    """The counters and histograms of one server; ``tally`` gives the live phase counts,
    ``lost`` the count of results never acknowledged, ``taken_over`` of rollouts taken
    over from stopped workers."""

    def __init__(
        self,
        tally: Callable[[], Tally | None],
        lost: Callable[[], int],
        taken_over: Callable[[], int],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.inits = Counter("rollout_inits", "Inits by outcome", ["outcome"], registry=r)
        self.results = Counter(
            "rollout_results", "Results made", ["status", "finish_reason"], registry=r
        )
        self.rollout_seconds = Histogram(
            "rollout_seconds", "Init to result", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.llm_seconds = Histogram(
            "rollout_llm_call_seconds",
            "One chat request, retries included",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tool_seconds = Histogram(
            "rollout_tool_seconds", "Tool time of one rollout", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.requests = Counter(
            "rollout_trainer_requests", "Attempts at the trainer", ["kind"], registry=r
        )
        self.retries = Counter("rollout_trainer_retries", "Attempts retried", ["kind"], registry=r)
        self.errors = Counter(
            "rollout_trainer_errors", "Failed attempts", ["kind", "error"], registry=r
        )
        self.in_flight = Gauge(
            "rollout_in_flight",
            "Accepted rollouts not yet done, by phase",
            ["phase"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.lost = Counter("rollout_results_lost", "Results never acknowledged", registry=r)
        self.taken_over = Counter(
            "rollout_taken_over", "Rollouts of stopped workers taken over", registry=r
        )
        self._tally, self._lost_now, self._taken_now = tally, lost, taken_over
        self._lost_seen = self._taken_seen = 0

    def observe(self) -> None:
        """Bring the gauges and the counters kept elsewhere up to date."""
        tally = self._tally()
        for phase in (Phase.QUEUED, Phase.RUNNING, Phase.DELIVERING):
            self.in_flight.labels(phase.value).set(0 if tally is None else tally.count(phase))
        lost, taken = self._lost_now(), self._taken_now()
        if lost > self._lost_seen:
            self.lost.inc(lost - self._lost_seen)
        if taken > self._taken_seen:
            self.taken_over.inc(taken - self._taken_seen)
        self._lost_seen, self._taken_seen = lost, taken

    # ------------------------------------------------------------------ trainer client events

    def attempt(self, kind: str) -> None:
        self.requests.labels(kind).inc()

    def retry(self, kind: str) -> None:
        self.retries.labels(kind).inc()

    def failure(self, kind: str, error: str) -> None:
        self.errors.labels(kind, error).inc()

    def chat_seconds(self, seconds: float) -> None:
        self.llm_seconds.observe(seconds)

    # ------------------------------------------------------------------ server events

    def result(self, result: RolloutResult) -> None:
        self.results.labels(result.status.value, result.finish_reason.value).inc()
        self.rollout_seconds.observe(result.metrics.total_latency_ms / 1000)
        self.tool_seconds.observe(result.metrics.tool_latency_ms / 1000)

    async def keep_observing(self, interval: float = 1.0) -> None:
        """:meth:`observe` every ``interval`` seconds, so that the other workers'
        ``/metrics`` see this one's gauges (multiprocess mode); runs until cancelled."""
        while True:
            self.observe()
            await trio.sleep(interval)

    def render(self) -> bytes:
        """The text format: this server's figures, or every worker's in multiprocess mode."""
        self.observe()
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
