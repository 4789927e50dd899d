"""Local NATS servers for tests and tries: ready means JetStream has a meta
leader, stop leaves no process, and failures say why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nats_servers import nats_cluster, nats_server, require_nats  # fixtures, used by name

pytestmark = pytest.mark.timeout(60)


def test_a_cluster_is_ready_once_every_server_names_the_same_meta_leader(nats_cluster: Any) -> None:
    names = {s.name for s in nats_cluster.servers}
    leaders = {s.meta_leader() for s in nats_cluster.servers}
    assert len(leaders) == 1 and leaders <= names
    assert all(s.healthy() for s in nats_cluster.servers)
    assert all(s.jsz()["meta_cluster"]["cluster_size"] == 3 for s in nats_cluster.servers)


def test_sync_always_is_passed_to_jetstream_and_the_default_fsyncs_on_an_interval(tmp_path: Path) -> None:
    require_nats()
    from cascade.cluster.natsd import local_server

    for sync_always in (True, False):
        with local_server(tmp_path / str(sync_always), sync_always=sync_always) as cluster:
            config = cluster.servers[0].jsz()["config"]
            assert bool(config.get("sync_always")) is sync_always
            assert config["store_dir"].startswith(str(tmp_path / str(sync_always)))


def test_stop_ends_every_server_process(tmp_path: Path) -> None:
    require_nats()
    from cascade.cluster.natsd import local_cluster

    cluster = local_cluster(tmp_path, 3).start()
    processes = [s.process for s in cluster.servers]
    cluster.stop()
    assert all(p is not None and p.poll() is not None for p in processes)


def test_a_server_that_cannot_start_is_reported_with_its_log(nats_server: Any, tmp_path: Path) -> None:
    from cascade.cluster.natsd import NatsCluster, NatsServerError

    taken = nats_server.servers[0].port
    clash = NatsCluster(tmp_path / "clash", 1, ready_timeout_s=10)
    server = clash.servers[0]
    server.config = server.config.replace(f"listen: 127.0.0.1:{server.port}", f"listen: 127.0.0.1:{taken}")
    with pytest.raises(NatsServerError, match="exited with"):
        clash.start()
    assert not server.alive


def test_a_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    from cascade.cluster.natsd import NatsCluster, NatsServerError

    with pytest.raises(NatsServerError, match="cannot run nats-server"):
        NatsCluster(tmp_path, 1, binary=str(tmp_path / "no-such-binary")).start()
