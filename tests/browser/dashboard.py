"""Browser tests of the dashboard: one real `cascade serve` process on the
manual clock (tests/serverproc.py) and one headless Chromium (Debian's
`/usr/bin/chromium`, driven by Playwright; no browser is ever downloaded)
for the module of browser tests; each test gets a fresh browser context, so a fresh
sessionStorage and sign-in.

Without Chromium (or Playwright) the tests are skipped with how to get it,
except under CI (`CI` set), where that is a failure.

Every page a test opens is watched: a console error or an uncaught page
error fails the test at teardown, unless the test declared that HTTP
answer as expected (`dash.expect_http_error(422, "/v1/templates/")`: the
browser logs every failed request as a console error).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for serverproc
from serverproc import ADMIN_KEY, ServerProc, config_text, free_port, spawn_serve

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
READ_KEY = "k-read"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 740}


def _missing_browser() -> str | None:
    if not CHROMIUM.exists():
        return (f"{CHROMIUM} is missing: install Debian's Chromium with `apt-get install chromium` "
                "(these tests drive it through Playwright and never download a browser)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright's Python package is missing: `./run test` installs the [test] extras"
    return None


@dataclass
class DashboardServer(ServerProc):
    """ServerProc with these API keys (default: an admin and a read key; none: auth off, loopback only)."""

    keys: dict[str, str] = field(default_factory=lambda: {ADMIN_KEY: "admin", READ_KEY: "read"})

    def start(self) -> DashboardServer:
        self.starts += 1
        self.port = free_port()
        text = config_text(self.data_dir, self.port, clock="manual", shards=2)
        written = f'api_keys = {{ "{ADMIN_KEY}" = "admin" }}'
        assert written in text, "serverproc.config_text changed how it writes the API keys"
        text = text.replace(written, "api_keys = { " + ", ".join(f'"{k}" = "{v}"' for k, v in self.keys.items()) + " }")
        cfg = self.workdir / f"cascade-{self.starts}.toml"
        cfg.write_text(text, encoding="utf-8")
        self.log_path = self.workdir / f"serve-{self.starts}.log"
        self.proc = spawn_serve(cfg, self.workdir, self.log_path)
        self.pids.append(self.proc.pid)
        return self


@dataclass
class Api:
    """The public API over plain HTTP, as a test's own client (admin key)."""

    base: str
    key: str = ADMIN_KEY

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             content_type: str = "application/json", ok: tuple[int, ...] = (200, 201, 202, 204)) -> Any:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Authorization": f"Bearer {self.key}"}
        if data is not None:
            headers["Content-Type"] = content_type
        deadline = time.monotonic() + 10.0
        while True:
            req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    status, text = r.status, r.read()
            except urllib.error.HTTPError as e:
                with e:
                    status, text = e.code, e.read()
            # 503 overloaded means nothing was applied; a client retries it (the machine may be busy with
            # other test runs). Shortly, rather than after Retry-After's whole second, to keep the tests fast.
            if status != 503 or 503 in ok or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status in ok, f"{method} {path}: HTTP {status} {text[:500]!r}"
        return json.loads(text) if text else None

    def get(self, path: str, **kw: Any) -> Any:
        return self.call("GET", path, **kw)

    def put(self, path: str, body: Any) -> Any:
        return self.call("PUT", path, body)

    def post(self, path: str, body: Any) -> Any:
        return self.call("POST", path, body)

    def status_of(self, path: str) -> int:
        req = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {self.key}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            with e:
                return int(e.code)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardServer]:
    work = tmp_path_factory.mktemp("dashboard")
    proc = DashboardServer(work, work / "data").start()
    try:
        # In a thread of its own: Playwright's sync API may already run an event loop in this one.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, proc.wait_ready()).result()
        yield proc
    finally:
        proc.cleanup()


@pytest.fixture(scope="session")
def api(server: DashboardServer) -> Api:
    return Api(server.base)


@pytest.fixture(scope="module")  # one module of browser tests: one browser; and Playwright's sync API runs an
def browser() -> Iterator[Any]:  # event loop in this thread while open, which the asyncio tests after it cannot share
    why = _missing_browser()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the browser tests: {why}", pytrace=False)
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Dash:
    """One browser context on the dashboard, watching for console errors."""

    page: Any
    base: str
    problems: list[str] = field(default_factory=list)
    expected: list[tuple[int, str]] = field(default_factory=list)

    def expect_http_error(self, status: int, path_part: str) -> None:
        """A failed request this test provokes on purpose (the browser logs it as a console error)."""
        self.expected.append((status, path_part))

    def open(self, route: str = "overview") -> Any:
        self.page.goto(f"{self.base}/ui/#/{route}")
        return self.page

    def sign_in(self, key: str = ADMIN_KEY, route: str = "templates") -> Any:
        from playwright.sync_api import expect

        # With keys configured the page's first look, without one, is refused: that is how it knows to ask.
        self.expect_http_error(401, "/v1/admin/clock")
        self.open(route)
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_role("button", name="Sign in").click()
        expect(self.page.get_by_role("button", name="Sign out")).to_be_visible()
        return self.page


@pytest.fixture
def dash(browser: Any, server: DashboardServer) -> Iterator[Dash]:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.set_default_timeout(8000)
    d = Dash(page, server.base)
    failed: list[tuple[int, str]] = []

    def on_response(response: Any) -> None:
        if response.status >= 400:
            failed.append((response.status, response.url))

    def on_console(msg: Any) -> None:
        if msg.type == "error":
            url = (msg.location or {}).get("url", "")
            d.problems.append(f"console error: {msg.text} ({url})")

    page.on("response", on_response)
    page.on("console", on_console)
    page.on("pageerror", lambda exc: d.problems.append(f"page error: {exc}"))
    try:
        yield d
    finally:
        context.close()
    # A failed request shows in the console as "Failed to load resource: ... status of N"; forgive those the
    # test declared, one for one, and nothing else.
    unexplained = []
    for problem in d.problems:
        status = next((s for s, url in failed if f"status of {s}" in problem and url in problem), None)
        if status is not None and any(s == status and part in problem for s, part in d.expected):
            continue
        unexplained.append(problem)
    assert not unexplained, "the dashboard logged errors:\n" + "\n".join(unexplained)
