"""`cascade send-test`: render a template's steps for one recipient and post
each provider step once through the configured provider, without a server.

Owns the command's work, not its arguments (cli.py). What it reads:
- the configuration as `cascade serve` would (file, CASCADE_* variables);
- the template, and the recipient unless `--recipient-json` gives it, from
  the data directory, read-only: the newest sound snapshot set and the
  journal after it are loaded into memory by the server's own recovery
  (`durability/recovery.py`) through a journal reader that never writes,
  so it is safe beside a running server and changes nothing on disk. It
  costs what a restart's recovery costs;
- nothing else: no send is started, nothing is journaled, no window opens.
What it posts: each step but `inapp` once, in template order, with message
id `<a fresh send id>.<step>` (so a receiver's de-duplication never drops
it), to the channel's provider, with its retries. A recipient who cannot be
reached on a channel (no address, opted out) is reported and not posted.
A Web Push subscription answered 404/410 is reported, not removed (the data
is read-only here; the server removes it at its next delivery).
Exit status: 0 when every provider step was requested, 1 otherwise, 2 for
a usage, configuration or data problem.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TextIO

from .config import Settings
from .delivery.providers.base import DeliveryOutcome, OutgoingMessage, Provider
from .domain.errors import CascadeError
from .domain.ids import format_send_id, new_send_key, slot_of
from .domain.recipients import Recipient, RecipientUpdate
from .domain.templates import TemplateVersion
from .durability.recovery import recover
from .engine import Engine, EngineConfig, ManualClock
from .storage.codec import FrameReader
from .storage.journal import JournalError, JournalStats, RecoveryReport

__all__ = ["ReadOnlyJournal", "SendTestError", "load_state", "send_test"]

_SEGMENT = re.compile(r"^journal-(\d{20})\.log$")


class SendTestError(Exception):
    """A usage or data problem; the message says which."""


class ReadOnlyJournal:
    """The journal's records for recovery, read from its segment files and
    never written: a torn or still-growing tail simply ends the replay."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            names = []
        self._starts = sorted(int(m.group(1)) for n in names if (m := _SEGMENT.match(n)))
        self._end: int | None = None
        self.recovery_report = RecoveryReport()

    def replay(self, after: int = 0) -> Iterator[tuple[int, Any]]:
        for i, start in enumerate(self._starts):
            nxt = self._starts[i + 1] if i + 1 < len(self._starts) else None
            if nxt is not None and nxt <= after:
                continue
            with open(os.path.join(self.directory, f"journal-{start:020d}.log"), "rb") as source:
                for position, record in enumerate(FrameReader(source), start + 1):
                    if position > after:
                        yield position, record

    def append(self, records: Sequence[Any], on_durable: Callable[[], None] | None = None) -> int:
        raise JournalError("send-test reads the journal and never writes it")

    def rotate(self) -> int:
        raise JournalError("send-test reads the journal and never writes it")

    def drop_before(self, position: int) -> None:
        raise JournalError("send-test reads the journal and never writes it")

    def close(self) -> None:
        return None

    def stats(self) -> JournalStats:
        end = self.position()
        return JournalStats(end, end, 0, 0, 0, 0, 0, 0.0, 0.0, (), (), 0, 0, len(self._starts))

    def position(self) -> int:
        if self._end is None:
            self._end = max((p for p, _ in self.replay(after=self._starts[-1] if self._starts else 0)),
                            default=self._starts[-1] if self._starts else 0)
        return self._end


def load_state(data_dir: str, shards: int) -> Engine:
    """An engine (not started) holding what the data directory holds. With
    the server's shard count (`engine.shards`): a journal without a snapshot
    set is replayed by the shards that wrote it."""
    engine = Engine(ManualClock(0.0), {}, EngineConfig(shards=shards, gc_freeze_interval_s=0.0))
    snapshots = os.path.join(data_dir, "snapshots")
    if not os.path.isdir(snapshots) and not os.path.isdir(os.path.join(data_dir, "journal")):
        raise SendTestError(f"{data_dir} holds no cascade data (no snapshots/ or journal/): the template is read "
                            "from there; check --data-dir or storage.data_dir")
    recoverable: Any = engine  # durability/service.py passes it the same way (Recoverable is structural)
    recover(recoverable, snapshots, ReadOnlyJournal(os.path.join(data_dir, "journal")))
    return engine


def _recipient(engine: Engine | None, rid: str, inline: dict[str, Any] | None) -> Recipient:
    if inline is not None:
        rcpt = Recipient(rid)
        try:
            RecipientUpdate(rid, inline).merge_into(rcpt, replace=True)
        except CascadeError as exc:
            raise SendTestError(f"--recipient-json: {exc}") from None
        return rcpt
    assert engine is not None
    found = engine.states[engine.shard_of_recipient(rid)].recipients.get(rid)
    if found is None:
        raise SendTestError(f"recipient {rid!r} is not in the data directory; PUT it first or pass --recipient-json")
    return found


async def _post(provider: Provider, message: OutgoingMessage) -> DeliveryOutcome:
    try:
        outcome = provider.deliver_now(message) if provider.synchronous else await provider.deliver(message)
    except Exception as exc:  # noqa: BLE001 (a provider's bug is this command's answer, not a crash)
        return DeliveryOutcome(False, f"provider_error: {exc!r}")
    return outcome


async def _run(tv: TemplateVersion, rcpt: Recipient, data: dict[str, Any] | None,
               providers: dict[str, Provider], kinds: Mapping[str, str], out: TextIO) -> bool:
    send_id = format_send_id(new_send_key(slot_of(rcpt.id)))
    view = rcpt.view()
    all_ok = True
    try:
        for step in tv.steps:
            label = f"step {step.number} {step.channel}"
            if step.channel == "inapp":
                print(f"{label}: not posted (in-app messages are the server's inbox)", file=out)
                continue
            why = rcpt.unreachable(step.channel)
            if why is not None:
                all_ok = False
                print(f"{label}: skipped: {why}", file=out)
                continue
            message = OutgoingMessage(f"{send_id}.{step.number}", send_id, tv.id, tv.version, step.number,
                                      step.channel, view, step.content.render(data, view))
            outcome = await _post(providers[step.channel], message)
            tries = f"{outcome.attempts} attempt{'' if outcome.attempts == 1 else 's'}"
            via = kinds[step.channel]
            if outcome.ok:
                print(f"{label} via {via}: requested ({tries}), message {message.message_id}", file=out)
            else:
                all_ok = False
                print(f"{label} via {via}: failed: {outcome.reason} ({tries})", file=out)
    finally:
        for provider in {id(p): p for p in providers.values()}.values():
            await provider.close()
    return all_ok


def send_test(settings: Settings, template: str, rid: str, data: dict[str, Any] | None,
              recipient_json: dict[str, Any] | None, out: TextIO) -> int:
    """Run the command; the exit status (raises SendTestError for 2)."""
    from .server import build_providers  # the same providers `cascade serve` would build

    engine = load_state(settings.storage.data_dir, settings.engine.shards)
    try:
        tv = engine.get_template(template)
    except CascadeError as exc:
        raise SendTestError(f"{exc}; templates in {settings.storage.data_dir}: "
                            f"{', '.join(t.id for t in engine.list_templates()) or 'none'}") from None
    rcpt = _recipient(engine, rid, recipient_json)

    async def gone(recipient: str, endpoints: tuple[str, ...]) -> None:
        for endpoint in endpoints:
            print(f"  subscription gone (404/410), not removed by send-test: {endpoint}", file=out)

    try:
        providers, _ = build_providers(settings, on_gone=gone)
    except ValueError as exc:
        raise SendTestError(str(exc)) from None
    kinds = {ch: settings.channel(ch).provider for ch in providers}
    return 0 if asyncio.run(_run(tv, rcpt, data, providers, kinds, out)) else 1


