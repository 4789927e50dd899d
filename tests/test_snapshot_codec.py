"""Framing and snapshot header/trailer rules of cascade.snapshots.codec."""

from __future__ import annotations

import io
import threading
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade.storage import codec
from cascade.storage.codec import (
    FORMAT,
    VERSION,
    CorruptSnapshot,
    FrameReader,
    SnapshotEncoder,
    StopReason,
    UnsupportedFormat,
    check_header,
    check_trailer,
    encode_record,
    encode_records,
    iter_frames,
    make_header,
)

RECORDS = [(3, 1234567890123 + i, 1, 2, 1764200000.123) for i in range(5)] + [{"k": "v", 1: b"\x00\xff"}]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text() | st.integers(-5, 5), inner, max_size=5),
    max_leaves=20,
)


def as_decoded(value: Any) -> Any:
    """What msgpack gives back: arrays as tuples."""
    if isinstance(value, (list, tuple)):
        return tuple(as_decoded(v) for v in value)
    if isinstance(value, dict):
        return {k: as_decoded(v) for k, v in value.items()}
    return value


def read_all(source: Any) -> tuple[list[Any], FrameReader]:
    reader = iter_frames(source)
    return list(reader), reader


@settings(max_examples=300, deadline=None)
@given(st.lists(values, max_size=8))
def test_any_msgpack_value_round_trips_through_frames(records: list[Any]) -> None:
    data = encode_records(records)
    assert data == b"".join(encode_record(r) for r in records)
    for source in (data, io.BytesIO(data)):
        decoded, reader = read_all(source)
        assert decoded == [as_decoded(r) for r in records]
        assert (reader.stop, reader.end, reader.records) == (StopReason.END, len(data), len(records))


def test_arrays_come_back_as_tuples_and_may_be_map_keys() -> None:
    decoded, _ = read_all(encode_record({(1, "a"): [1, [2]], 7: "seven"}))
    assert decoded == [{(1, "a"): (1, (2,)), 7: "seven"}]


def test_frame_is_length_crc_then_msgpack_payload() -> None:
    frame = encode_record("hi")
    payload = frame[8:]
    assert frame[:4] == len(payload).to_bytes(4, "little")
    assert frame[4:8] == zlib.crc32(payload).to_bytes(4, "little")
    assert payload == b"\xa2hi"


@pytest.mark.parametrize("as_file", [False, True], ids=["buffer", "file"])
def test_torn_tail_at_every_cut_of_the_last_frame_keeps_the_frames_before_it(as_file: bool) -> None:
    data = encode_records(RECORDS)
    last_start = len(data) - len(encode_record(RECORDS[-1]))
    for cut in range(last_start + 1, len(data)):
        torn = data[:cut]
        decoded, reader = read_all(io.BytesIO(torn) if as_file else torn)
        assert decoded == [as_decoded(r) for r in RECORDS[:-1]], cut
        assert reader.stop is StopReason.TORN, cut
        assert reader.end == last_start, cut
        assert f"byte {last_start}" in reader.detail


def test_every_single_bit_flip_is_detected() -> None:
    data = encode_records(RECORDS)
    expected = [as_decoded(r) for r in RECORDS]
    for bit in range(len(data) * 8):
        damaged = bytearray(data)
        damaged[bit // 8] ^= 1 << (bit % 8)
        decoded, reader = read_all(bytes(damaged))
        assert reader.stop is not StopReason.END, bit
        assert decoded == expected[: len(decoded)], bit  # never a wrong record, only fewer


def test_zero_filled_tail_reads_as_bad_length_not_as_a_record() -> None:
    data = encode_records(RECORDS)
    decoded, reader = read_all(data + bytes(4096))
    assert len(decoded) == len(RECORDS)
    assert (reader.stop, reader.end) == (StopReason.BAD_LENGTH, len(data))


def test_absurd_length_is_reported_with_its_offset() -> None:
    data = encode_records(RECORDS[:2])
    bogus = (codec.MAX_FRAME_BYTES + 1).to_bytes(4, "little") + bytes(4) + b"x" * 20
    decoded, reader = read_all(io.BytesIO(data + bogus))
    assert len(decoded) == 2
    assert reader.stop is StopReason.BAD_LENGTH
    assert f"at byte {len(data)}" in reader.detail


def test_checksum_mismatch_is_reported_as_corrupt() -> None:
    data = bytearray(encode_records(RECORDS))
    data[-1] ^= 0x40
    _, reader = read_all(bytes(data))
    assert reader.stop is StopReason.CORRUPT
    assert "checksum mismatch" in reader.detail


def test_frames_larger_than_a_read_chunk_and_across_chunk_boundaries_are_read_whole() -> None:
    records = [b"a" * 700_000, "b" * 1_500_000, 1, b"c" * 300_000]
    data = encode_records(records)
    decoded, reader = read_all(io.BytesIO(data))
    assert decoded == records
    assert reader.end == len(data)
    assert reader.checksum == zlib.crc32(data[: reader.last_start])


def test_limit_stops_reading_at_that_many_bytes() -> None:
    data = encode_records(RECORDS)
    first_two = len(encode_records(RECORDS[:2]))
    reader = FrameReader(io.BytesIO(data), limit=first_two)
    assert len(list(reader)) == 2
    assert reader.stop is StopReason.END


def test_oversized_record_is_refused_at_encode_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "MAX_FRAME_BYTES", 100)
    encode_records([b"x" * 90])
    with pytest.raises(ValueError, match="frame limit"):
        encode_records([b"x" * 200])


def test_encoding_from_many_threads_at_once_gives_intact_frames() -> None:
    results: list[bytes] = []

    def work(n: int) -> None:
        results.append(encode_records([(n, i, "x" * (i % 7)) for i in range(2000)]))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for data in results:
        decoded, reader = read_all(data)
        assert reader.stop is StopReason.END
        assert [r[1] for r in decoded] == list(range(2000))


def header(**changes: Any) -> dict[str, Any]:
    h = make_header(3, 1200, {"sends": 10}, 1764200000.5, clock=99.0)
    h.update(changes)
    return h


def test_header_carries_format_version_position_counts_and_extra_keys() -> None:
    h = check_header(header())
    assert h == {
        "format": FORMAT, "version": VERSION, "shard": 3, "journal_position": 1200,
        "counts": {"sends": 10}, "created_at": 1764200000.5, "clock": 99.0,
    }


def test_unknown_version_is_refused_naming_it_and_the_supported_one() -> None:
    with pytest.raises(UnsupportedFormat, match=rf"version 99.*reads 'cascade-snapshot' version {VERSION}") as info:
        check_header(header(version=99))
    assert info.value.found_version == 99


def test_a_snapshot_of_an_earlier_format_is_refused_too() -> None:
    with pytest.raises(UnsupportedFormat, match=rf"version 1.*reads 'cascade-snapshot' version {VERSION}"):
        check_header(header(version=1))


def test_unknown_format_name_is_refused_naming_it() -> None:
    with pytest.raises(UnsupportedFormat, match="'other-thing'"):
        check_header(header(format="other-thing"))


def test_a_first_record_that_is_no_header_is_corrupt() -> None:
    with pytest.raises(CorruptSnapshot, match="not a snapshot header"):
        check_header((1, 2, 3))
    with pytest.raises(CorruptSnapshot, match="journal_position"):
        check_header({k: v for k, v in header().items() if k != "journal_position"})


def test_encoder_trailer_counts_body_records_and_checksums_their_frames() -> None:
    encoder = SnapshotEncoder(header())
    head = encoder.begin()
    body = encoder.encode(RECORDS[:3]) + encoder.encode(RECORDS[3:])
    data = head + body + encoder.end()
    decoded, reader = read_all(data)
    assert check_header(decoded[0]) == header()
    assert decoded[1:-1] == [as_decoded(r) for r in RECORDS]
    trailer = decoded[-1]
    assert trailer == {"trailer": True, "records": len(RECORDS), "checksum": zlib.crc32(body)}
    check_trailer(trailer, len(RECORDS), zlib.crc32(body), "x", 0)
    with pytest.raises(CorruptSnapshot, match="checksum"):
        check_trailer(trailer, len(RECORDS), zlib.crc32(body) ^ 1, "x", 0)
    with pytest.raises(CorruptSnapshot, match="records"):
        check_trailer(trailer, len(RECORDS) - 1, zlib.crc32(body), "x", 0)
