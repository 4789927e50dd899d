"""The `cascade` command: `serve`, `snapshot inspect|verify`, `--version`.

`main(argv)` returns the exit code: 0 fine, 1 a runtime failure (e.g. the
port is taken), 2 a usage or configuration error (the message names the key),
or data that cannot be used (a data directory that cannot be made or
written, with its path and the reason; a corrupt journal or snapshot).
"""

from __future__ import annotations

import argparse
import logging
import sys

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
    commands.add_parser("snapshot", help="inspect or verify snapshot and journal files (snapshot --help)",
                        add_help=False)
    return parser


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
    from .server import serve
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
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
