"""`cascade serve --workers N`: N processes behind one address, over a NATS
server the supervisor starts itself, with the API and its durability
promise unchanged; `--workers 1` is today's single process, without NATS.

Real processes: the supervisor is started by pid and its workers' and NATS's
pids are read from its log (one JSON line an event). Every wait is a bounded
poll; every request opens a connection of its own, so the kernel's
SO_REUSEPORT spreads them over the workers.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats_servers import require_nats
from serverproc import ADMIN, ORDER_SHIPPED, eventually, free_port

from cascade.cluster.assign import partition_of_recipient
from cascade.cluster.workers import DEFAULT_PARTITIONS, Restarts, partitions, worker_env
from cascade.config import load_settings

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


def config(data_dir: Path, port: int, extra: str = "") -> str:
    return f"""
[server]
host = "127.0.0.1"
port = {port}
shutdown_timeout_s = 5

[storage]
data_dir = "{data_dir}"

[auth]
api_keys = {{ "k-admin" = "admin" }}

[cluster]
lease_s = 2
""" + extra


class Supervisor:
    """`cascade serve --config ... <args>` as a child process, its log (and its workers') in one file."""

    def __init__(self, tmp_path: Path, *args: str, extra: str = "") -> None:
        self.port = free_port()
        self.data_dir = tmp_path / "data"
        self.base = f"http://127.0.0.1:{self.port}"
        cfg = tmp_path / "cascade.toml"
        cfg.write_text(config(self.data_dir, self.port, extra), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["CASCADE_LOG_FORMAT"] = "json"
        self.log_path = tmp_path / "serve.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "cascade.cli", "serve", "--config", str(cfg), *args],
                                         cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for raw in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict) and line.get("event") == name:
                out.append(line)
        return out

    def worker_pids(self) -> dict[str, int]:
        """Each worker's newest pid."""
        return {e["node"]: e["pid"] for e in self.events("worker_started")}

    def children(self) -> set[int]:
        """Every pid the supervisor said it started (NATS and each worker, restarts included)."""
        return {e["pid"] for e in self.events("worker_started") + self.events("nats_ready")}

    def alive(self) -> None:
        assert self.proc.poll() is None, f"exited with {self.proc.returncode}:\n{self.log_path.read_text()[-4000:]}"

    async def stop(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # its children die with it (PR_SET_PDEATHSIG)
            self.proc.wait(10)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def supervisors() -> Iterator[list[Supervisor]]:
    started: list[Supervisor] = []
    yield started
    for sup in started:
        sup.kill()


def session(base: str) -> aiohttp.ClientSession:
    # A connection a request: each is a new accept, spread over the workers' sockets.
    return aiohttp.ClientSession(base, headers=ADMIN, connector=aiohttp.TCPConnector(force_close=True),
                                 timeout=aiohttp.ClientTimeout(total=20))


async def call(http: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    try:
        async with http.request(method, path, json=body) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text else None)
    except aiohttp.ClientConnectionError:  # a worker dying (or not listening yet)
        return 0, None


async def ok(http: aiohttp.ClientSession, method: str, path: str, body: Any = None, timeout: float = 20.0) -> Any:
    """The answer once it is a 2xx: a restarted worker says 503 until it has joined, like any starting server."""
    async def attempt() -> Any:
        status, answer = await call(http, method, path, body)
        assert status in (0, 200, 201, 202, 503), f"{method} {path}: HTTP {status} {answer}"
        return [answer] if 200 <= status < 300 else None

    return (await eventually(attempt, f"{method} {path}", timeout=timeout, interval=0.05))[0]


async def whole_cluster(sup: Supervisor, http: aiohttp.ClientSession, newer_than: dict[int, int] | None = None,
                        timeout: float = 30.0) -> dict[str, Any]:
    """GET /v1/admin/cluster once w1 and w2 are alive and own every partition between them
    (with epochs above `newer_than`'s: taken over again since)."""
    async def complete() -> dict[str, Any] | None:
        sup.alive()
        status, view = await call(http, "GET", "/v1/admin/cluster")
        if status != 200:
            return None
        nodes = {n["id"]: n for n in view["nodes"]}
        owned = sorted(p for n in nodes.values() for p in n["partitions"])
        if set(nodes) != {"w1", "w2"} or not all(n["alive"] and n["partitions"] for n in nodes.values()):
            return None
        if owned != list(range(DEFAULT_PARTITIONS)):
            return None
        epochs = {e["partition"]: e["epoch"] for e in view["partitions"]}
        if newer_than and any(epochs[p] <= epoch for p, epoch in newer_than.items()):
            return None
        return dict(view)

    return await eventually(complete, "two workers owning every partition", timeout=timeout, interval=0.1)


def recipients_of(view: dict[str, Any], node: str, n: int) -> list[str]:
    """n recipient ids whose sends live in partitions `node` owns."""
    mine = set(next(m for m in view["nodes"] if m["id"] == node)["partitions"])
    found = (f"u{i}" for i in range(100_000) if partition_of_recipient(f"u{i}", DEFAULT_PARTITIONS) in mine)
    return [next(found) for _ in range(n)]


async def test_two_workers_answer_the_api_on_one_address_and_stop_cleanly_on_sigterm(
        tmp_path: Path, supervisors: list[Supervisor]) -> None:
    require_nats()
    sup = Supervisor(tmp_path, "--workers", "2")
    supervisors.append(sup)
    async with session(sup.base) as http:
        view = await whole_cluster(sup, http)
        assert {n["address"] for n in view["nodes"]} == {sup.base}  # both on the one address

        answered_by: set[str] = set()

        async def both_answered() -> bool:
            answered_by.add((await ok(http, "GET", "/v1/admin/cluster"))["node"])
            return answered_by == {"w1", "w2"}

        await eventually(both_answered, "requests on the one port answered by each worker", timeout=10)

        template = await ok(http, "PUT", "/v1/templates/order-shipped", ORDER_SHIPPED)
        assert template["version"] == 1
        sends = {}
        for rid in recipients_of(view, "w1", 3) + recipients_of(view, "w2", 3):
            send = await ok(http, "POST", "/v1/sends", {"template": "order-shipped", "recipient": rid,
                                                        "data": {"order": {"id": rid}}})
            sends[send["id"]] = send
        for _ in range(3):  # read back through whichever worker each connection lands on
            for sid, sent in sends.items():
                got = await ok(http, "GET", f"/v1/sends/{sid}")
                assert (got["id"], got["recipient"], got["template"], got["createdAt"]) == \
                    (sid, sent["recipient"], "order-shipped", sent["createdAt"])
            assert (await ok(http, "GET", "/v1/templates/order-shipped"))["version"] == 1

    # journal_fsync "batch" (the default): JetStream fsyncs every write, as the file journal would
    assert "sync_interval: always" in (sup.data_dir / "nats" / "n1" / "server.conf").read_text(encoding="utf-8")
    pids = sup.children()
    assert len(pids) == 3  # NATS and two workers
    assert await sup.stop() == 0, sup.log_path.read_text()[-4000:]
    assert all(gone(pid) for pid in pids)
    assert sup.events("workers_stopped")[-1]["clean"] is True
    assert [e["code"] for e in sup.events("worker_exited")] == [0, 0]
    assert sup.events("nats_stopped")


async def test_a_worker_killed_with_sigkill_is_restarted_and_what_it_acknowledged_is_still_there(
        tmp_path: Path, supervisors: list[Supervisor]) -> None:
    require_nats()
    sup = Supervisor(tmp_path, "--workers", "2")
    supervisors.append(sup)
    async with session(sup.base) as http:
        view = await whole_cluster(sup, http)
        await ok(http, "PUT", "/v1/templates/order-shipped", ORDER_SHIPPED)
        victims = recipients_of(view, "w1", 4)
        sends = {}
        for rid in victims + recipients_of(view, "w2", 2):
            await ok(http, "PUT", f"/v1/recipients/{rid}", {"pushTokens": [f"tok-{rid}"]})
            send = await ok(http, "POST", "/v1/sends", {"template": "order-shipped", "recipient": rid,
                                                        "data": {"order": {"id": rid}}, "idempotencyKey": rid})
            sends[send["id"]] = send
        w1_epochs = {e["partition"]: e["epoch"] for e in view["partitions"] if e["owner"] == "w1"}

        old = sup.worker_pids()["w1"]
        os.kill(old, signal.SIGKILL)

        async def restarted() -> bool:
            sup.alive()
            return sup.worker_pids()["w1"] != old

        await eventually(restarted, "w1 started again", timeout=15)
        [exited] = sup.events("worker_exited")
        assert (exited["node"], exited["pid"], exited["code"]) == ("w1", old, -signal.SIGKILL)
        assert sup.events("worker_restart")[0]["node"] == "w1"
        await whole_cluster(sup, http, newer_than=w1_epochs)

        for sid, sent in sends.items():  # every acknowledged send, recipient and template survived
            got = await ok(http, "GET", f"/v1/sends/{sid}")
            assert (got["id"], got["recipient"], got["createdAt"], got["status"]) == \
                (sid, sent["recipient"], sent["createdAt"], "active")
        for rid in victims:
            assert (await ok(http, "GET", f"/v1/recipients/{rid}"))["pushTokens"] == [f"tok-{rid}"]
            again = await ok(http, "POST", "/v1/sends", {"template": "order-shipped", "recipient": rid,
                                                         "data": {"order": {"id": rid}}, "idempotencyKey": rid})
            assert again["id"] in sends  # the same key answers the same send: it was kept, not started anew
        assert (await ok(http, "GET", "/v1/templates/order-shipped"))["version"] == 1

    pids = sup.children()
    assert await sup.stop() == 0, sup.log_path.read_text()[-4000:]
    assert all(gone(pid) for pid in pids)


async def test_one_worker_is_the_single_process_server_without_nats(tmp_path: Path,
                                                                      supervisors: list[Supervisor]) -> None:
    sup = Supervisor(tmp_path, "--workers", "1")
    supervisors.append(sup)
    async with session(sup.base) as http:
        async def ready() -> bool:
            sup.alive()
            return (await call(http, "GET", "/readyz"))[0] == 200

        await eventually(ready, "/readyz", timeout=20)
        status, answer = await call(http, "GET", "/v1/admin/cluster")
        assert (status, answer["error"]["code"]) == (404, "not_clustered")
        await ok(http, "PUT", "/v1/templates/order-shipped", ORDER_SHIPPED)
    children = Path(f"/proc/{sup.proc.pid}/task/{sup.proc.pid}/children")
    if children.exists():
        assert children.read_text().split() == []  # no NATS, no workers: the one process serves
    assert not (sup.data_dir / "nats").exists() and (sup.data_dir / "journal").is_dir()
    assert await sup.stop() == 0
    assert not sup.events("workers_start")


async def test_a_worker_that_refuses_its_configuration_stops_everything_with_a_non_zero_exit(
        tmp_path: Path, supervisors: list[Supervisor]) -> None:
    require_nats()
    # Checked only in cluster mode, so the supervisor takes it and every worker refuses it (exit 2):
    # restarting would not help.
    sup = Supervisor(tmp_path, "--workers", "2", extra='advertise = "not a url"\n')
    supervisors.append(sup)
    assert await asyncio.to_thread(sup.proc.wait, 30) == 2
    assert sup.events("workers_giving_up") and not sup.events("worker_restart")
    assert all(gone(pid) for pid in sup.children())


@pytest.mark.parametrize(("args", "extra", "named"), [
    (("--workers", "2"), '\n[cluster]\nnats = ["nats://127.0.0.1:4222"]\nnode = "n1"\n', "cluster.nats"),
    (("--workers", "2", "--clock", "manual"), "", 'clock.mode = "manual"'),
    (("--workers", "2"), "", "single-process server's journal"),
], ids=["cluster-nats", "manual-clock", "single-process-data"])
def test_workers_refuse_a_cluster_nats_a_manual_clock_and_a_single_process_journal(
        tmp_path: Path, args: tuple[str, ...], extra: str, named: str) -> None:
    if "journal" in named:  # what a single-process server left: --workers would not read it
        (tmp_path / "data" / "journal").mkdir(parents=True)
        (tmp_path / "data" / "journal" / "journal-00000000000000000000.log").write_bytes(b"")
    text = config(tmp_path / "data", free_port(), "").replace("[cluster]\nlease_s = 2\n", "") + extra
    (tmp_path / "cascade.toml").write_text(text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run([sys.executable, "-m", "cascade.cli", "serve", "--config", str(tmp_path / "cascade.toml"),
                           *args], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2, done.stderr
    [line] = [json.loads(raw) for raw in done.stderr.splitlines() if '"config_error"' in raw]
    assert line["logger"] == "cascade.workers" and named in line["msg"], line
    assert not (tmp_path / "data" / "nats").exists()


def test_restarts_back_off_and_give_up_at_five_crashes_within_a_minute() -> None:
    restarts = Restarts()
    assert [restarts.crashed(t) for t in (0.0, 1.0, 2.0, 3.0)] == [0.25, 0.5, 1.0, 2.0]
    assert restarts.crashed(4.0) is None
    slow = Restarts()
    assert all(slow.crashed(61.0 * i) == 0.25 for i in range(20))  # one a minute and more: never given up


def test_workers_use_16_partitions_unless_the_configuration_sets_them(tmp_path: Path) -> None:
    plain = tmp_path / "plain.toml"
    plain.write_text("", encoding="utf-8")
    assert partitions(load_settings(plain, environ={}), str(plain), {}) == DEFAULT_PARTITIONS == 16
    assert partitions(load_settings(None, environ={}), None, {}) == 16
    set_in_file = tmp_path / "set.toml"
    set_in_file.write_text("[cluster]\npartitions = 64\n", encoding="utf-8")  # the [cluster] default, but said
    assert partitions(load_settings(set_in_file, environ={}), str(set_in_file), {}) == 64
    env = {"CASCADE_CLUSTER_PARTITIONS": "8"}
    assert partitions(load_settings(None, environ=env), None, env) == 8
    child = worker_env({"PATH": "/bin"}, nats_url="nats://127.0.0.1:1", node="w2", partitions=16,
                       data_dir="/d/w2")
    assert child == {"PATH": "/bin", "CASCADE_CLUSTER_NATS": "nats://127.0.0.1:1", "CASCADE_CLUSTER_NODE": "w2",
                     "CASCADE_CLUSTER_REPLICAS": "1", "CASCADE_CLUSTER_PARTITIONS": "16",
                     "CASCADE_STORAGE_DATA_DIR": "/d/w2", "CASCADE_REUSE_PORT": "1"}
