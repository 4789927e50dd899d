"""End-to-end benchmark: cascade measured the way users run it.

    .venv/bin/python bench/e2e.py --rate 100 --duration 10
    .venv/bin/python bench/e2e.py --rate 500 --sends 3000
    .venv/bin/python bench/e2e.py --search

Three processes talk over loopback HTTP only:

- `cascade serve` (the `cascade` entry point beside this interpreter) with
  journal_fsync batch, a scaled clock (rate 150, so a 5-minute window lasts
  2 s) and push, email and sms on the `webhook` provider, all pointing at
- the sink (bench/e2e_sink.py), which acts as provider and app: it records
  every webhook arrival and, for the step its recipient engages on, posts a
  single `clicked` event 0.3-1.0 s after the arrival;
- the load generator (bench/e2e_load.py): open-loop `POST /v1/sends` at a
  fixed offered rate, each with an inline recipient and its fate in `data`
  (40% click on step 1, 30% on step 2, 10% on step 3, 20% never).

The template is push → email → sms, each window 2 s with stopCondition
`clicked` (every one of these channels can emit it, and only the
recipient's own reaction stops the chain). After the load, the benchmark
waits until every accepted send must have finished, then checks every
delivery: a send whose recipient clicks step k must get exactly steps 1..k
(one that never clicks, or clicks the terminal step, all 3).

- WRONG: a step after k delivered although the server accepted (2xx,
  accepted 1) the click on step k; a sample of these is looked up on the
  server to tell a click that came after the window closed (it was slow to
  deliver or to ingest) from a click inside the window that did not stop
  the chain (an engine bug);
- MISSING: a step up to k not delivered;
- duplicates: repeated arrivals of one messageId (at-least-once re-posts);
- an escalation after a click that was refused (503) or failed is
  legitimate, and counted apart from the refused events themselves.

Lateness of step 2/3 is its arrival minus (the arrival of the step before +
2 s): timer lateness plus the difference of the two steps' delivery lags
(negative when the step before was delivered later than this one).

A run counts as served correctly when every send and every click was
accepted, nothing is wrong or missing, the p99 lateness is within
`--max-lateness-ms`, and neither client fell behind its own schedule (else
the figures measure the clients). `--search` runs short probes, each on a
fresh server, doubling the rate until one fails and then bisecting, to find
the highest rate served correctly.

By default the server is pinned to CPU 0 and the sink and load generator to
CPU 1 (on 2+ cores), so the server has one core (all a CPython process can
use for this) and the clients do not steal it. /metrics is scraped every
0.5 s during the load, for the peaks of the server's back-pressure and queue
series (whichever it publishes). The CPU other processes used
meanwhile is reported: on a shared machine it disturbs the figures. Prints
tables, then as the last line one JSON object with every figure.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py would shadow the standard library's `http`, which aiohttp
# imports: drop this directory from the front of sys.path, put it at the end
# so that benchlib stays importable.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.append(str(Path(__file__).resolve().parent))

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from collections import Counter
from datetime import datetime
from typing import Any

import aiohttp

from benchlib import cpu_seconds, free_port, peak_rss_mb, percentile, wait_ready
from e2e_common import TEMPLATE
from e2e_servers import Servers

BENCH = Path(__file__).resolve().parent
CLOCK_RATE = 150.0
WAIT_MINUTES = 5
WINDOW_S = WAIT_MINUTES * 60 / CLOCK_RATE  # 2 s of real time
STEPS = 3
CHANNELS = ("push", "email", "sms")
# Rendered into each webhook body from the send's data: the sink's instructions.
CONTENT = {"title": "e2e", "engageAt": "{{engageAt}}", "delayMs": "{{delayMs}}"}
SEQUENCE = {
    "name": "e2e push, email, sms",
    "channels": [
        {"channel": "push", "stopCondition": "clicked", "waitMinutes": WAIT_MINUTES, "content": CONTENT},
        {"channel": "email", "stopCondition": "clicked", "waitMinutes": WAIT_MINUTES, "content": CONTENT},
        {"channel": "sms", "content": CONTENT},
    ],
    "config": {"sequenceEnabled": True},
}
# A client this far behind its own schedule (p99) is saturated itself.
CLIENT_LAG_MS = 50.0
# CPU seconds other processes may use during a run before its figures are called disturbed.
NOISE_CPU_S = 1.0
# /metrics series worth showing: back-pressure figures (those the server has),
# queues, delivery outcomes and the interpreter's own statement.
SHOWN_METRICS = re.compile(r"watermark|(^|_)shed|refused|loop_lag|mailbox_depth|delivery_queued"
                           r"|cascade_delivery_attempts_total|python_info|journal_fsync_duration_seconds_(count|sum)"
                           r"|timer_lateness_seconds_bucket|request_duration_seconds_bucket.*/v1/events\"")  # clock seconds: scaled with the clock
METRICS_EVERY_S = 0.5


# -- processes -------------------------------------------------------------------------

def spawn(cmd: list[str], log: Path, cpu: int | None, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=pin)


def stop(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if it does not exit within timeout_s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def server_config(sink_port: int, settings: dict[str, dict[str, str]]) -> str:
    """The server's TOML: webhooks to the sink, the scaled clock, and `settings` ({section: {key: TOML
    value}}, from --shards and --set)."""
    extra = "".join(f"\n[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in keys.items())
                    for section, keys in settings.items())
    channels = "".join(f"""
[channels.{ch}]
provider = "webhook"
url = "http://127.0.0.1:{sink_port}/hook/{ch}"
""" for ch in CHANNELS)
    return f"""
[server]
host = "127.0.0.1"

[storage]
journal_fsync = "batch"

[clock]
mode = "scaled"
rate = {CLOCK_RATE}
{extra}{channels}"""


def machine_busy_s() -> float:
    """CPU time every process of the machine used so far (/proc/stat),
    to tell how much others took from this shared machine during a run
    (this process's own, the /metrics scrapes, counts as ours)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK") - time.process_time()


def server_interpreter(pid: int) -> dict[str, str]:
    """The interpreter running the server: `cascade` is a script, so argv[0]
    is the interpreter of its shebang; ask that one for its version."""
    argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    info = {"executable": argv0, "binary": os.path.realpath(f"/proc/{pid}/exe"), "version": "unknown"}
    try:
        out = subprocess.run([argv0, "-c", "import sys; print(sys.version)"],
                             capture_output=True, text=True, timeout=10, check=True)
        info["version"] = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


# -- talking to the server and the sink ----------------------------------------------------

async def prepare(urls: list[str], sink_url: str, server: subprocess.Popen[bytes],
                  sink: subprocess.Popen[bytes]) -> tuple[float, float]:
    """Wait for both (every node of a cluster, and every partition owned), install
    the template; answer a (monotonic, clock) pair mapping the server's scaled clock onto our time."""
    async with aiohttp.ClientSession(sink_url) as sink_http:
        await wait_ready(sink_http, sink, 30.0, path="/stats", what="the sink")
    for other in urls[1:]:
        async with aiohttp.ClientSession(other) as http:
            await wait_ready(http, server, 60.0)
    url = urls[0]
    async with aiohttp.ClientSession(url) as http:
        await wait_ready(http, server, 60.0)
        if len(urls) > 1:
            await all_partitions_owned(http, len(urls), 60.0)
        async with http.put(f"/v1/templates/{TEMPLATE}", json=SEQUENCE) as r:
            if r.status not in (200, 201):
                raise SystemExit(f"PUT template answered {r.status}: {await r.text()}")
        before = time.monotonic()
        async with http.get("/v1/admin/clock") as r:
            now = (await r.json())["now"]
        return (before + time.monotonic()) / 2, parse_time(now)


async def all_partitions_owned(http: aiohttp.ClientSession, nodes: int, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        async with http.get("/v1/admin/cluster") as r:
            view = await r.json()
        owners = {p["owner"] for p in view["partitions"]}
        if None not in owners and len(owners) == nodes:
            return
        await asyncio.sleep(0.2)  # polling the cluster's view until it settles, bounded
    raise SystemExit(f"the cluster did not give every node partitions within {limit_s:g} s")


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def metric_lines(http: aiohttp.ClientSession) -> list[str]:
    async with http.get("/metrics") as r:
        return (await r.text()).splitlines()


def shown_series(lines: list[str]) -> dict[str, float]:
    series = {}
    for line in lines:
        if SHOWN_METRICS.search(line) and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            series[name] = float(value)
    return series


async def watch_metrics(url: str, load: subprocess.Popen[bytes], limit_s: float) -> dict[str, float]:
    """While the load runs (at most limit_s), scrape /metrics: the highest
    value each shown series reached (a counter's: its last)."""
    peak: dict[str, float] = {}
    deadline = time.monotonic() + limit_s
    async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=5)) as http:
        while load.poll() is None and time.monotonic() < deadline:
            try:
                for name, value in shown_series(await metric_lines(http)).items():
                    peak[name] = max(value, peak.get(name, value))
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass  # a scrape the busy server could not answer in time: the next one may
            await asyncio.sleep(METRICS_EVERY_S)
    return peak


def gauge(lines: list[str], name: str) -> float | None:
    for line in lines:
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def drain(urls: list[str], sink_url: str, not_before: float, limit_s: float) -> tuple[bool, list[str]]:
    """Wait until every accepted send must have finished: at least until
    not_before, then until the server has no active send and the sink no
    event to post and no new arrival for a second. Answers whether that
    happened within limit_s, and the server's last /metrics."""
    await asyncio.sleep(max(0.0, not_before - time.monotonic()))
    deadline = time.monotonic() + limit_s
    timeout = aiohttp.ClientTimeout(total=10)
    arrivals = -1
    servers = [aiohttp.ClientSession(url, timeout=timeout) for url in urls]  # a cluster's nodes: each its own
    async with aiohttp.ClientSession(sink_url, timeout=timeout) as sink:
        try:
            while True:
                try:
                    every = [await metric_lines(server) for server in servers]
                    lines = every[0]
                    async with sink.get("/stats") as r:
                        stats = await r.json()
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    every, lines, stats = [], [], None  # too busy to answer: ask again
                if stats is not None:
                    # Without the gauge (a server that does not publish it) the sink's quiet decides.
                    idle = all(gauge(node, "cascade_active_sends") in (0.0, None) for node in every)
                    if idle and stats["pending"] == 0 and stats["arrivals"] == arrivals:
                        return True, lines
                    arrivals = stats["arrivals"]
                if time.monotonic() > deadline:
                    return False, lines
                await asyncio.sleep(1.0)
        finally:
            for server in servers:
                await server.close()


async def diagnose(url: str, wrong: list[tuple[str, int]], sink_arrivals: dict[str, float],
                   events: dict[str, dict[str, Any]], clock: tuple[float, float]) -> dict[str, Any]:
    """Look up wrongly escalated sends on the server: did the click on step
    k reach it after step k's window had closed (then how late were the
    delivery and the ingestion?) or inside it (an engine bug)?"""
    mono0, clock0 = clock

    def real(text: str) -> float:  # the server's scaled clock as our time.monotonic()
        return mono0 + (parse_time(text) - clock0) / CLOCK_RATE

    kinds: Counter[str] = Counter()
    delivery_lag: list[float] = []  # step k: firing to arrival at the sink
    ingest_lag: list[float] = []  # the click: written to its socket -> the time the server stamped
    send_lag: list[float] = []  # the click: the sink's decision -> written to its socket (the client's own lag)
    async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=10)) as http:
        for sid, k in wrong:
            async with http.get(f"/v1/sends/{sid}") as r:
                if r.status != 200:
                    kinds[f"lookup_{r.status}"] += 1
                    continue
                step = (await r.json())["steps"][k - 1]
            clicked, mid = step["signals"]["clicked"], step["messageId"]
            delivery_lag.append(sink_arrivals[mid] - real(step["firedAt"]))
            if clicked is None:
                kinds["click_not_recorded"] += 1
                continue
            sent = events[mid].get("sent", events[mid]["start"])
            send_lag.append(sent - events[mid]["start"])
            ingest_lag.append(real(clicked) - sent)
            # Written before the deadline but stamped after it: the server's own backlog (rule 11's
            # unseen part); written after it: the client was late, the escalation was right.
            kinds["click_written_before_deadline" if sent < real(step["deadline"])
                  else "click_written_after_deadline"] += 1
            kinds["click_after_window" if parse_time(clicked) >= parse_time(step["deadline"])
                  else "click_inside_window"] += 1
    return {"looked_up": len(wrong), **kinds,
            "step_k_delivery_lag_ms": dist(delivery_lag), "click_send_lag_ms": dist(send_lag),
            "click_ingest_lag_ms": dist(ingest_lag)}


# -- the checks and figures -------------------------------------------------------------------

def dist(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in seconds)
    return {"n": len(ms), "p50": round(percentile(ms, 50), 1), "p99": round(percentile(ms, 99), 1),
            "max": round(ms[-1], 1) if ms else 0.0}


def event_outcome(e: dict[str, Any]) -> str:
    if e["accepted"]:
        return "accepted"
    if e["status"] == 200:
        return "200:" + ",".join(e.get("errors") or ["duplicate" if e.get("duplicate") else "not_accepted"])
    return str(e["status"])


def check(sends: list[dict[str, Any]], arrivals: list[list[Any]], events: dict[str, dict[str, Any]],
          first: dict[str, float]) -> tuple[dict[str, Any], dict[str, int]]:
    """Every delivery of every accepted send against its fate; also answers
    the wrongly escalated sends (send id -> the step clicked)."""
    fates = {s["id"]: s["fate"] for s in sends if s["status"] == 202}
    copies = Counter(a[0] for a in arrivals)
    out: Counter[str] = Counter()
    lateness: dict[int, list[float]] = {2: [], 3: []}
    wrong: dict[str, int] = {}
    for sid, k in fates.items():
        last = k if k in (1, 2) else STEPS  # a click on the terminal step stops nothing
        for step in range(1, STEPS + 1):
            mid = f"{sid}.{step}"
            if step <= last:
                out["missing"] += mid not in first
            elif mid in first:
                kind = extra_kind(events.get(f"{sid}.{k}"))
                out[kind] += 1
                if kind == "wrong":
                    wrong[sid] = k
            prev = f"{sid}.{step - 1}"
            if step > 1 and mid in first and prev in first:
                lateness[step].append(first[mid] - first[prev] - WINDOW_S)
    unknown = {m for m in copies if m.rsplit(".", 1)[0] not in fates}
    return {
        "wrong": out["wrong"], "wrong_sends": len(wrong), "missing": out["missing"],
        "duplicates": sum(n - 1 for n in copies.values()),
        "escalated_after_unaccepted_click": out["after_unaccepted_click"],
        "extra_without_click": out["without_click"],
        "arrivals_of_unknown_sends": len(unknown),
        "lateness_ms": dist(lateness[2] + lateness[3]),
        "lateness_step2_ms": dist(lateness[2]), "lateness_step3_ms": dist(lateness[3]),
    }, wrong


def step1_after_accept(sends: list[dict[str, Any]], first: dict[str, float]) -> dict[str, float]:
    """Step 1 fires within POST /v1/sends: the time from its 202 to the
    webhook's arrival shows how far the server's deliveries lag (it is
    negative when the webhook overtakes the answer)."""
    return dist([first[f"{s['id']}.1"] - s["start"] - s["latency"]
                 for s in sends if s["status"] == 202 and f"{s['id']}.1" in first])


def extra_kind(click: dict[str, Any] | None) -> str:
    if click is None:
        return "without_click"  # step k never arrived, or its click was never posted
    return "wrong" if click["accepted"] else "after_unaccepted_click"


def send_figures(sends: list[dict[str, Any]], rate: float) -> dict[str, Any]:
    statuses = Counter(str(s["status"]) for s in sends)
    accepted = [s for s in sends if s["status"] == 202]
    # Issued per second, as the generator managed it (n sends span n - 1 intervals).
    span = max(s["start"] for s in sends) - min(s["start"] for s in sends)
    offered = (len(sends) - 1) / span if span else 0.0
    errors = {k: v for k, v in statuses.items() if k not in ("202", "503")}
    return {
        "rate": rate, "sends": len(sends), "offered_per_s": round(offered, 1),
        "accepted": len(accepted), "accepted_per_s": round(offered * len(accepted) / len(sends), 1),
        "503": statuses["503"], "other_errors": sum(errors.values()), "errors_by_kind": errors,
        "retry_after_seen": dict(Counter(s["retryAfter"] for s in sends if s["status"] == 503)),
        "send_latency_ms": dist([s["latency"] for s in accepted]),
        # The generator's own lag behind its schedule: a saturated client, not a slow server.
        "issue_lag_ms": dist([s["start"] - s["due"] for s in sends]),
    }


def event_figures(events: list[dict[str, Any]]) -> dict[str, Any]:
    outcomes = Counter(event_outcome(e) for e in events)
    return {
        "clicks_posted": len(events), "clicks_accepted": outcomes["accepted"],
        "events_refused": outcomes["503"],
        "events_other": {k: v for k, v in outcomes.items() if k not in ("accepted", "503")},
        "event_retry_after_seen": dict(Counter(e["retryAfter"] for e in events if e["status"] == 503)),
        "event_latency_ms": dist([e["latency"] for e in events if e["accepted"]]),
        # Its two parts: the sink's wait for a connection and its write (a new connection waits
        # for the server to accept it), then the server's answer from the written request on.
        "event_connect_write_ms": dist([e["sent"] - e["start"] for e in events if e["accepted"] and "sent" in e]),
        "event_after_write_ms": dist([e["start"] + e["latency"] - e["sent"] for e in events
                                      if e["accepted"] and "sent" in e]),
        # The sink's lag behind the planned click time: a saturated sink, not a slow server.
        "sink_lag_ms": dist([e["start"] - e["planned"] for e in events]),
    }


# -- one run ------------------------------------------------------------------------------------

def run_once(rate: float, count: int, opts: argparse.Namespace) -> dict[str, Any]:
    """A fresh sink and server, `count` sends at `rate`, the drain, the checks."""
    pin = opts.pin and (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity")
    server_cpu, client_cpu = (0, 1) if pin else (None, None)
    with tempfile.TemporaryDirectory(prefix="cascade-e2e-") as name:
        tmp = Path(name)
        sink_port = free_port()
        sink_url = f"http://127.0.0.1:{sink_port}"
        procs: list[subprocess.Popen[bytes]] = []
        servers = Servers(opts.servers, opts.count, opts.nats_servers)
        try:
            urls = servers.start(tmp, server_config(sink_port, opts.settings), server_cpu, spawn)
            url = urls[0]
            sink = spawn([sys.executable, str(BENCH / "e2e_sink.py"), "--port", str(sink_port),
                          "--server", ",".join(urls), "--connections", str(opts.connections),
                          "--timeout", str(opts.timeout), "--out", str(tmp / "sink.json")], tmp / "sink.log", client_cpu)
            procs.append(sink)
            clock = asyncio.run(prepare(urls, sink_url, servers.procs[0], sink))
            pids = servers.pids()
            cpu0, busy0 = sum(map(cpu_seconds, pids)), machine_busy_s()
            load = spawn([sys.executable, str(BENCH / "e2e_load.py"), "--url", ",".join(urls), "--rate", str(rate),
                          "--sends", str(count), "--connections", str(opts.connections),
                          "--timeout", str(opts.timeout), "--out", str(tmp / "load.json")],
                         tmp / "load.log", client_cpu)
            procs.append(load)
            load_limit = count / rate + opts.timeout + 60
            peaks = asyncio.run(watch_metrics(url, load, load_limit))
            loaded = finished(load, load_limit, tmp / "load.json", tmp / "load.log")
            last_accepted = max((s["start"] for s in loaded["sends"] if s["status"] == 202), default=0.0)
            drained, lines = asyncio.run(
                drain(urls, sink_url, last_accepted + STEPS * WINDOW_S + 1.0, opts.drain_max))
            server_cpu_s, busy_s = sum(map(cpu_seconds, pids)) - cpu0, machine_busy_s() - busy0
            state = server_state(pids, peaks, shown_series(lines))
            state["servers"] = servers.describe()
            sink.send_signal(signal.SIGTERM)  # it writes its records and exits
            sunk = finished(sink, 30, tmp / "sink.json", tmp / "sink.log")
            figures, wrong = analyse(rate, loaded, sunk, drained)
            figures.update(state, pinned=pin, **cpu_figures(server_cpu_s, busy_s, figures))
            figures["wrong_diagnosis"] = asyncio.run(diagnose(
                url, list(wrong.items())[:opts.diagnose], first_arrivals(sunk["arrivals"]),
                {e["messageId"]: e for e in sunk["events"]}, clock))
            # The sink (a client sharing a core) can itself be late: a click it wrote after the
            # deadline was rightly not counted. Still reported as wrong; the verdict says which.
            figures["wrong_clicks_written_late"] = figures["wrong_diagnosis"].get("click_written_after_deadline", 0)
            return figures
        finally:
            for proc in reversed(procs):
                stop(proc, 30)
            # A server stopped by SIGTERM exits 0 after its graceful shutdown.
            codes = servers.stop(stop)
            if any(code != 0 for code in codes):
                print(f"cascade serve exited with {codes}:\n{servers.logs(tmp)}", file=sys.stderr)


def server_state(pids: list[int], peaks: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    pid = pids[0]
    return {
        "server_peak_rss_mb": round(sum(map(peak_rss_mb, pids)), 1),
        "server_metrics": {name: {"peak_during_load": peaks.get(name), "after_drain": after.get(name)}
                           for name in sorted(peaks.keys() | after.keys())},
        "server_interpreter": server_interpreter(pid),
    }


def cpu_figures(server_cpu_s: float, busy_s: float, f: dict[str, Any]) -> dict[str, Any]:
    return {
        "server_cpu_s": round(server_cpu_s, 2),
        "server_cpu_ms_per_send": round(server_cpu_s * 1e3 / f["accepted"], 3) if f["accepted"] else None,
        # The clients' CPU counts from their start, a little before busy0: a slight undercount.
        "other_cpu_s": round(max(0.0, busy_s - server_cpu_s - f["load_cpu_s"] - f["sink_cpu_s"]), 2),
    }


def finished(proc: subprocess.Popen[bytes], timeout_s: float, result: Path, log: Path) -> dict[str, Any]:
    """Wait for a client process to exit and read the JSON it wrote."""
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"{log.stem} did not finish within {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        raise SystemExit(f"{log.stem} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
    data: dict[str, Any] = json.loads(result.read_text())
    return data


def first_arrivals(arrivals: list[list[Any]]) -> dict[str, float]:
    first: dict[str, float] = {}
    for mid, _step, _channel, t in arrivals:
        first.setdefault(mid, t)  # recorded in arrival order
    return first


def analyse(rate: float, loaded: dict[str, Any], sunk: dict[str, Any],
            drained: bool) -> tuple[dict[str, Any], dict[str, int]]:
    events = {e["messageId"]: e for e in sunk["events"]}
    figures = send_figures(loaded["sends"], rate)
    figures.update(event_figures(sunk["events"]))
    first = first_arrivals(sunk["arrivals"])
    checked, wrong = check(loaded["sends"], sunk["arrivals"], events, first)
    figures.update(checked)
    figures["step1_arrival_after_202_ms"] = step1_after_accept(loaded["sends"], first)
    figures.update({
        "arrivals": len(sunk["arrivals"]), "unreadable_webhooks": sunk["unreadable"],
        "clicks_unposted_at_end": sunk["pending"], "drained": drained,
        "load_cpu_s": round(loaded["cpu_s"], 2), "sink_cpu_s": round(sunk["cpu_s"], 2),
    })
    return figures, wrong


# -- verdicts, reports, modes ------------------------------------------------------------------

def failures(f: dict[str, Any], max_lateness_ms: float) -> list[str]:
    """Why a run does not count as served correctly (empty: it does)."""
    checks = [
        (f["503"] > 0, f"{f['503']} sends shed"),
        (f["other_errors"] > 0, f"{f['other_errors']} send errors"),
        (f["clicks_accepted"] < f["clicks_posted"], f"{f['clicks_posted'] - f['clicks_accepted']} clicks not accepted"),
        (f["wrong"] > 0, f"{f['wrong']} wrong"
                         + (f" ({f['wrong_clicks_written_late']} of their clicks written late by the sink)"
                            if f.get("wrong_clicks_written_late") else "")),
        (f["missing"] > 0, f"{f['missing']} missing"),
        (f["extra_without_click"] > 0, f"{f['extra_without_click']} extra without click"),
        (not f["drained"], "not drained"),
        (f["lateness_ms"]["p99"] > max_lateness_ms, f"lateness p99 {f['lateness_ms']['p99']:g} ms"),
        # Then the figures measure the clients as much as the server.
        (f["issue_lag_ms"]["p99"] > CLIENT_LAG_MS, f"load generator behind (p99 {f['issue_lag_ms']['p99']:g} ms)"),
        (f["sink_lag_ms"]["p99"] > CLIENT_LAG_MS, f"sink behind (p99 {f['sink_lag_ms']['p99']:g} ms)"),
    ]
    return [why for failed, why in checks if failed]


def fmt(d: dict[str, float]) -> str:
    return f"p50 {d['p50']:g}  p99 {d['p99']:g}  max {d['max']:g}  (n={d['n']})"


def print_run(f: dict[str, Any], max_lateness_ms: float) -> None:
    interp = f["server_interpreter"]
    diag = f["wrong_diagnosis"]
    rows = [
        ("server", f"{interp['version'].splitlines()[0]}  ({interp['executable']} -> {interp['binary']})"),
        ("offered sends/s", f"{f['offered_per_s']:g} (asked {f['rate']:g}; {f['sends']} sends)"),
        ("accepted sends/s", f"{f['accepted_per_s']:g} ({f['accepted']} accepted)"),
        ("503 / Retry-After", f"{f['503']}  {f['retry_after_seen'] or ''}"),
        ("other send errors", f"{f['other_errors']}  {f['errors_by_kind'] or ''}"),
        ("send latency ms", fmt(f["send_latency_ms"])),
        ("generator lag ms", fmt(f["issue_lag_ms"])),
        ("clicks posted/accepted", f"{f['clicks_posted']} / {f['clicks_accepted']}"),
        ("events refused (503)", f"{f['events_refused']}  {f['event_retry_after_seen'] or ''}"),
        ("other event outcomes", str(f["events_other"] or 0)),
        ("event latency ms", fmt(f["event_latency_ms"])),
        ("  connect + write ms", fmt(f["event_connect_write_ms"])),
        ("  answer after write ms", fmt(f["event_after_write_ms"])),
        ("sink lag ms", fmt(f["sink_lag_ms"])),
        ("step 1 arrival after 202 ms", fmt(f["step1_arrival_after_202_ms"])),
        ("lateness step 2 ms", fmt(f["lateness_step2_ms"])),
        ("lateness step 3 ms", fmt(f["lateness_step3_ms"])),
        ("lateness all ms", fmt(f["lateness_ms"])),
        ("webhook arrivals", f"{f['arrivals']}  (unreadable {f['unreadable_webhooks']}, "
                             f"of unknown sends {f['arrivals_of_unknown_sends']})"),
        ("WRONG deliveries", f"{f['wrong']} in {f['wrong_sends']} sends"
                             + (f"; of the sends looked up, {f['wrong_clicks_written_late']} had their click written"
                                " after the deadline by the sink (its own lag: the escalation was right)"
                                if f.get("wrong_clicks_written_late") else "")),
        ("MISSING deliveries", str(f["missing"])),
        ("duplicate deliveries", str(f["duplicates"])),
        ("escalated after unaccepted click", str(f["escalated_after_unaccepted_click"])),
        ("extra without click", str(f["extra_without_click"])),
        ("drained", f"{f['drained']}  (clicks unposted at end: {f['clicks_unposted_at_end']})"),
        ("server CPU s", f"{f['server_cpu_s']:g}  ({f['server_cpu_ms_per_send']} ms per accepted send)"),
        ("server peak RSS MB", f"{f['server_peak_rss_mb']:g}"),
        ("CPU s of other processes", f"{f['other_cpu_s']:g}  (the machine is shared: noise)"),
        ("load generator / sink CPU s", f"{f['load_cpu_s']:g} / {f['sink_cpu_s']:g}  "
                                        f"({'server on CPU 0, clients on CPU 1' if f['pinned'] else 'not pinned'})"),
    ]
    if diag["looked_up"]:
        rows += [
            ("wrong, looked up", ", ".join(f"{k} {v}" for k, v in diag.items() if isinstance(v, int))),
            ("  step k fired->arrival ms", fmt(diag["step_k_delivery_lag_ms"])),
            ("  click started->written ms", fmt(diag["click_send_lag_ms"])),
            ("  click written->stamped ms", fmt(diag["click_ingest_lag_ms"])),
        ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    print("server /metrics, peak during load / after drain:"
          + ("" if f["server_metrics"] else " (no back-pressure, queue or delivery series)"))
    for name, values in f["server_metrics"].items():
        print(f"  {name}  {values['peak_during_load']} / {values['after_drain']}")
    if f["other_cpu_s"] > NOISE_CPU_S:
        print(f"warning: other processes used {f['other_cpu_s']:g} CPU s during the run; the figures are disturbed")
    verdict = failures(f, max_lateness_ms)
    print("verdict: " + ("served correctly" if not verdict else "NOT served correctly: " + "; ".join(verdict)))


def search(opts: argparse.Namespace) -> dict[str, Any]:
    """Double the rate until a probe fails, then bisect; every probe on a
    fresh server, all within --search-budget seconds."""
    deadline = time.monotonic() + opts.search_budget
    passed, failed = 0.0, 0.0
    rate = opts.search_start
    probes = []
    # A probe takes its load, the drain of 3 windows and about 10 s of start and stop.
    while time.monotonic() + opts.probe_seconds + STEPS * WINDOW_S + 10 < deadline:
        f = run_once(rate, max(1, round(rate * opts.probe_seconds)), opts)
        why = failures(f, opts.max_lateness_ms)
        probes.append({"rate": rate, "ok": not why, "why": why, "figures": f})
        print(f"probe {rate:>8.0f}/s: accepted {f['accepted_per_s']:>8.1f}/s, send p99 "
              f"{f['send_latency_ms']['p99']:>7.1f} ms, lateness p99 {f['lateness_ms']['p99']:>7.1f} ms, "
              f"wrong {f['wrong']}, missing {f['missing']}, others' CPU {f['other_cpu_s']:g} s: "
              f"{'ok' if not why else '; '.join(why)}", flush=True)
        if why:
            failed = rate
        else:
            passed = rate
        if not failed:
            rate *= 2
        elif not passed:
            rate /= 2
            if rate < 1:
                break
        elif failed / passed <= 1 + opts.precision:
            break
        else:
            rate = float(round((passed + failed) / 2))
    return {"best_rate": passed, "first_failing_rate": failed, "probes": probes}


def server_settings(ap: argparse.ArgumentParser, opts: argparse.Namespace) -> dict[str, dict[str, str]]:
    settings: dict[str, dict[str, str]] = {}
    if opts.shards is not None:
        settings.setdefault("engine", {})["shards"] = str(opts.shards)
    for item in opts.set:
        name, sep, value = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or not section or not key or not value.strip():
            ap.error(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. engine.pace_lag_s=0.01")
        if section in ("server", "storage", "clock") or section.startswith("channels"):
            ap.error(f"--set {item!r}: the benchmark sets [{section}] itself")
        settings.setdefault(section, {})[key] = value.strip()
    return settings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=100.0, help="offered sends per second (default 100)")
    amount = ap.add_mutually_exclusive_group()
    amount.add_argument("--duration", type=float, default=10.0, help="seconds of load (default 10)")
    amount.add_argument("--sends", type=int, help="number of sends instead of --duration")
    ap.add_argument("--search", action="store_true",
                    help="find the highest rate served correctly (ignores --rate/--duration/--sends)")
    ap.add_argument("--search-start", type=float, default=100.0, help="first probe's rate (default 100)")
    ap.add_argument("--probe-seconds", type=float, default=6.0, help="load per probe in seconds (default 6)")
    ap.add_argument("--search-budget", type=float, default=300.0, help="time limit of the search in s (default 300)")
    ap.add_argument("--precision", type=float, default=0.15,
                    help="stop bisecting when failing/passing rate <= 1 + this (default 0.15)")
    ap.add_argument("--max-lateness-ms", type=float, default=100.0,
                    help="p99 step lateness allowed for a correct run (default 100)")
    ap.add_argument("--connections", type=int, default=4096,
                    help="connection pools of load generator and sink (default 4096)")
    ap.add_argument("--timeout", type=float, default=10.0, help="client request timeout in s (default 10)")
    ap.add_argument("--drain-max", type=float, default=60.0,
                    help="longest wait after the last window for the server to finish (default 60 s)")
    ap.add_argument("--diagnose", type=int, default=500, help="wrong sends looked up on the server (default 500)")
    ap.add_argument("--shards", type=int, help="the server's engine.shards (default: its own default)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a server setting for the run, VALUE in TOML (e.g. engine.pace_lag_s=0.01); repeatable")
    servers = ap.add_mutually_exclusive_group()
    servers.add_argument("--workers", type=int, help="cascade serve --workers N instead of one process")
    servers.add_argument("--nodes", type=int, help="a cluster of N nodes on a local NATS JetStream instead")
    ap.add_argument("--nats-servers", type=int, choices=(1, 3), default=3,
                    help="with --nodes: NATS servers (and journal replicas), default 3")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not pin the server to CPU 0 and the clients to CPU 1")
    opts = ap.parse_args()
    opts.settings = server_settings(ap, opts)
    opts.servers = "cluster" if opts.nodes else "workers" if opts.workers else "single"
    opts.count = opts.nodes or opts.workers or 1
    header = (f"cascade e2e: push -> email -> sms, windows {WINDOW_S:g} s (waitMinutes {WAIT_MINUTES}, "
              f"scaled clock x{CLOCK_RATE:g}), stopCondition clicked, webhooks to a local sink, journal_fsync batch")
    print(header, flush=True)
    if opts.search:
        result = search(opts)
        print(f"highest rate served correctly: {result['best_rate']:g}/s "
              f"(first failing: {result['first_failing_rate'] or 'none'})")
        if result["probes"]:
            best = [p for p in result["probes"] if p["rate"] == result["best_rate"]] or result["probes"][-1:]
            print(f"-- the probe at {best[0]['rate']:g}/s:")
            print_run(best[0]["figures"], opts.max_lateness_ms)
        out: dict[str, Any] = {"mode": "search", **result, "server_settings": opts.settings}
    else:
        count = opts.sends if opts.sends is not None else max(1, round(opts.rate * opts.duration))
        figures = run_once(opts.rate, count, opts)
        print_run(figures, opts.max_lateness_ms)
        out = {"mode": "fixed", "ok": not failures(figures, opts.max_lateness_ms),
               "why": failures(figures, opts.max_lateness_ms), **figures, "server_settings": opts.settings}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
