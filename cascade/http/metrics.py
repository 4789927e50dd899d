"""Prometheus `/metrics`: the engine's plain counters published at scrape time.

Owns the metric names of API.md § Operations. Invariants:
- nothing here runs per event: the shards keep plain integers
  (`counters.py`, `shard_stats.py`), the dispatcher its own counts, and the
  collector reads them only when Prometheus scrapes;
- the one per-request cost is the middleware's duration histogram, kept as
  plain bucket lists on the event loop thread (a dict lookup, a bisect and
  two additions; `Histogram.observe` would cost ~3 µs);
- a scrape never blocks the event loop: the collector waits on the engine,
  so the text is generated in a thread executor;
- when the engine cannot answer in time (overloaded, stopping) the scrape
  still answers with what it has and `cascade_metrics_engine_up 0`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..domain.channels import CHANNEL_SIGNALS
from ..domain.sequence import SignalOutcome
from ..engine.counters import SEND_COLUMNS, STEP_COLUMNS
from ..engine.shard_stats import LATENESS_BUCKETS

if TYPE_CHECKING:
    from ..delivery.dispatcher import DeliveryDispatcher
    from ..engine.supervisor import Engine

__all__ = ["HTTP_BUCKETS", "HttpMetrics", "SnapshotStats"]

_log = logging.getLogger("cascade.metrics")

# What `generate_latest` writes (prometheus_client >= 0.22 calls 1.0.0 "latest"
# but falls back to this for plain text itself).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
INGEST_RESULTS = SignalOutcome.NAMES
FINISH_OUTCOMES = SEND_COLUMNS[1:]  # stopped, completed, cancelled, failed
_ENGAGEMENT_COLUMNS = frozenset({"delivered", "viewed", "clicked"})

# () -> {"duration_seconds": s, "bytes": n, "last_timestamp_seconds": t, ...} of the
# last snapshot written and the journal (missing keys read as 0); numbers, but
# "fsync_buckets" is a tuple of cumulative (le, count). Wired by durability.
SnapshotStats = Callable[[], Mapping[str, Any]]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _cumulative(counts: list[int], bounds: Iterable[float]) -> list[tuple[str, float]]:
    """Per-bucket counts (last: over the top bound) as Prometheus `le` buckets."""
    out: list[tuple[str, float]] = []
    acc = 0
    for bound, n in zip(bounds, counts):
        acc += n
        out.append((_le(bound), acc))
    out.append(("+Inf", acc + counts[-1]))
    return out


def _le(bound: float) -> str:
    return repr(float(bound))


def _provider_kind(provider: Any) -> str:
    # The label names the kind of provider (log, memory, webhook); a webhook
    # provider's own name is its channel, which is already a label.
    kind = type(provider).__name__.removesuffix("Provider").lower()
    return kind or str(getattr(provider, "name", "unknown"))


class _EngineCollector(Collector):
    def __init__(self, owner: HttpMetrics) -> None:
        self._owner = owner

    def describe(self) -> Iterable[Metric]:
        # Names only, so registering checks for clashes without asking the engine.
        return list(self._owner.families(None, None))

    def collect(self) -> Iterable[Metric]:
        totals, stats = self._owner.read_engine()
        return list(self._owner.families(totals, stats))


class HttpMetrics:
    """The `/metrics` handler, the request-duration middleware and the
    collector behind them, registered on the injected `registry`."""

    def __init__(self, engine: Engine, registry: CollectorRegistry, dispatcher: DeliveryDispatcher | None = None,
                 snapshot_stats: SnapshotStats | None = None, *, engine_timeout_s: float = 10.0,
                 campaign_stats: Callable[[], dict[str, Any]] | None = None) -> None:
        self.engine = engine
        self.campaign_stats = campaign_stats  # CampaignBook.stats, or a cluster node's sum over its partitions
        self.registry = registry
        self.dispatcher = dispatcher
        self.snapshot_stats = snapshot_stats
        self.engine_timeout_s = engine_timeout_s
        # (route, method, status) -> [count per HTTP_BUCKETS bucket..., over the top, sum]
        self._durations: dict[tuple[str, str, str], list[Any]] = {}
        self._provider_labels = {ch: _provider_kind(p) for ch, p in engine.providers.items()}
        # Plain attributes (not methods) so they satisfy http.app's HttpMetrics protocol.
        self.middleware: Any = self._middleware
        self.handler: Handler = self._handler
        registry.register(_EngineCollector(self))

    # -- the request side ----------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Observe `cascade_http_request_duration_seconds`; install it first
        (outermost) so it sees the status the client gets."""
        start = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self.observe_request(request, status, time.perf_counter() - start)

    def observe_request(self, request: web.Request, status: int, seconds: float) -> None:
        resource = request.match_info.route.resource
        self.observe(resource.canonical if resource is not None else "unmatched", request.method, status, seconds)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, str(status))
        row = self._durations.get(key)
        if row is None:
            row = self._durations[key] = [0] * (len(HTTP_BUCKETS) + 1) + [0.0]
        row[bisect_left(HTTP_BUCKETS, seconds)] += 1
        row[-1] += seconds

    async def _handler(self, request: web.Request) -> web.Response:
        """GET /metrics in the Prometheus text format."""
        body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    # -- the scrape side (a worker thread) -------------------------------------
    def read_engine(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
        """Ask every shard for its totals and statistics (blocking: call it off
        the event loop). None for what did not come back in time."""
        try:
            totals_reply = self.engine.totals()
            stats_reply = self.engine.stats()  # both in flight at once
            return totals_reply.wait(self.engine_timeout_s), stats_reply.wait(self.engine_timeout_s)
        except Exception as exc:  # Overloaded, TimeoutError: publish the rest
            _log.warning("metrics scrape without engine figures: %s", exc)
            return None, None

    def families(self, totals: Mapping[str, Any] | None, stats: list[dict[str, Any]] | None) -> Iterator[Metric]:
        yield GaugeMetricFamily("cascade_metrics_engine_up",
                                "1 when the shards answered this scrape in time",
                                value=0 if totals is None or stats is None else 1)
        yield from self._template_families(totals or {})
        yield from self._shard_families(stats or [])
        yield from self._delivery_families(stats or [])
        yield GaugeMetricFamily("cascade_shard_mailbox_depth", "Commands submitted to shards and not yet processed",
                                value=self.engine.pending())
        yield GaugeMetricFamily("cascade_watermark_lag_seconds",
                                "How far the shards' windows trail the clock: the oldest signal not yet applied",
                                value=self.engine.watermark_lag())
        yield GaugeMetricFamily("cascade_event_loop_lag_seconds", "How late the event loop last ran a timer",
                                value=self.engine.loop_lag)
        shed = CounterMetricFamily("cascade_sends_shed", "New sends refused with 503 because the server was behind",
                                   labels=["reason"])
        for reason, n in self.engine.admission.shed_by_reason.items():
            shed.add_metric([reason], n)
        yield shed
        yield CounterMetricFamily("cascade_signals_refused", "Signal-carrying commands refused at the hard bound",
                                  value=self.engine.admission.refused_signals)
        yield from self._snapshot_families()
        yield from self._campaign_families()
        yield self._http_family()

    def _template_families(self, totals: Mapping[str, Any]) -> Iterator[Metric]:
        started = CounterMetricFamily("cascade_sends_started", "Sends started, by template", labels=["template"])
        finished = CounterMetricFamily("cascade_sends_finished", "Sends finished, by template and outcome",
                                       labels=["template", "outcome"])
        signals = CounterMetricFamily(
            "cascade_step_signals",
            "Per-step counts: requested, delivered, viewed, clicked, failed, skipped, stopped, escalated",
            labels=["template", "step", "channel", "signal"])
        for group in sorted(totals):
            if not group.startswith("t:"):
                continue  # campaigns ("c:") have their own API
            template = group[2:]
            sends, rows = totals[group]
            started.add_metric([template], sends[0])
            for k, outcome in enumerate(FINISH_OUTCOMES, start=1):
                if outcome != "throttled" or sends[k]:  # rule 13: a series once a send was throttled
                    finished.add_metric([template, outcome], sends[k])
            for (step, channel), row in sorted(rows.items()):
                emits = CHANNEL_SIGNALS.get(channel, frozenset())
                for column, value in zip(STEP_COLUMNS, row):
                    if column in _ENGAGEMENT_COLUMNS and column not in emits:
                        continue  # push and sms emit no viewed: no always-zero series
                    if column == "deferred" and not value:
                        continue  # quiet hours (rule 12): a series once a step has been deferred
                    signals.add_metric([template, str(step), channel, column], value)
        yield started
        yield finished
        yield signals

    def _shard_families(self, stats: list[dict[str, Any]]) -> Iterator[Metric]:
        yield GaugeMetricFamily("cascade_active_sends", "Sends not finished yet",
                                value=sum(s.get("active", 0) for s in stats))
        yield GaugeMetricFamily("cascade_timers_pending", "Wait-window timers scheduled",
                                value=sum(s.get("timers", 0) for s in stats))
        yield GaugeMetricFamily("cascade_sends_stored", "Sends held in memory, active and retained finished",
                                value=sum(s.get("stored", 0) for s in stats))
        yield GaugeMetricFamily("cascade_recipients", "Recipients held in memory",
                                value=sum(s.get("recipients", 0) for s in stats))
        yield CounterMetricFamily(
            "cascade_signals_refused_closed", "Signal commands refused (503) because they reached the owner "
            "after a window they were in time for had closed (a delayed forward in a cluster)",
            value=sum(s.get("refused_closed", 0) for s in stats))
        counts = [0] * (len(LATENESS_BUCKETS) + 1)
        total = 0.0
        for s in stats:
            for i, n in enumerate(s.get("lateness_counts", ())):
                counts[i] += n
            total += s.get("lateness_sum", 0.0)
        yield HistogramMetricFamily("cascade_timer_lateness_seconds",
                                    "How long after its deadline a wait-window timer fired",
                                    buckets=_cumulative(counts, LATENESS_BUCKETS), sum_value=total)
        results = dict.fromkeys(INGEST_RESULTS, 0)
        for s in stats:
            for (_, outcome), n in s.get("signals", {}).items():
                results[outcome] = results.get(outcome, 0) + n
        ingested = CounterMetricFamily("cascade_events_ingested", "Engagement signals applied to sends, by result",
                                       labels=["result"])
        for result, n in results.items():
            ingested.add_metric([result], n)
        yield ingested

    def _delivery_families(self, stats: list[dict[str, Any]]) -> Iterator[Metric]:
        attempts: dict[tuple[str, str, str], int] = {}
        for s in stats:  # synchronous providers, counted by the shards
            for (channel, outcome), n in s.get("deliveries", {}).items():
                key = (channel, self._provider_labels.get(channel, "unknown"), outcome)
                attempts[key] = attempts.get(key, 0) + n
        in_flight: Mapping[str, int] = {}
        queued: Mapping[str, int] = {}
        if self.dispatcher is not None:  # asynchronous ones, counted by the dispatcher
            dstats = self.dispatcher.stats()
            for (channel, _name, outcome), n in dstats["attempts"].items():
                key = (channel, self._provider_labels.get(channel, _name), outcome)
                attempts[key] = attempts.get(key, 0) + n
            in_flight, queued = dstats["in_flight"], dstats["queued"]
        family = CounterMetricFamily(
            "cascade_delivery_attempts",
            "Messages handed to providers by outcome: ok, failed (after retries), retried (extra attempts)",
            labels=["channel", "provider", "outcome"])
        for key in sorted(attempts):
            family.add_metric(list(key), attempts[key])
        yield family
        running = GaugeMetricFamily("cascade_delivery_in_flight", "Deliveries running, by channel", labels=["channel"])
        waiting = GaugeMetricFamily("cascade_delivery_queued", "Deliveries waiting for a slot, by channel",
                                    labels=["channel"])
        for channel in sorted(in_flight):
            running.add_metric([channel], in_flight[channel])
            waiting.add_metric([channel], queued.get(channel, 0))
        yield running
        yield waiting

    def _snapshot_families(self) -> Iterator[Metric]:
        figures: Mapping[str, Any] = {}
        if self.snapshot_stats is not None:
            try:
                figures = self.snapshot_stats()
            except Exception:
                _log.exception("snapshot statistics failed")
        yield GaugeMetricFamily("cascade_snapshot_duration_seconds", "How long the last snapshot took",
                                value=figures.get("duration_seconds", 0.0))
        yield GaugeMetricFamily("cascade_snapshot_bytes", "Size of the last snapshot",
                                value=figures.get("bytes", 0))
        yield GaugeMetricFamily("cascade_last_snapshot_timestamp_seconds",
                                "Unix time the newest snapshot was last known current: completed, or found "
                                "unchanged by a skipped periodic snapshot (0: neither yet)",
                                value=figures.get("last_timestamp_seconds", 0.0))
        buckets: tuple[tuple[float, int], ...] | None = figures.get("fsync_buckets")
        if buckets:
            yield HistogramMetricFamily(
                "cascade_journal_fsync_duration_seconds", "Time of one journal fdatasync (a group commit)",
                buckets=[(str(le), n) for le, n in buckets[:-1]] + [("+Inf", buckets[-1][1])],
                sum_value=figures.get("fsync_seconds_sum", 0.0))
        yield CounterMetricFamily("cascade_journal_records", "Records appended to the journal since start",
                                  value=figures.get("journal_records", 0))
        yield GaugeMetricFamily("cascade_recovery_duration_seconds", "How long recovery took at start",
                                value=figures.get("recovery_seconds", 0.0))
        yield GaugeMetricFamily("cascade_recovery_records_replayed", "Journal records replayed at start",
                                value=figures.get("recovery_replayed", 0))

    def _campaign_families(self) -> Iterator[Metric]:
        """From the front's own figures (no shard is asked): campaigns by
        status, the progress of those fanning out, and the fan-out rate."""
        stats: dict[str, Any] = self.campaign_stats() if self.campaign_stats is not None else {}
        stats = {"by_status": {}, "running": [], "sends_started_total": 0, "sends_per_s": 0.0, **stats}
        by_status = GaugeMetricFamily("cascade_campaigns", "Campaigns by status", labels=["status"])
        for status, n in stats["by_status"].items():
            by_status.add_metric([status], n)
        yield by_status
        rows = GaugeMetricFamily("cascade_campaign_rows", "Recipients of each running campaign",
                                 labels=["campaign"])
        started = GaugeMetricFamily("cascade_campaign_rows_started",
                                    "Recipients whose send has started, of each running campaign",
                                    labels=["campaign"])
        for cid, n_rows, n_started in stats["running"]:
            rows.add_metric([cid], n_rows)
            started.add_metric([cid], n_started)
        yield rows
        yield started
        yield CounterMetricFamily("cascade_campaign_sends_started", "Sends started by campaign fan-outs",
                                  value=stats["sends_started_total"])
        yield GaugeMetricFamily("cascade_campaign_fanout_sends_per_second",
                                "Campaign sends started per second, over the last 5 seconds",
                                value=stats["sends_per_s"])

    def _http_family(self) -> Metric:
        family = HistogramMetricFamily("cascade_http_request_duration_seconds",
                                       "HTTP request duration by route template, method and status",
                                       labels=["route", "method", "status"])
        # list() copies in one step under the GIL while the loop thread may add keys.
        for (route, method, status), row in sorted(list(self._durations.items())):
            row = list(row)
            family.add_metric([route, method, status], _cumulative(row[:-1], HTTP_BUCKETS), row[-1])
        return family
