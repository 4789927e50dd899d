"""Damaged data directories, against the real `cascade serve` process (issue 4:
"a snapshot that fails its checksum is skipped for the one before, loudly; a
torn final record is cut off and logged; an unknown format version is refused
with a message that names it"), and `cascade snapshot inspect|verify`.

Every test writes through the API, stops the server (kill -9 or SIGTERM),
damages one file the way a disk or a crash would, restarts on the same data
dir and compares what the API answers with what it answered before.
"""

from __future__ import annotations

import functools
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from serverproc import (
    ADMIN,
    ROOT,
    ServerProc,
    api,
    crash_image,
    inproc_settings,
    journal_segments,
    running,
    small_workload,
    snapshot_files,
    snapshot_positions,
    state_of,
)

from cascade.durability import service as durability_module
from cascade.server import Server
from cascade.storage import VERSION, FileJournal

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]
RIDS = tuple(f"{tag}-u{i}" for tag in "abc" for i in range(4))


def frame_header(data: bytes, offset: int = 0) -> tuple[int, int]:
    """(payload length, crc32) of the frame at `offset`: <u32 LE length><u32 LE crc32(payload)><msgpack>."""
    length, crc = struct.unpack_from("<II", data, offset)
    return length, crc


def frames(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each whole frame."""
    out, pos = [], 0
    while pos + 8 <= len(data):
        length, _ = frame_header(data, pos)
        if length == 0 or pos + 8 + length > len(data):
            break
        out.append((pos, pos + 8 + length))
        pos += 8 + length
    return out


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def assert_cut_back_to(segment: Path, prefix: bytes) -> None:
    """The segment keeps `prefix` as it was, and whole records only after it (a server may append at start)."""
    data = segment.read_bytes()
    assert data[: len(prefix)] == prefix
    assert (frames(data)[-1][1] if frames(data) else 0) == len(data), "a damaged tail is still there"
    assert len(frames(data)) >= len(frames(prefix))


def set_files(data_dir: Path, position: int) -> dict[int, Path]:
    """shard -> file of the snapshot set at `position` (0 is the front)."""
    return {int(p.name.rsplit("shard", 1)[1].split(".")[0]): p for p in snapshot_files(data_dir)
            if int(p.name.split("-")[1]) == position}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", "cascade.cli", *args], capture_output=True, text=True,
                          env=env, timeout=30)


@pytest.fixture
def serve(tmp_path: Path) -> Any:
    proc = ServerProc(tmp_path, tmp_path / "data", snapshot_interval_s=3600)  # snapshots only when asked
    try:
        yield proc
    finally:
        proc.cleanup()


async def write_in_three_parts(serve: ServerProc) -> tuple[list[str], list[int], dict[str, Any]]:
    """Writes, snapshot, writes, snapshot, writes: (send ids, snapshot positions taken, state read back)."""
    serve.start()
    await serve.wait_ready()
    taken = []
    async with aiohttp.ClientSession(serve.base, headers=ADMIN) as http:
        # All recipients exist before the first snapshot: recipients created between two snapshots are lost
        # for another reason (test_crash_recovery.py::test_recipients_created_between_two_snapshots_...).
        for rid in RIDS:
            await api(http, "PUT", f"/v1/recipients/{rid}", {"email": f"{rid}@example.com"})
        ids = await small_workload(http, "a")
        taken.append((await api(http, "POST", "/v1/admin/snapshots"))["journalPosition"])
        ids += await small_workload(http, "b")
        await api(http, "POST", "/v1/admin/clock", {"advanceSeconds": 400})  # seq-a sends escalate
        taken.append((await api(http, "POST", "/v1/admin/snapshots"))["journalPosition"])
        ids += await small_workload(http, "c")
        await api(http, "POST", "/v1/events", {"messageId": f"{ids[-1]}.1", "type": "viewed"})
        state = await state_of(http, ids, RIDS)
    return ids, taken, state


async def stop(serve: ServerProc, how: str) -> None:
    if how == "kill":
        serve.kill9()
    else:
        serve.terminate()
        assert await serve.wait_exit() == 0, serve.log_text()


async def restart_and_compare(serve: ServerProc, ids: list[str], before: dict[str, Any]) -> dict[str, Any]:
    serve.start()
    await serve.wait_ready()
    async with aiohttp.ClientSession(serve.base, headers=ADMIN) as http:
        assert await state_of(http, ids, RIDS) == before
        for i, sid in enumerate(ids[:12]):  # idempotency keys survived too
            tag_i = f"a-{i}"
            async with http.post("/v1/sends", json={"template": sorted(["seq-a", "seq-b"])[i % 2],
                                                   "recipient": f"a-u{i % 4}", "data": {"order": {"id": f"a{i}"}},
                                                   "idempotencyKey": tag_i}) as r:
                assert (r.status, (await r.json())["id"]) == (200, sid)
    [recovery] = serve.events("recovery")
    return recovery


# -- a snapshot set that fails its checksum ----------------------------------------------------

@pytest.mark.parametrize("which", ["shard-file", "front-file"])
@pytest.mark.parametrize("how", ["kill", "term"])
async def test_a_corrupt_newest_snapshot_falls_back_to_the_set_before_and_the_journal(
        serve: ServerProc, how: str, which: str) -> None:
    ids, taken, before = await write_in_three_parts(serve)
    await stop(serve, how)
    positions = snapshot_positions(serve.data_dir)
    assert positions[-2:] == taken[::-1] and len(positions) == (3 if how == "term" else 2), positions
    newest, older = positions[0], positions[1]
    files = set_files(serve.data_dir, newest)
    if which == "shard-file":
        victim = max((p for shard, p in files.items() if shard > 0), key=lambda p: p.stat().st_size)
    else:
        victim = files[0]
    data = victim.read_bytes()
    header_end = frames(data)[0][1]
    flip_byte(victim, header_end + (len(data) - header_end) // 2)  # a byte in the body
    assert cli("snapshot", "verify", str(victim)).returncode == 1

    recovery = await restart_and_compare(serve, ids, before)
    assert recovery["skipped_sets"] == [newest] and recovery["snapshot_position"] == older, recovery
    loud = [line for line in serve.log_lines() if line.get("level") in ("error", "critical")
            and victim.name in line.get("msg", "") + line.get("exc", "")]
    assert loud, f"no error line names {victim.name}:\n{serve.log_text()}"


async def test_a_snapshot_set_a_crash_cut_short_is_passed_over(serve: ServerProc) -> None:
    """The newest set lost files (a kill while it was written): the older set and the journal serve."""
    ids, taken, before = await write_in_three_parts(serve)
    await stop(serve, "kill")
    files = set_files(serve.data_dir, taken[-1])
    for shard in sorted(files)[len(files) // 2:]:
        files[shard].unlink()
    recovery = await restart_and_compare(serve, ids, before)
    assert recovery["snapshot_position"] == taken[0], recovery


# -- the journal's torn tail ---------------------------------------------------------------------

@pytest.mark.parametrize("cut", ["in-frame-header", "in-payload"])
async def test_a_torn_last_journal_record_is_cut_off_and_logged(serve: ServerProc, cut: str) -> None:
    ids, taken, before = await write_in_three_parts(serve)
    async with aiohttp.ClientSession(serve.base, headers=ADMIN) as http:
        await api(http, "PUT", "/v1/recipients/torn", {"email": "torn@example.com"})  # the last record
    await stop(serve, "kill")
    segment = journal_segments(serve.data_dir)[-1]
    data = segment.read_bytes()
    start, end = frames(data)[-1]
    assert end == len(data), "the journal ends in a whole record"
    assert b"torn@example.com" in data[start:end]
    keep = start + 5 if cut == "in-frame-header" else end - 7
    with open(segment, "r+b") as f:
        f.truncate(keep)
    assert cli("snapshot", "verify", str(segment)).returncode == 1

    recovery = await restart_and_compare(serve, ids, before)
    assert recovery["snapshot_position"] == taken[-1]
    repairs = serve.events("journal_repair")
    assert repairs and repairs[0]["level"] == "warning", serve.log_text()
    assert segment.name in repairs[0]["msg"] and str(keep - start) in repairs[0]["msg"], repairs
    assert_cut_back_to(segment, data[:start])
    async with aiohttp.ClientSession(serve.base, headers=ADMIN) as http:
        await api(http, "GET", "/v1/recipients/torn", ok=(404,))  # that write never completed
        await api(http, "PUT", "/v1/recipients/after", {"email": "after@example.com"})  # and it serves
    await stop(serve, "kill")
    serve.start()
    await serve.wait_ready()
    assert not serve.events("journal_repair")
    async with aiohttp.ClientSession(serve.base, headers=ADMIN) as http:
        assert (await api(http, "GET", "/v1/recipients/after"))["email"] == "after@example.com"


async def test_a_zero_filled_journal_tail_is_cut_off_and_nothing_is_lost(serve: ServerProc) -> None:
    """A file system may leave a crashed file's tail as zeros."""
    ids, _, before = await write_in_three_parts(serve)
    await stop(serve, "kill")
    segment = journal_segments(serve.data_dir)[-1]
    sound = segment.read_bytes()
    with open(segment, "ab") as f:
        f.write(bytes(4096))
    await restart_and_compare(serve, ids, before)
    assert serve.events("journal_repair"), serve.log_text()
    assert_cut_back_to(segment, sound)


# -- a format this cascade does not know ----------------------------------------------------------

def rewrite_header(path: Path, **changes: Any) -> None:
    """Re-encode the header frame with `changes`, keeping it a well-formed frame (body and trailer untouched)."""
    data = path.read_bytes()
    start, end = frames(data)[0]
    header = msgpack.unpackb(data[start + 8:end], strict_map_key=False)
    header.update(changes)
    payload = msgpack.packb(header, use_bin_type=True)
    path.write_bytes(struct.pack("<II", len(payload), zlib.crc32(payload)) + payload + data[end:])


@pytest.mark.parametrize("shard", [0, 1])
async def test_an_unknown_snapshot_format_version_is_refused_by_name(serve: ServerProc, shard: int) -> None:
    await write_in_three_parts(serve)
    await stop(serve, "term")
    newest = snapshot_positions(serve.data_dir)[0]
    victim = set_files(serve.data_dir, newest)[shard]
    rewrite_header(victim, version=7)
    inspect = cli("snapshot", "inspect", str(victim))
    assert inspect.returncode == 1 and "version 7" in inspect.stderr, inspect

    serve.start()
    code = await serve.wait_exit(timeout=30)
    assert code != 0, serve.log_text()
    text = serve.log_text()
    assert "version 7" in text, text
    assert not serve.events("ready") and not serve.events("recovery"), text  # no silent fall back
    assert victim.exists() and snapshot_positions(serve.data_dir)[0] == newest  # nothing was deleted


# -- cascade snapshot inspect | verify ------------------------------------------------------------

async def test_cascade_snapshot_verify_and_inspect(serve: ServerProc) -> None:
    _, taken, _ = await write_in_three_parts(serve)
    await stop(serve, "term")
    files = set_files(serve.data_dir, snapshot_positions(serve.data_dir)[0])
    for shard, path in files.items():
        ok = cli("snapshot", "verify", str(path))
        assert ok.returncode == 0 and ok.stdout.startswith("ok:"), ok
        shown = cli("snapshot", "inspect", str(path))
        assert shown.returncode == 0, shown
        assert '"format": "cascade-snapshot"' in shown.stdout and f'"version": {VERSION}' in shown.stdout, shown.stdout
        assert f'"shard": {shard}' in shown.stdout and "journal_position" in shown.stdout, shown.stdout
        assert "status: ok" in shown.stdout, shown.stdout

    path = max(files.values(), key=lambda p: p.stat().st_size)
    data = path.read_bytes()
    flip_byte(path, frames(data)[0][1] + (len(data) - frames(data)[0][1]) // 2)
    bad = cli("snapshot", "verify", str(path))
    assert bad.returncode == 1 and path.name in bad.stderr, bad
    shown = cli("snapshot", "inspect", str(path))
    assert shown.returncode == 1 and '"format": "cascade-snapshot"' in shown.stdout, shown
    assert "CORRUPT" in shown.stdout, shown.stdout

    truncated = path.with_name("cut-" + path.name)
    truncated.write_bytes(data[: len(data) - 3])
    assert cli("snapshot", "verify", str(truncated)).returncode == 1
    assert cli("snapshot", "verify", str(path.with_name("missing.msgpack"))).returncode == 1
    assert cli("snapshot", "verify").returncode == 2  # usage

    segment = journal_segments(serve.data_dir)[-1]
    assert cli("snapshot", "verify", str(segment)).returncode == 0
    console = Path(sys.executable).with_name("cascade")  # the installed console script, where there is one
    if console.exists():
        run = subprocess.run([str(console), "snapshot", "verify", str(segment)], capture_output=True, text=True,
                             timeout=30)
        assert run.returncode == 0, run


# -- no sound snapshot left, and the journal already pruned ------------------------------------------

async def test_with_every_snapshot_corrupt_and_the_journal_pruned_the_server_refuses_to_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (d95e218): recovery replayed what was left of the journal with only a warning, and the
    server started without the data of the deleted segments."""
    monkeypatch.setattr(durability_module, "FileJournal", functools.partial(FileJournal, segment_bytes=2048))
    async with running(inproc_settings(tmp_path, tmp_path / "data")) as (server, http):
        for rid in RIDS:
            await api(http, "PUT", f"/v1/recipients/{rid}", {"email": f"{rid}@example.com"})
        ids = []
        for tag in "abcd":
            ids += await small_workload(http, tag[0] if tag != "d" else "a", n=4)
            await api(http, "POST", "/v1/admin/snapshots")
        before = await state_of(http, ids, RIDS)
        crash_image(server, tmp_path / "crash")
    data = tmp_path / "crash"
    segments = journal_segments(data)
    assert segments[0].name != "journal-00000000000000000000.log", "the oldest segments were pruned"
    for position in snapshot_positions(data):
        victim = set_files(data, position)[0]
        raw = victim.read_bytes()
        flip_byte(victim, frames(raw)[0][1] + 3)
    server = Server(inproc_settings(tmp_path, data))
    try:
        await server.start()
    except Exception as exc:  # refused: right, if it says why
        assert "journal" in str(exc) or "snapshot" in str(exc), exc
        return
    try:
        async with aiohttp.ClientSession(server.url, headers=ADMIN) as http:
            missing = []
            for sid in ids:
                async with http.get(f"/v1/sends/{sid}") as r:
                    if r.status != 200:
                        missing.append(sid)
            assert not missing, f"the server started without {len(missing)} of {len(ids)} acknowledged sends"
            assert await state_of(http, ids, RIDS) == before
    finally:
        await server.stop()
