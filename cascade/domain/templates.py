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
from .render import CompiledContent
from .timefmt import iso

__all__ = ["Step", "TemplateRegistry", "TemplateVersion", "validate_template", "TEMPLATE_ID"]

TEMPLATE_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_ALLOWED_WAITS = ", ".join(str(m) for m in WAIT_MINUTES)
_STEP_KEYS = {"channel", "stopCondition", "waitMinutes", "content"}
_TEMPLATE_KEYS = {"name", "channels", "config"}


@dataclass(frozen=True, slots=True)
class Step:
    number: int  # from 1
    channel: str
    stop_rank: int  # index into ENGAGEMENT; -1 for a terminal or unsequenced step
    wait_s: float
    content: CompiledContent
    signal_mask: int  # bit k set: the channel can emit SIGNALS[k]

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
    sequence = False
    if not isinstance(config, dict):
        errs.append(("$.config", "config must be an object"))
    else:
        errs += _unknown_keys(config, {"sequenceEnabled"}, "$.config")
        sequence = config.get("sequenceEnabled", False)
        if not isinstance(sequence, bool):
            errs.append(("$.config.sequenceEnabled", "sequenceEnabled must be true or false"))
            sequence = False
    channels = body.get("channels")
    if not isinstance(channels, list) or not channels:
        return errs + [("$.channels", "channels must be a list of 1 to 4 steps")]
    if len(channels) > len(CHANNELS):
        errs.append(("$.channels", f"{len(channels)} steps given; at most one per channel ({len(CHANNELS)})"))
    if sequence and len(channels) < 2:
        errs.append(("$.channels", "a sequence needs at least two steps"))
    seen: set[str] = set()
    for i, raw in enumerate(channels):
        errs += _check_step(raw, i, sequence, i == len(channels) - 1, seen)
    return errs


def _build(template_id: str, version: int, body: dict[str, Any], created: float, now: float) -> TemplateVersion:
    sequence = bool(body.get("config", {}).get("sequenceEnabled", False))
    steps = []
    for i, raw in enumerate(body["channels"]):
        cond = raw.get("stopCondition")
        steps.append(Step(
            number=i + 1,
            channel=raw["channel"],
            stop_rank=ENGAGEMENT.index(cond) if cond else -1,
            wait_s=float(raw.get("waitMinutes", 0)) * 60.0,
            content=CompiledContent(raw.get("content", {})),
            signal_mask=sum(1 << k for k, name in enumerate(SIGNALS) if name in CHANNEL_SIGNALS[raw["channel"]]),
        ))
    normal = {
        "name": body.get("name", template_id),
        "channels": [{**raw, "content": raw.get("content", {})} for raw in body["channels"]],
        "config": {"sequenceEnabled": sequence},
    }
    return TemplateVersion(template_id, version, normal["name"], tuple(steps), sequence, created, now, normal)


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
