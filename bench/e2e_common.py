"""What the end-to-end benchmark's processes (bench/e2e.py, e2e_load.py,
e2e_sink.py) share. Imports nothing that imports `http`, so the scripts can
import it with bench/ at the end of sys.path (see bench/benchlib.py)."""

from __future__ import annotations

TEMPLATE = "e2e-sequence"
JSON = {"Content-Type": "application/json"}


def loopback(url: str, flag: str) -> str:
    """All the benchmark's traffic stays on this machine."""
    if not url.startswith("http://127.0.0.1:"):
        raise SystemExit(f"{flag} must be a loopback http://127.0.0.1:PORT address, not {url!r}")
    return url
