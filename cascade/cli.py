"""The `cascade` command: `serve`, `send-test`, `snapshot inspect|verify`, `--version`.

`main(argv)` returns the exit code: 0 fine, 1 a runtime failure (e.g. the
port is taken), 2 a usage or configuration error (the message names the key),
or data that cannot be used (a data directory that cannot be made or
written, with its path and the reason; a corrupt journal or snapshot).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from . import __version__

__all__ = ["main"]

_EPILOG = """\
configuration: one TOML file (--config), then CASCADE_<SECTION>_<KEY>
environment variables (e.g. CASCADE_SERVER_PORT=9090,
CASCADE_AUTH_API_KEYS="k1=admin,k2=events", CASCADE_CHANNELS_PUSH_URL=...),
then these flags; every key has a default, so `cascade serve` alone runs on
127.0.0.1:8080 with a real clock.
Logging: CASCADE_LOG_LEVEL (default INFO), CASCADE_LOG_FORMAT=json|logfmt,
CASCADE_ACCESS_LOG=1 for one line a request.
"""


_SEND_TEST = """\
Render the template's steps for the recipient and post each step but inapp
once through its channel's configured provider (with its retries), printing
each provider's answer. No server is needed and nothing is written: the
template and the recipient are read from the data directory (the newest
snapshot set and the journal after it, as a restart reads them, but
read-only, so a running server is not disturbed; it takes as long as a
restart's recovery), or the recipient from --recipient-json. No send is
started, no window opens, and message ids are fresh.
"""

_SEND_TEST_EPILOG = """\
exit status: 0 when every provider step was requested; 1 when a step failed
or was not posted (the recipient lacks its address or opted out); 2 for a
usage, configuration or data problem. A Web Push subscription answered
404/410 is reported, not removed (the server removes it when it delivers).

"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cascade", description="Self-hosted notification sequencing server.")
    parser.add_argument("--version", action="version", version=f"cascade {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="run the HTTP server", description="Run the cascade HTTP server until SIGTERM/SIGINT.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--config", metavar="FILE", help="TOML configuration file")
    serve.add_argument("--host", help="address to listen on (server.host; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (server.port; default 8080)")
    serve.add_argument("--data-dir", metavar="DIR", help="journal and snapshots (storage.data_dir)")
    serve.add_argument("--clock", choices=("real", "manual", "scaled"),
                       help="clock.mode: manual enables POST /v1/admin/clock; scaled runs --clock-rate times faster")
    serve.add_argument("--clock-rate", type=float, metavar="R", help="clock.rate for --clock scaled (default 60)")
    serve.add_argument("--workers", type=_positive_int, metavar="N",
                       help="N worker processes on the one address, over a NATS JetStream server started here "
                            "under the data dir (the cluster extra); 1, the default, is one process")
    commands.add_parser("snapshot", help="inspect or verify snapshot and journal files (snapshot --help)",
                        add_help=False)
    test = commands.add_parser(
        "send-test", help="post one template's steps for one recipient through the configured providers",
        description=_SEND_TEST,
        epilog=_SEND_TEST_EPILOG + _EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    test.add_argument("--template", required=True, metavar="ID", help="the template's id")
    test.add_argument("--recipient", required=True, metavar="ID", help="the recipient's id")
    test.add_argument("--config", metavar="FILE", help="TOML configuration file (as for serve)")
    test.add_argument("--data-dir", metavar="DIR", help="storage.data_dir to read templates and recipients from")
    test.add_argument("--data", metavar="JSON", help="the send's data, a JSON object filling {{placeholders}}")
    test.add_argument("--recipient-json", metavar="JSON",
                      help='the recipient\'s fields instead of the stored ones, e.g. \'{"email": "a@example.com"}\'')
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; at least 1")
    return value


def _json_object(text: str | None, flag: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{flag} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object")  # noqa: TRY004 (a usage error, reported as such)
    return value


def _send_test(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_settings
    from .logs import setup_logging

    setup_logging()
    try:
        settings = load_settings(args.config, flags={"storage.data_dir": args.data_dir})
        data = _json_object(args.data, "--data")
        inline = _json_object(args.recipient_json, "--recipient-json")
    except (ConfigError, ValueError) as exc:
        print(f"cascade send-test: {exc}", file=sys.stderr)
        return 2
    from .durability.recovery import RecoveryRefused
    from .send_test import SendTestError, send_test
    from .storage import JournalError, SnapshotError

    try:
        return send_test(settings, args.template, args.recipient, data, inline, sys.stdout)
    except (SendTestError, SnapshotError, JournalError, RecoveryRefused, OSError) as exc:
        print(f"cascade send-test: {exc}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_settings
    from .durability.recovery import RecoveryRefused
    from .logs import setup_logging

    setup_logging()
    log = logging.getLogger("cascade.server")
    flags = {"server.host": args.host, "server.port": args.port, "storage.data_dir": args.data_dir,
             "clock.mode": args.clock, "clock.rate": args.clock_rate}
    try:
        settings = load_settings(args.config, flags=flags)
    except ConfigError as exc:
        log.error("refusing to start: %s", exc, extra={"event": "config_error"})
        return 2
    from .durability.service import DataDirError
    from .server import build_providers, serve

    try:
        build_providers(settings)  # a key only its provider can read (a VAPID key): a config error too
    except ValueError as exc:
        log.error("refusing to start: %s", exc, extra={"event": "config_error"})
        return 2
    if args.workers is not None and args.workers > 1:
        from .cluster.workers import serve_workers  # a supervisor: no HTTP of its own

        return serve_workers(settings, args.workers, args.config)
    from .storage import JournalError, SnapshotError

    try:
        serve(settings)
    except (SnapshotError, JournalError, RecoveryRefused, DataDirError) as exc:
        # The data cannot be trusted or kept as it is: say why, plainly, and stop.
        log.error("refusing to start: %s", exc, extra={"event": "refused", "data_dir": settings.storage.data_dir})
        return 2
    except OSError as exc:
        if exc.filename is not None:  # a file, not the listening socket
            log.error("cannot start: %s: %s", exc.strerror or exc, exc.filename,
                      extra={"event": "start_failed", "path": str(exc.filename)})
        else:  # e.g. address already in use
            log.error("cannot serve on %s:%d: %s", settings.server.host, settings.server.port,
                      exc.strerror or exc, extra={"event": "start_failed"})
        return 1
    except Exception:
        log.exception("the server failed", extra={"event": "crash"})
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else list(argv)
    if args_list and args_list[0] == "snapshot":
        from .durability.cli import main as snapshot_main  # written alongside; only needed here

        return snapshot_main(args_list[1:])
    parser = _parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # --help, --version, usage errors: return, don't exit
        return exc.code if isinstance(exc.code, int) else 2
    if args.command == "serve":
        return _serve(args)
    if args.command == "send-test":
        return _send_test(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
