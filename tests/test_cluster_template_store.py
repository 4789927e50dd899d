"""Templates in a JetStream key-value bucket, against real nats-server processes:
every node's registry follows the bucket, versions stay monotonic across
nodes and readable forever, deletions take a slot, reassert undoes a
recovery's older records."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cascade.domain.errors import NotFound, TemplateInvalid
from cascade.domain.templates import TemplateRegistry
from nats_servers import nats_cluster, nats_server, wait_for  # fixtures, used by name

pytestmark = pytest.mark.timeout(60)

Node = Callable[..., Any]  # () -> TemplateStore on a client of its own, opened


def body(text: str = "hi") -> dict[str, Any]:
    return {"name": text, "channels": [{"channel": "inapp", "stopCondition": "viewed", "waitMinutes": 5,
                                        "content": {"t": text}}, {"channel": "email"}],
            "config": {"sequenceEnabled": True}}


def nodes(urls: list[str], **options: Any) -> Iterator[Node]:
    from cascade.cluster.client import NatsThread
    from cascade.cluster.template_store import TemplateStore

    opened: list[tuple[Any, Any]] = []

    def node(registry: TemplateRegistry | None = None) -> Any:
        client = NatsThread(urls, name=f"node{len(opened)}")
        store = TemplateStore(client, registry or TemplateRegistry(), bucket="test-templates", **options)
        opened.append((client, store))
        return store.open()

    yield node
    for client, store in opened:
        store.close()
        client.close()


@pytest.fixture
def node(nats_server: Any) -> Iterator[Node]:
    yield from nodes(nats_server.urls)


def current_version(store: Any, template: str) -> int | None:
    tv = store.registry.current(template)
    return None if tv is None else int(tv.version)


def test_a_put_on_one_node_becomes_current_on_the_other_within_a_bounded_wait(node: Node) -> None:
    a, b = node(), node()
    tv, created = a.put("welcome", body("one"), 100.0)
    assert (tv.id, tv.version, created) == ("welcome", 1, True)
    assert a.registry.current("welcome") is tv  # installed before put returned
    wait_for(lambda: current_version(b, "welcome") == 1, what="node b seeing version 1")
    seen = b.registry.current("welcome")
    assert seen.body == tv.body and (seen.created_at, seen.updated_at) == (100.0, 100.0)
    tv2, created = b.put("welcome", body("two"), 200.0)
    assert (tv2.version, created, tv2.created_at, tv2.updated_at) == (2, False, 100.0, 200.0)
    wait_for(lambda: current_version(a, "welcome") == 2, what="node a seeing version 2")
    assert a.registry.version("welcome", 1) is tv  # the watcher skipped a's own slot: not rebuilt


def test_concurrent_puts_from_two_nodes_get_distinct_consecutive_versions(node: Node) -> None:
    stores = [node(), node()]
    made: list[list[int]] = [[], []]
    start = threading.Barrier(2)

    def writer(i: int) -> None:
        start.wait(5)
        for k in range(15):
            made[i].append(stores[i].put("race", body(f"{i}-{k}"), 1.0 + k)[0].version)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads)
    assert sorted(made[0] + made[1]) == list(range(1, 31))
    assert made[0] == sorted(made[0]) and made[1] == sorted(made[1])
    for store in stores:
        wait_for(lambda store=store: current_version(store, "race") == 30, what="every version on every node")
        for i, versions in enumerate(made):
            for k, version in enumerate(versions):
                assert store.registry.version("race", version).name == f"{i}-{k}"


def test_a_node_behind_the_bucket_loses_the_slot_rereads_the_template_and_takes_the_next(node: Node) -> None:
    a, behind = node(), node()
    behind.close()  # stops following: its view stays at nothing
    for k in range(1, 4):
        a.put("stale", body(f"v{k}"), float(k))
    assert behind.registry.current("stale") is None
    tv, created = behind.put("stale", body("v4"), 10.0)
    assert (tv.version, created, tv.created_at) == (4, False, 1.0)  # versions 1-3 were read back first
    assert [behind.registry.version("stale", k).name for k in (1, 2, 3)] == ["v1", "v2", "v3"]
    wait_for(lambda: current_version(a, "stale") == 4, what="node a seeing version 4")


def test_every_version_survives_reopening_into_a_fresh_registry_and_the_last_is_current(node: Node) -> None:
    a = node()
    for k in range(1, 4):
        a.put("kept", body(f"v{k}"), float(k))
    a.put("other", body("o"), 9.0)
    fresh = node(TemplateRegistry())
    assert [fresh.registry.version("kept", k).name for k in (1, 2, 3)] == ["v1", "v2", "v3"]
    assert current_version(fresh, "kept") == 3 and current_version(fresh, "other") == 1
    assert fresh.registry.current("kept").created_at == 1.0
    assert fresh.put("kept", body("v4"), 10.0)[0].version == 4  # numbering goes on from what it loaded


def test_delete_then_put_continues_numbering_past_the_deletion(node: Node) -> None:
    a, b = node(), node()
    a.put("gone", body("v1"), 1.0)
    first, _ = a.put("gone", body("v2"), 2.0)
    assert a.delete("gone") is first
    assert a.registry.current("gone") is None and a.registry.version("gone", 2) is first  # still readable
    wait_for(lambda: b.registry.version("gone", 2) is not None and b.registry.current("gone") is None,
             what="node b seeing the deletion")
    with pytest.raises(NotFound, match="'gone' does not exist"):
        b.delete("gone")
    again, created = b.put("gone", body("v4"), 5.0)
    assert (again.version, created, again.created_at) == (4, True, 5.0)  # slot 3 is the deletion
    wait_for(lambda: current_version(a, "gone") == 4, what="node a seeing version 4")
    with pytest.raises(NotFound):
        a.delete("never-made")


def test_an_invalid_body_raises_template_invalid_naming_the_path_and_writes_nothing(node: Node) -> None:
    a = node()
    bad = {"channels": [{"channel": "push", "waitMinutes": 7}, {"channel": "email"}],
           "config": {"sequenceEnabled": True}}
    with pytest.raises(TemplateInvalid) as raised:
        a.put("bad", bad, 1.0)
    paths = [path for path, _ in raised.value.details]
    assert "$.channels[0].waitMinutes" in paths and "$.channels[0].stopCondition" in paths
    with pytest.raises(TemplateInvalid, match="must match"):
        a.put("Not An Id", body(), 1.0)
    assert a.registry.current("bad") is None
    assert a.client.run(a.kv.status(), 5).values == 0  # the bucket holds nothing
    fresh = node(TemplateRegistry())
    assert not fresh.registry.known("bad") and fresh.put("bad", body(), 2.0)[0].version == 1


def test_reassert_puts_the_registry_back_after_a_recovery_installed_older_versions(node: Node) -> None:
    a = node()
    a.put("t1", body("v1"), 1.0)
    newest, _ = a.put("t1", body("v2"), 2.0)
    a.put("t2", body("x"), 3.0)
    a.delete("t2")
    # What a partition recovery does with its snapshot's front records: restore, which makes each current.
    a.registry.restore("t1", 1, dict(body("v1")), 1.0, 1.0)
    a.registry.restore("t2", 1, dict(body("x")), 3.0, 3.0)
    a.registry.restore("local-only", 1, dict(body("l")), 4.0, 4.0)
    assert current_version(a, "t1") == 1 and current_version(a, "t2") == 1
    a.reassert()
    assert a.registry.current("t1") is newest
    assert a.registry.current("t2") is None and a.registry.current("local-only") is None
    assert a.registry.version("local-only", 1) is not None  # sends on it still read it


def test_a_create_whose_ack_was_lost_is_recognised_as_ours_and_not_written_twice(node: Node) -> None:
    import nats.errors

    a = node()
    create = a.kv.create

    async def lost_ack(key: str, value: bytes, **kwargs: Any) -> int:
        await create(key, value, **kwargs)
        raise nats.errors.TimeoutError

    a.kv.create = lost_ack
    tv, created = a.put("once", body(), 1.0)
    assert (tv.version, created) == (1, True)
    del a.kv.create
    assert a.put("once", body("next"), 2.0)[0].version == 2


def test_a_slot_this_cascade_cannot_read_is_skipped_but_still_taken(node: Node) -> None:
    a, b = node(), node()
    a.client.run(a.kv.create("t.odd.1", b'{"format": 99}'), 5)  # written by hand, or by a newer format
    tv, created = b.put("odd", body("readable"), 1.0)  # b loses slot 1, reads it back, skips it
    assert (tv.version, created) == (2, True)
    wait_for(lambda: current_version(a, "odd") == 2, what="node a following past the bad slot")
    assert a.registry.version("odd", 1) is None and node().put("odd", body(), 2.0)[0].version == 3


def test_close_stops_following_the_bucket(node: Node) -> None:
    a, b = node(), node()
    b.put("before", body(), 1.0)
    wait_for(lambda: current_version(a, "before") == 1, what="node a following")
    a.close()
    b.put("after", body(), 2.0)
    marker = node()  # a third node sees the put, so it was written and delivered by now
    assert current_version(marker, "after") == 1
    assert a.registry.current("after") is None


def test_ids_outside_the_plain_alphabet_get_keys_of_their_own_that_list_by_prefix() -> None:
    from nats.js.kv import _is_key_valid

    from cascade.cluster.template_store import _unescape, slot_key

    assert slot_key("welcome-2_x", 3) == "t.welcome-2_x.3"
    for odd in ("a.b", "a=2eb", "ünï code", "a>*", "x.1"):
        key = slot_key(odd, 12)
        assert _is_key_valid(key) and key.count(".") == 2
        assert _unescape(key.split(".")[1]) == odd
    assert slot_key("a.b", 1) != slot_key("a", 1) and not slot_key("x.1", 2).startswith("t.x.")


def test_a_three_server_cluster_with_three_replicas_keeps_every_nodes_registry_in_step(nats_cluster: Any) -> None:
    make = nodes(nats_cluster.urls, replicas=3)
    node = next(make)
    try:
        a, b = node(), node()
        status = a.client.run(a.kv.status(), 5)
        assert status.stream_info.config.num_replicas == 3
        a.put("wide", body("a"), 1.0)
        wait_for(lambda: current_version(b, "wide") == 1, what="node b seeing version 1")
        assert b.put("wide", body("b"), 2.0)[0].version == 2
        b.delete("wide")
        wait_for(lambda: a.registry.current("wide") is None and a.registry.version("wide", 2) is not None,
                 what="node a seeing the deletion")
        assert node(TemplateRegistry()).put("wide", body("c"), 3.0)[0].version == 4
    finally:
        next(make, None)
