"""Templates: the model, its validation rules, and versioned storage.

A template version is immutable once made; sends hold a reference to the
version they started with, so replacing a template never changes a send in
flight. Validation reports every problem at once, each with the JSON path of
the offending field and a message naming the allowed values.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

from .channels import CHANNEL_SIGNALS, CHANNELS, ENGAGEMENT, SIGNALS, WAIT_MINUTES
from .errors import Detail, NotFound, TemplateInvalid
from .quiet_hours import QuietHours, parse_hhmm
from .render import CompiledContent
from .timefmt import iso

__all__ = ["Step", "TemplateRegistry", "TemplateVersion", "validate_template", "TEMPLATE_ID"]

TEMPLATE_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_ALLOWED_WAITS = ", ".join(str(m) for m in WAIT_MINUTES)
_STEP_KEYS = {"channel", "stopCondition", "waitMinutes", "content"}
_TEMPLATE_KEYS = {"name", "channels", "config"}
_CONFIG_KEYS = {"sequenceEnabled", "quietHours", "throttle", "order"}
_ORDERS = ("template", "engagement")


@dataclass(frozen=True, slots=True)
class Step:
    number: int  # from 1
    channel: str
    stop_rank: int  # index into ENGAGEMENT; -1 for a terminal or unsequenced step
    wait_s: float
    content: CompiledContent
    signal_mask: int  # bit k set: the channel can emit SIGNALS[k]
    # What engagement means on this channel for rule 14: its stopCondition and
    # window as written, kept when the step ends up terminal in a send's order.
    engage_rank: int = -1
    engage_s: float = 0.0

    @property
    def stop_condition(self) -> str | None:
        return ENGAGEMENT[self.stop_rank] if self.stop_rank >= 0 else None

    @property
    def wait_minutes(self) -> int | None:
        return int(self.wait_s // 60) if self.stop_rank >= 0 else None


@dataclass(frozen=True, slots=True, eq=False)
class TemplateVersion:
    id: str
    version: int
    name: str
    steps: tuple[Step, ...]
    sequence: bool
    created_at: float
    updated_at: float
    body: Mapping[str, Any] = field(repr=False)
    quiet: QuietHours | None = None
    throttle: tuple[int, float] | None = None  # (limit, window in seconds)
    by_engagement: bool = False  # config.order = "engagement"
    order: tuple[int, ...] = ()  # a send's own order of the steps (indexes of `base`); () for the template's
    base: TemplateVersion | None = field(default=None, repr=False)  # the template's own order, for a reordered one
    _orders: dict[tuple[int, ...], TemplateVersion] = field(default_factory=dict, repr=False)

    def ordered(self, order: tuple[int, ...]) -> TemplateVersion:
        """This version with its steps in `order` (indexes into its steps),
        renumbered from 1, the last one terminal (rule 14). Made once per
        order: at most 24, shared by every send in that order."""
        base = self.base or self
        if order == tuple(range(len(base.steps))):
            return base
        found = base._orders.get(order)
        if found is None:
            steps = []
            for n, i in enumerate(order):
                s = base.steps[i]
                last = n == len(order) - 1
                steps.append(Step(n + 1, s.channel, -1 if last else s.engage_rank, 0.0 if last else s.engage_s,
                                  s.content, s.signal_mask, s.engage_rank, s.engage_s))
            found = base._orders[order] = TemplateVersion(
                base.id, base.version, base.name, tuple(steps), base.sequence, base.created_at, base.updated_at,
                base.body, base.quiet, base.throttle, base.by_engagement, order, base)
        return found

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            **self.body,
            "createdAt": iso(self.created_at),
            "updatedAt": iso(self.updated_at),
        }


def _unknown_keys(obj: Mapping[str, Any], allowed: set[str], path: str) -> list[Detail]:
    names = ", ".join(sorted(allowed))
    return [(f"{path}.{k}", f"unknown field {k!r}; allowed: {names}") for k in obj if k not in allowed]


def _spelled(value: Any, limit: int = 40) -> str:
    """`value` as the client wrote it in JSON (shortened), for messages."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _check_step(raw: Any, i: int, sequence: bool, terminal: bool, seen: set[str]) -> list[Detail]:
    path = f"$.channels[{i}]"
    if not isinstance(raw, dict):
        return [(path, "must be an object")]
    errs = _unknown_keys(raw, _STEP_KEYS, path)
    channel = raw.get("channel")
    if channel not in CHANNELS:
        errs.append((f"{path}.channel", f"channel {channel!r} is not one of {', '.join(CHANNELS)}"))
        channel = None
    elif channel in seen:
        errs.append((f"{path}.channel", f"channel {channel!r} appears twice; a template holds one step per channel"))
    else:
        seen.add(channel)
    content = raw.get("content", {})
    if not isinstance(content, dict):
        errs.append((f"{path}.content", "content must be an object"))
    needs_wait = sequence and not terminal
    for key in ("stopCondition", "waitMinutes"):
        if needs_wait and key not in raw:
            errs.append((f"{path}.{key}", f"{key} is required on every step of a sequence but the last"))
        elif not needs_wait and key in raw:
            why = "the terminal step of a sequence" if sequence else "a template without a sequence"
            errs.append((f"{path}.{key}", f"{key} is not allowed on {why}"))
    if needs_wait and "stopCondition" in raw:
        cond = raw["stopCondition"]
        if cond not in ENGAGEMENT:
            errs.append((f"{path}.stopCondition", f"stopCondition {cond!r} is not one of {', '.join(ENGAGEMENT)}"))
        elif channel is not None and cond not in CHANNEL_SIGNALS[channel]:
            errs.append((f"{path}.stopCondition", f"{channel} emits no {cond} signal; use one of "
                         + ", ".join(s for s in ENGAGEMENT if s in CHANNEL_SIGNALS[channel])))
    if needs_wait and "waitMinutes" in raw:
        wait = raw["waitMinutes"]
        if type(wait) is not int or wait not in WAIT_MINUTES:  # not 5.0, "5" or true either
            errs.append((f"{path}.waitMinutes", f"waitMinutes {_spelled(wait)} is not allowed; "
                         f"use one of {_ALLOWED_WAITS}"))
    return errs


def validate_template(template_id: str, body: Any) -> list[Detail]:
    """Every rule of API.md § Validation; an empty list means valid."""
    errs: list[Detail] = []
    if not TEMPLATE_ID.fullmatch(template_id or ""):
        errs.append(("$.id", f"template id {template_id!r} must match [a-z0-9][a-z0-9_-]{{0,63}}"))
    if not isinstance(body, dict):
        return errs + [("$", "a template must be a JSON object")]
    errs += _unknown_keys(body, _TEMPLATE_KEYS, "$")
    name = body.get("name", template_id)
    if not isinstance(name, str):
        errs.append(("$.name", "name must be a string"))
    config = body.get("config", {})
    sequence = engagement = False
    if not isinstance(config, dict):
        errs.append(("$.config", "config must be an object"))
    else:
        errs += _unknown_keys(config, _CONFIG_KEYS, "$.config")
        sequence = config.get("sequenceEnabled", False)
        if not isinstance(sequence, bool):
            errs.append(("$.config.sequenceEnabled", "sequenceEnabled must be true or false"))
            sequence = False
        errs += _check_config(config, sequence)
        engagement = config.get("order") == "engagement"
    channels = body.get("channels")
    if not isinstance(channels, list) or not channels:
        return errs + [("$.channels", "channels must be a list of 1 to 4 steps")]
    if len(channels) > len(CHANNELS):
        errs.append(("$.channels", f"{len(channels)} steps given; at most one per channel ({len(CHANNELS)})"))
    if sequence and len(channels) < 2:
        errs.append(("$.channels", "a sequence needs at least two steps"))
    seen: set[str] = set()
    for i, raw in enumerate(channels):
        errs += _check_step(raw, i, sequence, i == len(channels) - 1 and not engagement, seen)
    return errs


def _check_config(config: Mapping[str, Any], sequence: bool) -> list[Detail]:
    errs: list[Detail] = []
    quiet = config.get("quietHours")
    if quiet is not None:
        path = "$.config.quietHours"
        if not isinstance(quiet, dict):
            return [(path, 'quietHours must be an object like {"start": "22:00", "end": "08:00"}')]
        errs += _unknown_keys(quiet, {"start", "end", "channels"}, path)
        for key in ("start", "end"):
            if parse_hhmm(quiet.get(key)) is None:
                errs.append((f"{path}.{key}", f"{key} {_spelled(quiet.get(key))} must be a 24-hour time HH:MM, "
                             "like 22:00"))
        if parse_hhmm(quiet.get("start")) is not None and quiet.get("start") == quiet.get("end"):
            errs.append((f"{path}.end", "end must differ from start (hours of no length are no quiet hours)"))
        listed = quiet.get("channels", ["push"])  # absent: every channel but inapp
        quieted = ", ".join(c for c in CHANNELS if c != "inapp")
        if not isinstance(listed, list) or not listed or any(c not in CHANNELS for c in listed):
            errs.append((f"{path}.channels", f"channels must be a non-empty list of {quieted}"))
        elif len(set(listed)) != len(listed):
            errs.append((f"{path}.channels", "a channel is listed twice"))
        elif set(listed) == {"inapp"}:
            errs.append((f"{path}.channels", f"inapp is never deferred (rule 12); list some of {quieted}"))
    throttle = config.get("throttle")
    if throttle is not None:
        path = "$.config.throttle"
        if not isinstance(throttle, dict):
            return errs + [(path, 'throttle must be an object like {"limit": 3, "windowMinutes": 60}')]
        errs += _unknown_keys(throttle, {"limit", "windowMinutes"}, path)
        for key, low, high in (("limit", 1, 1000), ("windowMinutes", 1, 10080)):
            value = throttle.get(key)
            if type(value) is not int or not low <= value <= high:
                errs.append((f"{path}.{key}", f"{key} {_spelled(value)} must be a whole number from {low} to {high}"))
    order = config.get("order", "template")
    if order not in _ORDERS:
        errs.append(("$.config.order", f"order {_spelled(order)} is not one of {', '.join(_ORDERS)}"))
    elif order == "engagement" and not sequence:
        errs.append(("$.config.order", "order engagement orders a sequence; set sequenceEnabled to true"))
    return errs


def _build(template_id: str, version: int, body: dict[str, Any], created: float, now: float) -> TemplateVersion:
    config = body.get("config", {})
    sequence = bool(config.get("sequenceEnabled", False))
    by_engagement = config.get("order") == "engagement"
    steps = []
    last = len(body["channels"]) - 1
    for i, raw in enumerate(body["channels"]):
        cond = raw.get("stopCondition")
        rank = ENGAGEMENT.index(cond) if cond else -1
        wait_s = float(raw.get("waitMinutes", 0)) * 60.0
        terminal = i == last and by_engagement  # its condition counts for engagement only
        steps.append(Step(
            number=i + 1,
            channel=raw["channel"],
            stop_rank=-1 if terminal else rank,
            wait_s=0.0 if terminal else wait_s,
            content=CompiledContent(raw.get("content", {})),
            signal_mask=sum(1 << k for k, name in enumerate(SIGNALS) if name in CHANNEL_SIGNALS[raw["channel"]]),
            engage_rank=rank,
            engage_s=wait_s,
        ))
    normal_config: dict[str, Any] = {"sequenceEnabled": sequence}
    quiet = throttle = None
    if "quietHours" in config:
        q = config["quietHours"]
        listed = q.get("channels", [c for c in CHANNELS if c != "inapp"])
        quiet = QuietHours(parse_hhmm(q["start"]) or 0, parse_hhmm(q["end"]) or 0,
                           frozenset(c for c in listed if c != "inapp"))  # rule 12: inapp is never deferred
        normal_config["quietHours"] = {"start": q["start"], "end": q["end"], "channels": list(listed)}
    if "throttle" in config:
        t = config["throttle"]
        throttle = (t["limit"], t["windowMinutes"] * 60.0)
        normal_config["throttle"] = {"limit": t["limit"], "windowMinutes": t["windowMinutes"]}
    if "order" in config:
        normal_config["order"] = config["order"]
    normal = {
        "name": body.get("name", template_id),
        "channels": [{**raw, "content": raw.get("content", {})} for raw in body["channels"]],
        "config": normal_config,
    }
    return TemplateVersion(template_id, version, normal["name"], tuple(steps), sequence, created, now, normal,
                           quiet, throttle, by_engagement)


class TemplateRegistry:
    """Every version of every template; thread-safe, shared by all shards."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: dict[str, TemplateVersion] = {}
        self._versions: dict[tuple[str, int], TemplateVersion] = {}
        self._last_version: dict[str, int] = {}

    def put(self, template_id: str, body: Any, now: float) -> tuple[TemplateVersion, bool]:
        """Validate and store a new version; returns it and whether it was a create."""
        errs = validate_template(template_id, body)
        if errs:
            raise TemplateInvalid(f"template {template_id!r} is invalid: {errs[0][1]}", errs)
        with self._lock:
            previous = self._current.get(template_id)
            version = self._last_version.get(template_id, 0) + 1
            created = previous.created_at if previous else now
            tv = _build(template_id, version, body, created, now)
            self.install(tv)
            return tv, previous is None

    def install(self, tv: TemplateVersion) -> None:
        """Store an already built version (recovery and `put`)."""
        self._current[tv.id] = tv
        self._versions[(tv.id, tv.version)] = tv
        self._last_version[tv.id] = max(tv.version, self._last_version.get(tv.id, 0))

    def restore(self, template_id: str, version: int, body: dict[str, Any], created: float, updated: float) -> TemplateVersion:
        tv = _build(template_id, version, body, created, updated)
        with self._lock:
            self.install(tv)
        return tv

    def get(self, template_id: str) -> TemplateVersion:
        tv = self._current.get(template_id)
        if tv is None:
            raise NotFound(f"template {template_id!r} does not exist")
        return tv

    def current(self, template_id: str) -> TemplateVersion | None:
        return self._current.get(template_id)

    def version(self, template_id: str, version: int) -> TemplateVersion | None:
        return self._versions.get((template_id, version))

    def delete(self, template_id: str) -> TemplateVersion:
        with self._lock:
            tv = self._current.pop(template_id, None)
        if tv is None:
            raise NotFound(f"template {template_id!r} does not exist")
        return tv

    def all_versions(self) -> list[TemplateVersion]:
        with self._lock:
            return list(self._versions.values())

    def all(self) -> list[TemplateVersion]:
        return sorted(self._current.values(), key=lambda tv: tv.id)

    def known(self, template_id: str) -> bool:
        return template_id in self._last_version
