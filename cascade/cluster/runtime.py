"""A node's cluster side as the server runs it: built from `[cluster]`,
started (blocking: connect, join, first ownership round), stopped with a
drain. Also what the admin API and /metrics ask of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..config import Settings
from ..delivery.providers.base import Provider
from ..domain.templates import TemplateRegistry
from ..engine import EngineConfig
from ..engine.arrivals import InFlight
from ..engine.shard import SubmitJobs
from .allowance import ForwardAllowance
from .client import NatsThread
from .clock import ClusterClock
from .front import ClusterEngine, handlers
from .node import Node
from .partition import Partition, PartitionSettings
from .rows_store import RowsStore
from .snapshot_store import SnapshotStore
from .template_store import TemplateStore

__all__ = ["ClusterRuntime"]

log = logging.getLogger("cascade.cluster")


class ClusterRuntime:
    def __init__(self, settings: Settings, providers: Mapping[str, Provider],
                 submit_jobs: SubmitJobs | None, address: str) -> None:
        c = settings.cluster
        clock = ClusterClock(settings.clock.mode, settings.clock.rate)  # the same time on every node
        self.settings, self.clock, self.providers, self.submit_jobs = settings, clock, providers, submit_jobs
        self.registry = TemplateRegistry()
        rate = clock.rate
        # Windows wait for calls on their way from other nodes (rule 11 across nodes).
        self.allowance = ForwardAllowance(forwarding=lambda: self.node.others_alive)
        self.in_flight = InFlight(hold=lambda: clock.now() - self.allowance.seconds() * rate, hand_over=False)
        self.template_store: TemplateStore | None = None
        self.snapshot_store: SnapshotStore | None = None
        self.rows_store: RowsStore | None = None
        self.node = Node(node=c.node, address=c.advertise or address, servers=list(c.nats), partitions=c.partitions,
                         replicas=c.replicas, lease_s=c.lease_s, prefix=c.prefix,
                         partition_settings=self._partition_settings, handlers=handlers(self.in_flight, self._forwarded_signal,
                                                                    lambda t: self.engine.known_template(t)),
                         on_open=self._opened, clock=clock)
        self.engine = ClusterEngine(self.node, clock=clock, providers=providers, templates=self.registry,
                                    in_flight=self.in_flight, wait_owner_s=2 * c.lease_s + 5.0,
                                    shed_lag_s=settings.engine.shed_lag_s)

    def _partition_settings(self, client: NatsThread) -> PartitionSettings:
        s, c = self.settings, self.settings.cluster
        self.template_store = TemplateStore(client, self.registry, bucket=f"{c.prefix}-templates",
                                            replicas=c.replicas).open()
        self.snapshot_store = SnapshotStore(client, bucket=f"{c.prefix}-snapshots", replicas=c.replicas).open()
        self.rows_store = RowsStore(client, bucket=f"{c.prefix}-campaign-rows", replicas=c.replicas).open()
        self.engine.template_store = self.template_store
        self.engine.inbox_relay.attach(client)
        engine = EngineConfig(shards=1, retain_finished_s=s.storage.retain_finished_s,
                              max_pending_per_shard=s.engine.max_pending_per_shard,
                              tick_interval_s=s.engine.tick_interval_s, gc_freeze_interval_s=0.0,
                              shed_lag_s=s.engine.shed_lag_s)
        return PartitionSettings(node=c.node, prefix=c.prefix, replicas=c.replicas, data_dir=s.storage.data_dir,
                                 clock=self.clock, providers=self.providers, engine=engine,
                                 submit_jobs=self.submit_jobs, templates=self.registry, in_flight=self.in_flight,
                                 snapshots=self.snapshot_store, snapshot_interval_s=s.storage.snapshot_interval_s,
                                 reassert_templates=self.template_store.reassert, rows_store=self.rows_store,
                                 background=self.engine.background,
                                 # each partition paces its part: together about the configured rate
                                 campaign_sends_per_s=s.campaigns.max_sends_per_s / c.partitions)

    def _forwarded_signal(self, arrival: float) -> None:
        self.allowance.observe((self.clock.now() - arrival) / self.clock.rate)

    def _opened(self, partition: Partition) -> None:
        self.engine.adopt(partition.engine)
        try:
            redriven = partition.engine.redrive().wait(60.0)
        except Exception:
            log.warning("partition %d: messages no provider had answered were not handed over again",
                        partition.number, exc_info=True)
            return
        if redriven:
            log.info("partition %d: handing over again %d messages no provider had answered", partition.number,
                     redriven, extra={"event": "redrive", "messages": redriven})

    def start(self, first_round_s: float = 60.0) -> ClusterEngine:
        """Join (blocking: call it off the event loop); the engine once the first ownership round is done."""
        self.node.start()
        if not self.node.first_round.wait(first_round_s):
            log.warning("node %s: the first ownership round took over %g s", self.node.id, first_round_s)
        return self.engine

    def stop(self, drain: bool = True) -> None:
        self.node.stop(drain=drain, before_close=self._close_templates)

    def _close_templates(self) -> None:
        if self.template_store is not None:
            self.template_store.close()

    # -- the admin API's snapshot hooks --------------------------------------------------------
    async def snapshot(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        partitions = list(self.node.owned.values())
        began = time.perf_counter()
        taken = await asyncio.gather(*(loop.run_in_executor(None, p.coordinator.take) for p in partitions))
        return {"partitions": [p.number for p in partitions], "sends": sum(t["sends"] for t in taken),
                "bytes": sum(t["bytes"] for t in taken), "seconds": round(time.perf_counter() - began, 3)}

    async def list_snapshots(self) -> list[dict[str, Any]]:
        store = self.snapshot_store
        if store is None:
            return []
        loop = asyncio.get_running_loop()
        out = []
        for p in sorted(self.node.owned):
            positions = await loop.run_in_executor(None, store.positions, p)
            out.append({"partition": p, "journalPositions": positions})
        return out

    def stats(self) -> dict[str, Any]:
        """/metrics' snapshot and journal figures, summed over this node's partitions."""
        partitions = list(self.node.owned.values())
        lasts = [p.coordinator.last for p in partitions if p.coordinator.last is not None]
        return {
            "duration_seconds": max((last["seconds"] for last in lasts), default=0.0),
            "bytes": sum(last["bytes"] for last in lasts),
            "last_timestamp_seconds": min((p.coordinator.current_at or p.opened_at for p in partitions), default=0.0),
            "journal_records": sum(p.journal.stats().records for p in partitions),
            "journal_position": sum(p.position() for p in partitions),
            "recovery_seconds": max((p.recovery.seconds for p in partitions), default=0.0),
            "recovery_replayed": sum(p.recovery.replayed for p in partitions),
        }

    def collector(self) -> Collector:
        return _NodeCollector(self.node, self.allowance)


class _NodeCollector(Collector):
    def __init__(self, node: Node, allowance: ForwardAllowance) -> None:
        self.node, self.allowance = node, allowance

    def collect(self) -> Iterable[Metric]:
        f = self.node.figures
        yield GaugeMetricFamily("cascade_cluster_partitions_owned", "Partitions this node owns and serves",
                                value=len(self.node.owned))
        yield CounterMetricFamily("cascade_cluster_takeovers", "Partitions this node took over (opened)",
                                  value=f.takeovers)
        yield CounterMetricFamily("cascade_cluster_takeover_seconds", "Time spent opening partitions taken over",
                                  value=f.takeover_seconds)
        yield CounterMetricFamily("cascade_cluster_handovers", "Partitions this node handed over", value=f.handovers)
        yield CounterMetricFamily("cascade_cluster_partitions_lost", "Partitions this node lost (fenced, lease lost)",
                                  value=f.lost)
        yield CounterMetricFamily("cascade_cluster_forwarded_calls", "Calls forwarded to other nodes",
                                  value=f.forwarded)
        yield CounterMetricFamily("cascade_cluster_forward_seconds", "Time forwarded calls took, in all",
                                  value=f.forward_seconds)
        yield CounterMetricFamily("cascade_cluster_served_calls", "Calls other nodes forwarded here",
                                  value=f.served)
        yield GaugeMetricFamily("cascade_cluster_forward_allowance_seconds",
                                "How long windows wait for signals on their way from other nodes",
                                value=self.allowance.seconds())
        yield CounterMetricFamily("cascade_cluster_late_forwarded_signals",
                                  "Forwarded signals that arrived after the allowance they met (their window "
                                  "may have closed first)", value=self.allowance.late)
        publish = [p.journal.stats() for p in list(self.node.owned.values())]
        yield GaugeMetricFamily("cascade_cluster_journal_pending_bytes",
                                "Bytes appended and not yet acknowledged by JetStream",
                                value=sum(s.pending_bytes for s in publish))
        if publish:  # a stream journal's fsync figures are its publish round trips (journal_stats.py)
            bounds = [le for le, _ in publish[0].fsync_buckets]
            counts = [sum(s.fsync_buckets[i][1] for s in publish) for i in range(len(bounds))]
            yield HistogramMetricFamily(
                "cascade_cluster_publish_seconds", "JetStream publish round trips of this node's partition journals "
                "(acknowledged by a quorum of replicas)",
                buckets=[(str(le), n) for le, n in zip(bounds[:-1], counts[:-1])] + [("+Inf", counts[-1])],
                sum_value=sum(s.fsync_seconds_sum for s in publish))
