"""What the end-to-end benchmark's processes share (bench/e2e.py runs
e2e_sink.py and e2e_load.py); plain values only, so importing it cannot
shadow anything."""

from __future__ import annotations

TEMPLATE = "e2e-sequence"
JSON = {"Content-Type": "application/json"}


def loopback(url: str, flag: str) -> str:
    """All the benchmark's traffic stays on this machine."""
    if not url.startswith("http://127.0.0.1:"):
        raise SystemExit(f"{flag} must be a loopback http://127.0.0.1:PORT address, not {url!r}")
    return url


def loopbacks(urls: str, flag: str) -> list[str]:
    """Comma-separated servers (a cluster's nodes): requests go to each in turn."""
    return [loopback(url, flag) for url in urls.split(",")]
