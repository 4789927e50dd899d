"""Send ids: they carry their slot, print and parse back, and never repeat,
not even across worker processes forked from one server."""

from __future__ import annotations

import os

from cascade.domain.ids import (SLOTS, format_message_id, format_send_id, new_send_key, parse_message_id,
                                parse_send_id, slot_of, slot_of_key)


def test_a_send_id_carries_its_slot_and_parses_back_from_its_text() -> None:
    slot = slot_of("user-42")
    assert 0 <= slot < SLOTS
    key = new_send_key(slot)
    assert slot_of_key(key) == slot
    assert parse_send_id(format_send_id(key)) == key
    assert parse_message_id(format_message_id(key, 3)) == (key, 3)


def test_ids_do_not_repeat_over_many_draws_in_one_slot() -> None:
    keys = {new_send_key(7) for _ in range(50_000)}  # a hundred refills of the random pool
    assert len(keys) == 50_000


def test_a_forked_worker_draws_other_ids_than_its_parent() -> None:
    new_send_key(1)  # the parent's pool holds draws the child inherits unless it drops them
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        os.write(write, " ".join(str(new_send_key(1)) for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = {int(k) for k in pipe.read().split()}
    parent = {new_send_key(1) for _ in range(100)}
    assert len(child) == 100 and not child & parent
