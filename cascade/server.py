"""`cascade serve`: assemble the parts from `Settings` and run them.

Owns the process lifecycle. Start: clock, providers, the delivery dispatcher
on the server's own event loop, the journal, the engine, `/metrics` on a
fresh registry, the aiohttp app and the listening socket; then recovery
(snapshot + journal), the shards, re-delivery of unanswered messages, and
readiness last. Stop (SIGTERM/SIGINT): stop accepting, let in-flight
requests finish (bounded by `server.shutdown_timeout_s`), drain the
dispatcher (same bound), write a final snapshot, stop the engine (shards
finish what is queued), close the journal, exit 0. A second signal
during the drain exits at once (code 130).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client import CollectorRegistry, ProcessCollector

from .campaigns import attach_campaigns
from .campaigns.desk import LocalDesk
from .config import Settings
from .delivery.dispatcher import DeliveryDispatcher, Job, OnResults
from .delivery.providers.base import Provider
from .delivery.providers.smtp import SmtpProvider
from .delivery.providers.webhook import WebhookProvider
from .delivery.providers.webpush import OnGone, WebPushProvider
from .durability.service import Durability
from .engine import Engine, EngineConfig, LogProvider, ManualClock, MemoryProvider, RealClock, ScaledClock
from .engine.clock import Clock
from .engine.series_file import FILE_NAME, read_series, write_series
from .engine.series_sampler import SeriesSampler, attach_series
from .http.app import GATE_KEY, HOT_KEY, build_app
from .http.acceptor import Acceptor
from .http.lean_door import LeanDoor
from .http.metrics import HttpMetrics
from .logs import request_id_var

__all__ = ["Server", "build_clock", "build_providers", "event_loop_factory", "run_server", "serve"]

_log = logging.getLogger("cascade.server")


def build_clock(settings: Settings) -> Clock:
    mode = settings.clock.mode
    if mode == "manual":
        return ManualClock(start=time.time())  # starts at the real time (API.md § Operations)
    if mode == "scaled":
        return ScaledClock(settings.clock.rate)
    return RealClock()


def build_providers(settings: Settings, on_gone: OnGone | None = None) -> tuple[dict[str, Provider], dict[str, int]]:
    """The provider of each non-inapp channel, and the in-flight bound of each.
    `on_gone` is told of Web Push subscriptions a push service called gone.
    ValueError names a provider key that cannot be used (a VAPID key that
    does not parse)."""
    providers: dict[str, Provider] = {}
    limits: dict[str, int] = {}
    for channel in ("push", "email", "sms"):
        ch = settings.channel(channel)
        if ch.provider == "webhook":
            assert ch.url is not None  # config checked it
            providers[channel] = WebhookProvider(name=channel, url=ch.url, secret=ch.secret, timeout_s=ch.timeout_s,
                                                 max_attempts=ch.max_attempts, max_in_flight=ch.max_in_flight)
        elif ch.provider == "smtp":
            assert ch.host is not None and ch.sender is not None  # config checked them
            providers[channel] = SmtpProvider(channel, ch.host, ch.sender, port=ch.port, tls=ch.tls,
                                              username=ch.username, password=ch.password, timeout_s=ch.timeout_s,
                                              max_attempts=ch.max_attempts, max_connections=ch.max_in_flight)
        elif ch.provider == "webpush":
            assert ch.vapid_private_key is not None and ch.vapid_subject is not None  # config checked them
            try:
                providers[channel] = WebPushProvider(
                    channel, ch.vapid_private_key, ch.vapid_subject, on_gone=on_gone, timeout_s=ch.timeout_s,
                    max_attempts=ch.max_attempts, max_in_flight=ch.max_in_flight)
            except ValueError as exc:
                raise ValueError(f"channels.{channel}.{exc}") from None
        elif ch.provider == "memory":
            providers[channel] = MemoryProvider("memory", record=False)
        else:
            providers[channel] = LogProvider()
        limits[channel] = ch.max_in_flight
    return providers, limits


def config_summary(settings: Settings) -> dict[str, Any]:
    """What the start line says: everything but secrets."""
    channels = {}
    for channel in ("push", "email", "sms"):
        ch = settings.channel(channel)
        if ch.provider == "webhook":
            channels[channel] = f"webhook {ch.url}"
        elif ch.provider == "smtp":
            channels[channel] = f"smtp {ch.host}{f':{ch.port}' if ch.port else ''} ({ch.tls})"
        else:
            channels[channel] = ch.provider
    clock = settings.clock.mode + (f" x{settings.clock.rate:g}" if settings.clock.mode == "scaled" else "")
    keys = settings.auth.api_keys
    return {
        "host": settings.server.host, "port": settings.server.port, "clock": clock,
        "shards": settings.engine.shards, "channels": channels,
        "auth": f"on ({len(keys)} keys)" if keys else "off",
        "inbox_tokens": "on" if settings.auth.inbox_secret else "off",
        "data_dir": settings.storage.data_dir,
    }


class _AccessLogger(AbstractAccessLogger):
    """Request lines, when CASCADE_ACCESS_LOG=1 (off by default: one line a
    request costs more than the request at thousands a second)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        rid = response.headers.get("X-Request-Id") or request.headers.get("X-Request-Id") or request_id_var.get()
        extra: dict[str, Any] = {"event": "request", "method": request.method, "path": request.path,
                                 "status": response.status, "duration_ms": round(time * 1000, 3),
                                 "remote": request.remote}
        if rid:
            extra["request_id"] = rid
        self.logger.info("%s %s %d", request.method, request.path, response.status, extra=extra)


class Server:
    """One running cascade server; `await start()`, then `await stop()`.
    Tests use it in-process: `async with Server(settings) as server: server.url`."""

    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.clock = build_clock(settings)
        self.providers, self._limits = build_providers(settings, on_gone=self._drop_web_push)
        self.ready = asyncio.Event()
        self.dispatcher: DeliveryDispatcher | None = None
        self.engine: Engine | None = None
        self.durability: Durability | None = None
        self.metrics: HttpMetrics | None = None
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._door: LeanDoor | None = None
        self._listener: Acceptor | None = None  # the lean door's socket
        self.port: int | None = None
        self.cluster: Any = None  # cluster.runtime.ClusterRuntime in cluster mode
        self.reuse_port = False  # --workers: every worker listens on the one port

    @property
    def url(self) -> str:
        host = self.settings.server.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _drop_web_push(self, rid: str, endpoints: tuple[str, ...]) -> None:
        """On the delivery loop (the server's): drop gone subscriptions, journaled."""
        engine = self.engine
        if engine is not None:
            await engine.drop_web_push(rid, endpoints)

    def _submit_jobs(self, jobs: list[Job], on_results: OnResults) -> None:
        assert self.dispatcher is not None
        try:
            self.dispatcher.submit(jobs, on_results)
        except RuntimeError:  # stopping: the dispatcher has closed its doors
            _log.warning("delivery has stopped; %d messages were not posted", len(jobs),
                         extra={"event": "delivery_dropped", "messages": len(jobs)})

    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        _log.info("starting cascade", extra={"event": "start", **config_summary(s)})
        if not s.auth.api_keys:
            _log.warning("auth is OFF: no API keys configured, so only loopback (%s) is served; "
                         "configure [auth] api_keys to listen elsewhere", s.server.host,
                         extra={"event": "auth_off"})
        async_providers = {ch: p for ch, p in self.providers.items() if not p.synchronous}
        self.dispatcher = DeliveryDispatcher(async_providers, {ch: self._limits[ch] for ch in async_providers},
                                             loop=loop)
        if s.cluster.enabled:
            await self._start_cluster(loop)
            return
        self.durability = Durability(s.storage.data_dir, s.storage.journal_fsync, s.storage.snapshots_kept,
                                     s.storage.snapshot_interval_s, s.storage.journal_sync_interval_ms / 1000.0)
        self.engine = Engine(self.clock, self.providers, EngineConfig(
            shards=s.engine.shards, retain_finished_s=s.storage.retain_finished_s,
            max_pending_per_shard=s.engine.max_pending_per_shard, tick_interval_s=s.engine.tick_interval_s,
            gc_freeze_interval_s=s.engine.gc_freeze_interval_s, shed_lag_s=s.engine.shed_lag_s),
            submit_jobs=self._submit_jobs, journal=self.durability.journal)
        self.engine.delivery_wait = self.dispatcher.oldest_wait
        self.campaigns = attach_campaigns(self.engine, os.path.join(self.durability.data_dir, "campaigns"),
                                          s.campaigns.max_sends_per_s)
        self.series = self._attach_series(self.engine, self.durability.data_dir)
        try:
            self.metrics = HttpMetrics(self.engine, self.registry, self.dispatcher, self.durability.stats,
                                       campaign_stats=self.campaigns.book.stats)
            ProcessCollector(registry=self.registry)
            self.app = build_app(self.engine, s, ready=self.ready.is_set, metrics=self.metrics,
                                 admin=self.durability, campaigns=LocalDesk(self.engine, self.campaigns.book),
                                 series=self.series)
            await self._listen()
        except BaseException:
            await self._teardown(quick=True)
            raise
        # Listening already, so /healthz answers and /readyz says 503 while the
        # data comes back; the API answers 503 + Retry-After until then.
        try:
            await loop.run_in_executor(None, self.durability.recover, self.engine)
            self.engine.start()
            self.engine.gc.freeze_now()  # what recovery loaded is long-lived: out of the collector's sight
            redriven = await self.engine.redrive()
            if redriven:
                _log.info("handing over again %d messages no provider had answered", redriven,
                          extra={"event": "redrive", "messages": redriven})
            self.durability.start()
        except BaseException:
            await self._teardown(quick=True)
            raise
        self.ready.set()
        _log.info("ready on %s", self.url, extra={"event": "ready", "url": self.url})

    async def _start_cluster(self, loop: asyncio.AbstractEventLoop) -> None:
        """A cluster node (docs/cluster.md): listen first (/healthz, /readyz 503), then join."""
        from .cluster.campaigns import ClusterDesk, node_campaign_stats  # nats-py is the [cluster] extra's
        from .cluster.runtime import ClusterRuntime

        s = self.settings
        self.cluster = runtime = ClusterRuntime(s, self.providers, self._submit_jobs, address="")
        self.clock = runtime.clock
        # The cluster front answers Engine's calls for the whole cluster (cluster/front.py).
        assert self.dispatcher is not None
        runtime.engine.delivery_wait = self.dispatcher.oldest_wait
        engine = cast(Engine, runtime.engine)
        try:
            self.metrics = HttpMetrics(engine, self.registry, self.dispatcher, runtime.stats,
                                       campaign_stats=functools.partial(node_campaign_stats, runtime.engine))
            self.registry.register(runtime.collector())
            ProcessCollector(registry=self.registry)
            desk = ClusterDesk(runtime.engine, os.path.join(s.storage.data_dir, "campaign-uploads"),
                               lambda: runtime.rows_store)
            self.app = build_app(engine, s, ready=self.ready.is_set, metrics=self.metrics, admin=runtime,
                                 campaigns=desk, cluster=runtime.engine)
            await self._listen()
            runtime.node.address = s.cluster.advertise or self.url
            await loop.run_in_executor(None, runtime.start)
        except BaseException:
            await self._teardown(quick=True)
            raise
        self.ready.set()
        _log.info("node %s ready on %s", s.cluster.node, self.url,
                  extra={"event": "ready", "url": self.url, "node": s.cluster.node})

    async def _listen(self) -> None:
        assert self.app is not None
        s = self.settings
        access = os.environ.get("CASCADE_ACCESS_LOG", "").lower() in ("1", "true", "yes", "on")
        self._runner = web.AppRunner(
            self.app, shutdown_timeout=s.server.shutdown_timeout_s, handle_signals=False,
            access_log=logging.getLogger("cascade.access") if access else None,
            access_log_class=_AccessLogger)
        await self._runner.setup()
        if s.server.lean_door and not access:  # the access log is aiohttp's: with it, every request goes there
            assert self._runner.server is not None
            self._door = LeanDoor(self.app, self.app[HOT_KEY], self._runner.server, s.server.max_body_bytes,
                                  self.app[GATE_KEY])
            self._listener = Acceptor.listen(asyncio.get_running_loop(), s.server.host, s.server.port,
                                             s.server.listen_backlog, self.reuse_port, self._door)
            self.port = self._listener.port
            return
        site = web.TCPSite(self._runner, s.server.host, s.server.port, reuse_address=True,
                           reuse_port=self.reuse_port or None, backlog=s.server.listen_backlog)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def _attach_series(self, engine: Engine, data_dir: str) -> SeriesSampler:
        """GET /v1/stats/series, kept in the data dir (series_file.py) and restored from it here."""
        interval = self.settings.server.series_save_interval_s
        series = attach_series(engine, save=lambda data: write_series(data_dir, data), save_interval_s=interval)
        try:
            saved = read_series(data_dir) if interval > 0 else None
            if saved is not None:
                series.restore(saved)
        except (OSError, ValueError) as exc:  # the series is a convenience: start without it, loudly
            _log.warning("stats series not restored from %s: %s", os.path.join(data_dir, FILE_NAME), exc,
                         extra={"event": "series_not_restored"})
        return series

    async def stop(self, reason: str = "stop requested") -> None:
        _log.info("stopping: %s", reason, extra={"event": "stopping", "reason": reason})
        started = time.monotonic()
        clean = await self._teardown(quick=False)
        _log.log(logging.INFO if clean else logging.WARNING, "stopped %s in %.2f s",
                 "cleanly" if clean else "after abandoning deliveries", time.monotonic() - started,
                 extra={"event": "stopped", "clean": clean})

    async def _teardown(self, quick: bool) -> bool:
        """Stop everything; False if deliveries had to be abandoned."""
        clean = True
        self.ready.clear()
        timeout = 1.0 if quick else self.settings.server.shutdown_timeout_s
        if self._listener is not None:
            self._listener.close()  # stop accepting
            self._listener = None
        if self._door is not None:
            await self._door.shutdown(timeout)  # finish the lean door's requests, close its connections
            self._door = None
        if self._runner is not None:
            await self._runner.cleanup()  # stop accepting, finish in-flight requests, close connections
            self._runner = None
        if self.dispatcher is not None:
            pending = self.dispatcher.pending()
            if pending:
                _log.info("waiting up to %g s for %d deliveries in flight", timeout, pending,
                          extra={"event": "draining", "deliveries": pending})
            try:
                await asyncio.wait_for(self.dispatcher.wait_idle(), timeout)
            except asyncio.TimeoutError:
                clean = False
            # Closing drains what came in meanwhile (timers still fire); when the
            # drain already timed out, a zero timeout abandons the rest at once.
            await self.dispatcher.aclose(timeout if clean else 0.0)
        loop = asyncio.get_running_loop()
        if self.cluster is not None:
            cluster, self.cluster = self.cluster, None
            await loop.run_in_executor(None, cluster.stop, not quick)  # drain: hand partitions over
        if self.durability is not None and self.engine is not None and self.engine.started:
            await loop.run_in_executor(None, self.durability.close, not quick)  # final snapshot
        if self.engine is not None:
            engine, self.engine = self.engine, None
            await loop.run_in_executor(None, engine.stop)
        if self.durability is not None:
            await loop.run_in_executor(None, self.durability.close_journal)
            self.durability = None
        return clean


def event_loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    """uvloop's event loop where it can be imported (Linux, macOS: a loop in
    C, cheaper per callback and per socket operation than asyncio's), else
    asyncio's default loop. Answers the factory and what it makes, e.g.
    "uvloop 0.23.0" or "asyncio (uvloop not available: …)"."""
    if sys.platform == "win32":
        return asyncio.new_event_loop, "asyncio (uvloop does not run on Windows)"
    try:
        import uvloop
    except ImportError as exc:
        return asyncio.new_event_loop, f"asyncio (uvloop not available: {exc})"
    return uvloop.new_event_loop, f"uvloop {getattr(uvloop, '__version__', '')}".rstrip()


def serve(settings: Settings) -> None:
    """`cascade serve`: `run_server` on the loop `event_loop_factory` picks."""
    factory, description = event_loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(run_server(settings, loop_description=description))


async def run_server(settings: Settings, *, loop_description: str | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down cleanly."""
    loop = asyncio.get_running_loop()
    kind = type(loop).__module__.partition(".")[0]  # "uvloop" or "asyncio"
    _log.info("event loop: %s", loop_description or kind, extra={"event": "event_loop", "loop": kind})
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        if received:
            _log.error("second %s during shutdown: exiting at once", sig.name, extra={"event": "forced_exit"})
            logging.shutdown()
            os._exit(130)
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    server = Server(settings)
    server.reuse_port = os.environ.get("CASCADE_REUSE_PORT", "").lower() in ("1", "true", "yes", "on")  # --workers
    try:
        await server.start()
        await stop.wait()
        await server.stop(f"received {received[0]}")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
