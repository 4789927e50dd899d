"""Settings: one frozen value built from the TOML file, `CASCADE_*`
environment variables and command-line flags, in that order of precedence
(flags win). Every key has a default, so no file at all runs an embedded
single-node server. Validation names the key and the allowed values.

Environment variables are `CASCADE_<SECTION>_<KEY>` (e.g.
`CASCADE_SERVER_PORT=9090`, `CASCADE_CLOCK_MODE=manual`); API keys as
`CASCADE_AUTH_API_KEYS="k1=admin,k2=events"`.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping, cast

import msgspec

__all__ = ["ChannelSettings", "ConfigError", "Settings", "load_settings"]

Scope = Literal["admin", "send", "events", "read"]


class ConfigError(Exception):
    """The configuration is invalid; the message names the key."""


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Subclasses inherit these options; they repeat `frozen=True` only so
    type checkers (which do not inherit it) see them frozen too."""


class ServerSettings(_Section, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 8 * 1024 * 1024
    max_csv_bytes: int = 512 * 1024 * 1024
    max_inflight_requests: int = 4096  # beyond this, 503 with Retry-After
    shutdown_timeout_s: float = 30.0


class StorageSettings(_Section, frozen=True):
    data_dir: str = "./cascade-data"
    snapshot_interval_s: float = 60.0
    snapshots_kept: int = 3
    journal_fsync: Literal["batch", "always", "off"] = "batch"
    retain_finished_s: float = 7 * 86400.0


class AuthSettings(_Section, frozen=True):
    api_keys: dict[str, Scope] = {}
    inbox_secret: str | None = None


class ClockSettings(_Section, frozen=True):
    mode: Literal["real", "manual", "scaled"] = "real"
    rate: float = 60.0


class ChannelSettings(_Section, frozen=True):
    provider: Literal["log", "webhook", "memory"] = "log"
    url: str | None = None
    secret: str | None = None
    timeout_s: float = 5.0
    max_attempts: int = 3
    max_in_flight: int = 256


class EngineSettings(_Section, frozen=True):
    shards: int = 4
    max_pending_per_shard: int = 100_000
    tick_interval_s: float = 0.05
    gc_freeze_interval_s: float = 0.1


class CampaignSettings(_Section, frozen=True):
    max_sends_per_s: float = 0.0  # 0: unlimited


class Settings(_Section, frozen=True):
    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    auth: AuthSettings = AuthSettings()
    clock: ClockSettings = ClockSettings()
    channels: dict[Literal["push", "email", "sms"], ChannelSettings] = {}
    engine: EngineSettings = EngineSettings()
    campaigns: CampaignSettings = CampaignSettings()

    def channel(self, name: str) -> ChannelSettings:
        # Keys are the channel literals; any other name gets the defaults.
        return cast("dict[str, ChannelSettings]", self.channels).get(name, ChannelSettings())


def _check(s: Settings) -> None:
    problems = []
    if not 0 < s.server.port < 65536:
        problems.append(f"server.port {s.server.port} must be between 1 and 65535")
    for key in ("max_body_bytes", "max_csv_bytes", "max_inflight_requests"):
        if getattr(s.server, key) <= 0:
            problems.append(f"server.{key} must be positive")
    if s.storage.snapshots_kept < 1:
        problems.append("storage.snapshots_kept must be at least 1")
    if s.campaigns.max_sends_per_s < 0:
        problems.append(f"campaigns.max_sends_per_s {s.campaigns.max_sends_per_s} must be >= 0 (0: unlimited)")
    if s.clock.rate <= 0:
        problems.append(f"clock.rate {s.clock.rate} must be positive")
    if s.engine.shards < 1 or s.engine.shards > 256:
        problems.append(f"engine.shards {s.engine.shards} must be between 1 and 256")
    for name, ch in s.channels.items():
        if ch.provider == "webhook" and not (ch.url or "").startswith(("http://", "https://")):
            problems.append(f"channels.{name}.url must be an http(s) URL when provider = \"webhook\"")
        if ch.max_attempts < 1 or ch.max_in_flight < 1 or ch.timeout_s <= 0:
            problems.append(f"channels.{name}: max_attempts, max_in_flight and timeout_s must be positive")
    if not s.auth.api_keys and not _is_loopback(s.server.host):
        problems.append(f"server.host {s.server.host!r} is not a loopback address and auth.api_keys is empty: "
                        "configure API keys or listen on 127.0.0.1")
    if problems:
        raise ConfigError("; ".join(problems))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sections = {f: getattr(Settings, f) for f in Settings.__struct_fields__ if f != "channels"}
    for name, value in environ.items():
        if not name.startswith("CASCADE_"):
            continue
        rest = name[len("CASCADE_"):].lower()
        for section in sections:
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1:]
                if section == "auth" and key == "api_keys":
                    pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
                    if any(len(pair) != 2 for pair in pairs):
                        raise ConfigError(f"{name} must look like \"key1=admin,key2=events\"; got {value!r}")
                    out.setdefault(section, {})[key] = {k.strip(): v.strip() for k, v in pairs}
                else:
                    out.setdefault(section, {})[key] = value
                break
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        merged[k] = _merge(merged.get(k) or {}, v) if isinstance(v, Mapping) and k != "api_keys" else v
    return merged


def load_settings(path: str | Path | None = None, flags: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings; flags are dotted keys like {"server.port": 9090}."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    raw = _merge(raw, _env_overrides(os.environ if environ is None else environ))
    for dotted, value in (flags or {}).items():
        if value is not None:
            section, key = dotted.split(".", 1)
            raw = _merge(raw, {section: {key: value}})
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
    _check(settings)
    return settings
