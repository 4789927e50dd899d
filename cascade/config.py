"""Settings: one frozen value built from the TOML file, `CASCADE_*`
environment variables and command-line flags, in that order of precedence
(flags win). Every key has a default, so no file at all runs an embedded
single-node server. Validation names the key and the allowed values.

Environment variables are `CASCADE_<SECTION>_<KEY>` (e.g.
`CASCADE_SERVER_PORT=9090`, `CASCADE_CLOCK_MODE=manual`); API keys as
`CASCADE_AUTH_API_KEYS="k1=admin,k2=events"`; a channel's provider as
`CASCADE_CHANNELS_<CHANNEL>_<KEY>` (`CASCADE_CHANNELS_PUSH_URL=...`).
An environment value is text, read as its key's type (a list comma-separated:
`CASCADE_CLUSTER_NATS=nats://a:4222,nats://b:4222`); a file value must
already have its key's type (`port = "8080"` is an error, as is
`CASCADE_SERVER_PORT=http`). `CASCADE_LOG_FORMAT` is checked here too,
though logging reads it.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import tomllib
import types
from pathlib import Path
from typing import Any, Literal, Mapping, Union, cast, get_args, get_origin, get_type_hints

import msgspec

from .logs import LOG_FORMATS

__all__ = ["ChannelSettings", "ConfigError", "Settings", "load_settings"]

Scope = Literal["admin", "send", "events", "read"]
ProviderChannel = Literal["push", "email", "sms"]


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
    # Connections the kernel holds before cascade accepts them (the kernel caps it at
    # net.core.somaxconn). When that queue is full the kernel drops handshakes, and the
    # request a dropped handshake carries comes a TCP retransmit (0.2-1 s) later: a signal
    # that late can miss its window, so keep it at least the clients' connection count.
    listen_backlog: int = 4096
    shutdown_timeout_s: float = 30.0
    lean_door: bool = True  # POST /v1/sends and /v1/events framed by cascade itself (http/lean_door.py)
    cors_origins: list[str] = []  # origins ("https://app.example.com") whose pages may call the inbox and its stream
    max_streams: int = 10_000  # open inbox streams (SSE); beyond this, 503 with Retry-After (0: streams off)
    stream_ping_s: float = 15.0  # an idle stream gets a comment line this often (keeps proxies from closing it)
    series_save_interval_s: float = 60.0  # GET /v1/stats/series is written to the data dir this often (0: never)


class StorageSettings(_Section, frozen=True):
    data_dir: str = "./cascade-data"
    snapshot_interval_s: float = 60.0
    snapshots_kept: int = 3
    journal_fsync: Literal["batch", "always", "off"] = "batch"
    # batch: a group commit starts at least this long after the previous one began (0: at once)
    journal_sync_interval_ms: float = 2.0
    retain_finished_s: float = 7 * 86400.0


class AuthSettings(_Section, frozen=True):
    api_keys: dict[str, Scope] = {}
    inbox_secret: str | None = None


class ClockSettings(_Section, frozen=True):
    mode: Literal["real", "manual", "scaled"] = "real"
    rate: float = 60.0


class ChannelSettings(_Section, frozen=True):
    """A channel's provider. Common keys: provider, timeout_s (an attempt as
    a whole), max_attempts, max_in_flight (also the smtp connection pool's
    size). webhook: url, secret. smtp (email only): host, port (default 465
    with tls = "tls", 587 with "starttls", else 25), tls, username, password,
    from. webpush (push only): vapid_private_key (base64url of the raw
    32-byte key, DER or PEM), vapid_subject (mailto: or https: URL)."""

    provider: Literal["log", "webhook", "memory", "smtp", "webpush"] = "log"
    url: str | None = None
    secret: str | None = None
    timeout_s: float = 5.0
    max_attempts: int = 3
    max_in_flight: int = 256
    host: str | None = None
    port: int | None = None
    tls: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: str | None = None
    sender: str | None = msgspec.field(name="from", default=None)
    vapid_private_key: str | None = None
    vapid_subject: str | None = None

    def problems(self, name: str) -> list[str]:
        """What is wrong with this channel's provider keys, naming each key."""
        out = []
        key = f"channels.{name}"
        if self.provider == "webhook" and not (self.url or "").startswith(("http://", "https://")):
            out.append(f"{key}.url must be an http(s) URL when provider = \"webhook\"")
        if self.provider == "smtp":
            if name != "email":
                out.append(f"{key}.provider = \"smtp\" is for the email channel only")
            if not self.host:
                out.append(f"{key}.host is required when provider = \"smtp\" (the SMTP server's name)")
            if "@" not in (self.sender or ""):
                out.append(f"{key}.from is required when provider = \"smtp\": the sender, "
                           "\"Shop <shop@example.com>\" or \"shop@example.com\"")
            if self.port is not None and not 0 < self.port < 65536:
                out.append(f"{key}.port {self.port} must be between 1 and 65535")
            if (self.username is None) != (self.password is None):
                out.append(f"{key}: set username and password together (or neither)")
        if self.provider == "webpush":
            if name != "push":
                out.append(f"{key}.provider = \"webpush\" is for the push channel only")
            if not (self.vapid_subject or "").startswith(("mailto:", "https://")):
                out.append(f"{key}.vapid_subject is required when provider = \"webpush\": a mailto: or "
                           "https:// URL push services can reach you at")
            if not self.vapid_private_key:
                out.append(f"{key}.vapid_private_key is required when provider = \"webpush\" "
                           "(the provider reads it at start and names what is wrong with it)")
        return out


class EngineSettings(_Section, frozen=True):
    shards: int = 1  # one process has one interpreter lock: more shards only add thread wake-ups
    max_pending_per_shard: int = 100_000
    tick_interval_s: float = 0.05
    gc_freeze_interval_s: float = 0.1
    shed_lag_s: float = 0.05  # refuse new sends (503) while the server is this far behind; 0: never
    pace_lag_s: float = 0.02  # pace new sends to keep the event loop's lag under this (send_pacer.py); 0: never
    pace_cpu_share: float = 0.9  # ... and to keep the process's CPU under this share of one core; 0: lag only


class CampaignSettings(_Section, frozen=True):
    max_sends_per_s: float = 0.0  # 0: unlimited


class ClusterSettings(_Section, frozen=True):
    """Cluster mode on NATS JetStream (docs/cluster.md): on when `nats` lists servers."""

    nats: list[str] = []  # nats://host:4222 of the JetStream cluster's servers; empty: one node, local journal
    node: str = ""  # this node's id, unique in the cluster (required with nats)
    partitions: int = 64  # fixed when the cluster is created (recorded in its bucket)
    replicas: int = 3  # copies of each partition's journal, templates and snapshots (1, 3 or 5)
    lease_s: float = 5.0  # a dead node's partitions are taken over this long after its last renewal
    advertise: str = ""  # this node's HTTP address as other nodes and GET /v1/admin/cluster show it
    prefix: str = "cascade"  # names of the streams, buckets and subjects: several clusters can share one NATS

    @property
    def enabled(self) -> bool:
        return bool(self.nats)


class Settings(_Section, frozen=True):
    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    auth: AuthSettings = AuthSettings()
    clock: ClockSettings = ClockSettings()
    channels: dict[ProviderChannel, ChannelSettings] = {}
    engine: EngineSettings = EngineSettings()
    campaigns: CampaignSettings = CampaignSettings()
    cluster: ClusterSettings = ClusterSettings()

    def channel(self, name: str) -> ChannelSettings:
        # Keys are the channel literals; any other name gets the defaults.
        return cast("dict[str, ChannelSettings]", self.channels).get(name, ChannelSettings())


# (section, key, smallest allowed, whether that smallest is allowed): every float
# must also be finite (NaN passes every comparison, so it would slip through)
_BOUNDS = (
    ("server", "shutdown_timeout_s", 0.0, False), ("server", "stream_ping_s", 0.0, False),
    ("server", "series_save_interval_s", 0.0, True), ("storage", "snapshot_interval_s", 0.0, True),
    ("storage", "retain_finished_s", 0.0, True), ("clock", "rate", 0.0, False),
    ("engine", "tick_interval_s", 0.0, False), ("engine", "gc_freeze_interval_s", 0.0, True),
    ("engine", "shed_lag_s", 0.0, True), ("engine", "pace_lag_s", 0.0, True),
    ("engine", "pace_cpu_share", 0.0, True),
    ("engine", "max_pending_per_shard", 1, True),
    ("campaigns", "max_sends_per_s", 0.0, True), ("cluster", "lease_s", 0.5, True),
)

_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NAME_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,32}")


def _bounds_problems(s: Settings) -> list[str]:
    problems = []
    for section, key, low, inclusive in _BOUNDS:
        value = getattr(getattr(s, section), key)
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            problems.append(f"{section}.{key} {value!r} must be a finite number {'>=' if inclusive else '>'} {low:g}")
    for name, ch in s.channels.items():
        if not math.isfinite(ch.timeout_s) or ch.timeout_s <= 0:
            problems.append(f"channels.{name}.timeout_s {ch.timeout_s!r} must be a finite number > 0")
    return problems


def _check(s: Settings) -> None:
    problems = _bounds_problems(s)
    if not 0 < s.server.port < 65536:
        problems.append(f"server.port {s.server.port} must be between 1 and 65535")
    for key in ("max_body_bytes", "max_csv_bytes", "max_inflight_requests", "listen_backlog"):
        if getattr(s.server, key) <= 0:
            problems.append(f"server.{key} must be positive")
    if s.server.max_streams < 0:
        problems.append(f"server.max_streams {s.server.max_streams} must be 0 (streams off) or more")
    problems += [f"server.cors_origins: {o!r} is not an origin; write scheme://host[:port] without a path "
                 "(\"https://app.example.com\"), or \"*\" for any"
                 for o in s.server.cors_origins if o != "*" and _ORIGIN.fullmatch(o) is None]
    if not 0 <= s.storage.journal_sync_interval_ms <= 1000:
        problems.append(f"storage.journal_sync_interval_ms {s.storage.journal_sync_interval_ms!r} "
                        "must be from 0 to 1000")
    if s.storage.snapshots_kept < 1:
        problems.append("storage.snapshots_kept must be at least 1")
    if s.engine.shards < 1 or s.engine.shards > 256:
        problems.append(f"engine.shards {s.engine.shards} must be between 1 and 256")
    for name, ch in s.channels.items():
        problems += ch.problems(name)
        if ch.max_attempts < 1 or ch.max_in_flight < 1 or ch.timeout_s <= 0:
            problems.append(f"channels.{name}: max_attempts, max_in_flight and timeout_s must be positive")
    problems += _cluster_problems(s)
    if not s.auth.api_keys and not _is_loopback(s.server.host):
        problems.append(f"server.host {s.server.host!r} is not a loopback address and auth.api_keys is empty: "
                        "configure API keys or listen on 127.0.0.1")
    if problems:
        raise ConfigError("; ".join(problems))


def _cluster_problems(s: Settings) -> list[str]:
    c = s.cluster
    if not c.enabled:
        return []
    problems = [f"cluster.nats: {url!r} is not a NATS URL (nats://host:port)"
                for url in c.nats if not re.fullmatch(r"(nats|tls)://[^\s/]+", url)]
    if not _NODE_ID.fullmatch(c.node):
        problems.append(f"cluster.node {c.node!r} must be set to this node's id: 1-64 letters, digits, '-' or '_'")
    if not 1 <= c.partitions <= 1024:
        problems.append(f"cluster.partitions {c.partitions} must be between 1 and 1024")
    if c.replicas not in (1, 3, 5):
        problems.append(f"cluster.replicas {c.replicas} must be 1, 3 or 5 (a quorum of an odd count)")
    if not _NAME_PREFIX.fullmatch(c.prefix):
        problems.append(f"cluster.prefix {c.prefix!r} must be 1-32 letters, digits, '-' or '_'")
    if c.advertise and not re.fullmatch(r"https?://[^\s/]+", c.advertise):
        problems.append(f"cluster.advertise {c.advertise!r} must be this node's base URL (http://host:port)")
    if s.clock.mode == "manual":
        problems.append("clock.mode = \"manual\" is for one node: a cluster's nodes cannot share a manual clock")
    return problems


_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_PREFIX = "CASCADE_"


def _describe(tp: Any) -> str:
    """What a value of type `tp` looks like, for messages."""
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(f'"{v}"' for v in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp) if a is not type(None))
    if get_origin(tp) is dict:
        return f"a table of name = {_describe(get_args(tp)[1])}"
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _field_type(parts: list[str]) -> Any:
    """The type of the setting at `parts` (e.g. ["channels", "push", "url"])."""
    tp: Any = Settings
    for part in parts:
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            tp = get_type_hints(tp).get(part)
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            return None
        if get_origin(tp) in (Union, types.UnionType):
            tp = next((a for a in get_args(tp) if a is not type(None)), tp)
    return tp


def _lookup(raw: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(raw, Mapping) or part not in raw:
            return None
        raw = raw[part]
    return raw


def _resolve(parts: list[str], raw: Any) -> list[str]:
    """`parts` with each "*" (msgspec's `[...]`: some key of a table) replaced
    by the key whose value is wrong."""
    out: list[str] = []
    for part in parts:
        node = _lookup(raw, out)
        if part == "*" and isinstance(node, Mapping):
            value_type = get_args(_field_type(out))[1] if get_origin(_field_type(out)) is dict else Any
            for key, value in node.items():
                try:
                    msgspec.convert(value, value_type, strict=True)
                except msgspec.ValidationError:
                    part = key
                    break
        out.append(part)
    return out


def _spell(value: Any) -> str:
    """A value as TOML would write it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def _problem(exc: msgspec.ValidationError, raw: Mapping[str, Any]) -> str:
    """A msgspec error about the merged settings, in the settings' own terms:
    the dotted key, the value, and what the key takes."""
    text = str(exc)
    message, sep, at = text.rpartition(" - at `")
    if not sep:
        message, at = text, "$"
    at = at.rstrip("`")
    table_key = at.startswith("key` in `")  # a key of a table is wrong, e.g. a channel's name
    if table_key:
        at = at[len("key` in `"):]
    parts = _resolve([p for p in at.lstrip("$").replace("[...]", ".*").split(".") if p], raw)
    dotted = ".".join(parts)
    field = _field_type(parts)
    if table_key:
        key_type = get_args(field)[0] if get_origin(field) is dict else None
        name = message.removeprefix("Invalid enum value ").strip("'")
        return f"{dotted}.{name} is not allowed: the keys of {dotted} are {_describe(key_type).removeprefix('one of ')}"
    if message.startswith("Object contains unknown field `"):
        name = message.removeprefix("Object contains unknown field `").rstrip("`")
        known = ", ".join(field.__struct_fields__) if isinstance(field, type) and issubclass(
            field, msgspec.Struct) else "no such key"
        return f"{dotted + '.' if dotted else ''}{name} is not a setting; {dotted or 'the file'} has {known}"
    return f"{dotted} = {_spell(_lookup(raw, parts))} is not allowed: it must be {_describe(field)}"


def _env_value(name: str, parts: list[str], value: str) -> Any:
    """An environment value (text) read as the type of the setting at `parts`."""
    *parent, key = parts
    section = _field_type(parent)
    fields: tuple[str, ...] = getattr(section, "__struct_encode_fields__", ())  # as the file spells them ("from")
    if key not in fields:
        raise ConfigError(f"{name} names no setting: [{'.'.join(parent)}] has no key {key!r} "
                          f"(it has {', '.join(fields)})")
    if get_origin(_field_type(parts)) is list:  # a list as text: comma-separated
        value = [item.strip() for item in value.split(",") if item.strip()]  # type: ignore[assignment]
    try:
        converted = msgspec.convert({key: value}, section, strict=False)
    except msgspec.ValidationError:
        raise ConfigError(f"{name}={value!r} is not allowed: {'.'.join(parts)} must be "
                          f"{_describe(_field_type(parts))}") from None
    return msgspec.to_builtins(converted)[key]


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sections = [f for f in Settings.__struct_fields__ if f != "channels"]
    channels = get_args(ProviderChannel)
    for name, value in environ.items():
        if not name.startswith(_PREFIX):
            continue
        rest = name[len(_PREFIX):].lower()
        if rest.startswith("channels_"):
            channel, _, key = rest[len("channels_"):].partition("_")
            if channel not in channels:
                raise ConfigError(f"{name}: {channel!r} is not a channel with a provider; use "
                                  f"CASCADE_CHANNELS_<{'|'.join(c.upper() for c in channels)}>_<KEY>")
            out.setdefault("channels", {}).setdefault(channel, {})[key] = \
                _env_value(name, ["channels", channel, key], value)
            continue
        for section in sections:
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1:]
                if section == "auth" and key == "api_keys":
                    pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
                    if any(len(pair) != 2 for pair in pairs):
                        raise ConfigError(f"{name} must look like \"key1=admin,key2=events\"; got {value!r}")
                    out.setdefault(section, {})[key] = {k.strip(): v.strip() for k, v in pairs}
                else:
                    out.setdefault(section, {})[key] = _env_value(name, [section, key], value)
                break
    return out


def _check_log_format(environ: Mapping[str, str]) -> None:
    fmt = environ.get("CASCADE_LOG_FORMAT")
    if fmt is not None and fmt.strip().lower() not in LOG_FORMATS:
        raise ConfigError(f"CASCADE_LOG_FORMAT {fmt!r} is not allowed; use one of {', '.join(LOG_FORMATS)}")


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
    env = os.environ if environ is None else environ
    _check_log_format(env)
    raw = _merge(raw, _env_overrides(env))
    for dotted, value in (flags or {}).items():
        if value is not None:
            section, key = dotted.split(".", 1)
            raw = _merge(raw, {section: {key: value}})
    try:
        # Strict: the file's values must have their key's type (the
        # environment's were read as that type above; flags are typed).
        settings = msgspec.convert(raw, Settings, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_problem(exc, raw)}") from None
    _check(settings)
    return settings
