"""Records: round trip, compact encoding, crash safety, and bad input."""

import asyncio
import gzip
import json
import time
import zlib
from datetime import datetime
from pathlib import Path

import pytest

from soaktop.engine.backends.fake import FakeBackend
from soaktop.engine.errors import RecordError
from soaktop.engine.events import (
    EndReason,
    GpuSample,
    HostSample,
    Mark,
    Phase,
    PhaseReason,
    RequestDone,
    SessionEnd,
    SessionStart,
    TokensArrived,
)
from soaktop.engine.records.format import (
    FLUSH_INTERVAL_S,
    RecordReader,
    RecordWriter,
    decode,
    default_path,
    encode,
)

EVENTS = [
    SessionStart(0, 1, "2026-11-23T10:00:00+00:00", {"concurrency": 2}, {"python": "3.11"},
                 {"kind": "fake"}),
    Phase(10, 0, 2, "m", "fake", "start", True),
    RequestDone(5_000, 0, 0, 0, "fake", "m", 100, 16, (1200, 1300, 1450), 1500, "length",
                warmup=True),
    RequestDone(6_000, 1, 1, 0, "fake", "m", 200, 16, (900, 1900), 2000, "length",
                arrival_tokens=(3, 2)),
    RequestDone(7_000, 0, 2, 0, "fake", "m", 300, 16, (), 50, "error",
                error_class="http_500", error_message="Internal <b>[red]error"),
    GpuSample(8_000, 0, temperature_c=61.0, clock_event_reasons=("sw_power_cap",)),
    HostSample(8_500, cpu_percent=12.5),
    Mark(9_000, "fan noise [bold]"),
    SessionEnd(10_000, "completed"),
]


def test_every_event_kind_round_trips_exactly():
    for event in EVENTS:
        assert decode(json.loads(json.dumps(encode(event)))) == event


def test_phase_reasons_are_the_enum_and_written_as_the_same_strings():
    line = '{"type":"phase","t_ns":5,"phase_id":1,"concurrency":4,"model":"m","backend":"f",'
    old = decode(json.loads(line[:-1] + ',"reason":"slo search"}'))  # a record of any age
    assert old.reason is PhaseReason.SLO_SEARCH
    assert json.loads(json.dumps(encode(old)))["reason"] == "slo search"
    unknown = decode(json.loads(line[:-1] + ',"reason":"bench"}'))  # one this soaktop lacks
    assert unknown.reason == "bench" and type(unknown.reason) is str


def test_end_reasons_are_the_enum_and_written_as_the_same_strings():
    ended = decode(json.loads('{"type":"session_end","t_ns":9,"reason":"interrupted"}'))
    assert ended.reason is EndReason.INTERRUPTED
    assert json.loads(json.dumps(encode(ended)))["reason"] == "interrupted"
    unknown = decode(json.loads('{"type":"session_end","t_ns":9,"reason":"drained"}'))
    assert unknown.reason == "drained" and type(unknown.reason) is str


def test_arrivals_are_delta_encoded_integers():
    data = encode(EVENTS[2])
    assert data["arrivals_dus"] == [1200, 100, 150]
    assert "arrivals_us" not in data and "error_class" not in data  # defaults stay implicit


def test_live_only_events_are_not_written(tmp_path):
    writer = RecordWriter(tmp_path / "r.jsonl")
    writer.write(EVENTS[0])
    writer.write(TokensArrived(1, 0, 0, 1, True))
    writer.close()
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 1


def test_writer_then_reader(tmp_path):
    path = tmp_path / "r.jsonl"
    writer = RecordWriter(path)
    for event in EVENTS:
        writer.write(event)
    writer.close()
    reader = RecordReader(path)
    assert list(reader.events()) == EVENTS and reader.warnings == []


async def test_flushed_within_a_second_while_running(tmp_path, make_session):
    session, _ = make_session(FakeBackend(itl_s=0.001), record=True, concurrency=2,
                              output_tokens=20, duration_s=3.0)

    async def peek():
        await asyncio.sleep(1.6)
        return session.record_path.read_text()

    text, _ = await asyncio.gather(peek(), session.run())
    lines = text.splitlines()
    assert json.loads(lines[0])["type"] == "session_start"
    assert sum('"request_done"' in line for line in lines) > 10  # readable mid-run


def test_a_line_cut_by_a_kill_is_dropped_with_a_warning(tmp_path):
    path = tmp_path / "r.jsonl"
    text = "".join(json.dumps(encode(e)) + "\n" for e in EVENTS[:4])
    path.write_text(text + json.dumps(encode(EVENTS[4]))[:25])
    reader = RecordReader(path)
    assert list(reader.events()) == EVENTS[:4]
    assert reader.warnings == ["line 5: cut short (the writer was stopped)"]


def test_a_corrupt_middle_line_is_named_and_the_rest_used(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = [json.dumps(encode(e)) for e in EVENTS]
    lines[3] = "{not json"
    path.write_text("\n".join(lines) + "\n")
    reader = RecordReader(path)
    events = list(reader.events())
    assert len(events) == len(EVENTS) - 1 and events[-1] == EVENTS[-1]
    assert reader.warnings == ["line 4: unreadable (JSONDecodeError)"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty"),
        ("hello\n", "is not a soaktop record"),
        (json.dumps(encode(EVENTS[1])) + "\n", "is not a soaktop record"),
        (json.dumps({**encode(EVENTS[0]), "schema_version": 99}) + "\n", "schema v99"),
        (json.dumps({**encode(EVENTS[0]), "schema_version": "1"}) + "\n",
         "is not a soaktop record"),
    ],
)
def test_bad_files_get_one_line_errors(tmp_path, content, message):
    path = tmp_path / "r.jsonl"
    path.write_text(content)
    with pytest.raises(RecordError, match=message) as info:
        list(RecordReader(path).events())
    assert "\n" not in str(info.value)


def test_missing_file_and_existing_target(tmp_path):
    with pytest.raises(RecordError, match="no such record"):
        list(RecordReader(tmp_path / "nope.jsonl").events())
    (tmp_path / "r.jsonl").write_text("")
    with pytest.raises(RecordError, match="already exists"):
        RecordWriter(tmp_path / "r.jsonl")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_stops_recording_but_not_the_caller(tmp_path):
    writer = RecordWriter(tmp_path / "r.jsonl")
    writer._file = open("/dev/full", "wb")  # every write fails with ENOSPC, as on a full disk
    writer.write(EVENTS[0])
    writer.close()  # does not raise
    assert writer.error == (
        f"recording stopped: cannot write {tmp_path / 'r.jsonl'}: No space left on device"
    )
    writer.write(EVENTS[1])  # later writes are dropped quietly


def test_default_name_follows_the_design():
    path = default_path(Path("sessions"), datetime(2026, 11, 23, 9, 5, 7), "gpu box/1", "llama-1b")
    assert path == Path("sessions/20261123-090507_gpu-box-1_llama-1b.jsonl.gz")


def _write(path, events):
    writer = RecordWriter(path)
    for event in events:
        writer.write(event)
    writer.close()
    assert writer.error is None


def _members(path):
    """The byte ranges of the gzip members in ``path``, found by decompressing them in turn."""
    data, spans, start = path.read_bytes(), [], 0
    while start < len(data):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        inflater.decompress(data[start:])
        end = len(data) - len(inflater.unused_data)
        spans.append((start, end))
        start = end
    return spans


def _write_in_batches(path, batches):
    """One writer flush per batch: each becomes a gzip member of its own."""
    writer = RecordWriter(path)
    for batch in batches:
        for event in batch:
            writer.write(event)
        time.sleep(FLUSH_INTERVAL_S * 2.5)
    writer.close()


def test_a_gz_record_is_gzip_that_zcat_reads_and_round_trips(tmp_path):
    path = tmp_path / "r.jsonl.gz"
    _write(path, EVENTS)
    with gzip.open(path, "rt") as handle:  # what zcat | jq sees
        assert [decode(json.loads(line)) for line in handle] == EVENTS
    reader = RecordReader(path)
    assert list(reader.events()) == EVENTS and reader.warnings == []
    assert reader.header == EVENTS[0]


def test_a_kill_mid_member_keeps_the_whole_members_before_it(tmp_path):
    path = tmp_path / "r.jsonl.gz"
    _write_in_batches(path, [EVENTS[:3], EVENTS[3:6], EVENTS[6:]])
    spans = _members(path)
    assert len(spans) == 3
    data = path.read_bytes()
    cut = spans[2][0] + (spans[2][1] - spans[2][0]) // 2  # the last member, half written
    path.write_bytes(data[:cut])
    reader = RecordReader(path)
    events = list(reader.events())
    whole = _whole_lines_before(data[spans[2][0]:cut])
    assert events == EVENTS[:6 + whole]
    assert reader.warnings and "cut short" in reader.warnings[-1]


def _whole_lines_before(member_start):
    """How many whole lines the start of a cut gzip member holds: what zlib can inflate of
    it, up to its last newline."""
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(member_start).count(b"\n")


def test_a_kill_mid_member_keeps_every_whole_line_of_the_cut_member(tmp_path):
    """A member cut short still holds the lines it inflates to before the cut: each cut that
    leaves one, two or all three of its lines whole (its trailer cut) gives back exactly
    those, not fewer."""
    path = tmp_path / "r.jsonl.gz"
    _write_in_batches(path, [EVENTS[:3], EVENTS[3:6], EVENTS[6:]])
    start, end = _members(path)[2]
    data = path.read_bytes()
    cuts = {}  # whole lines left -> the first cut that leaves them
    for cut in range(start + 1, end):
        cuts.setdefault(_whole_lines_before(data[start:cut]), cut)
    assert {1, 2, 3} <= cuts.keys(), cuts
    for whole in (1, 2, 3):
        path.write_bytes(data[:cuts[whole]])
        reader = RecordReader(path)
        assert list(reader.events()) == EVENTS[:6 + whole], whole
        assert reader.warnings and "cut short" in reader.warnings[-1]


def test_a_corrupt_member_loses_only_its_own_lines(tmp_path):
    path = tmp_path / "r.jsonl.gz"
    _write_in_batches(path, [EVENTS[:3], EVENTS[3:6], EVENTS[6:]])
    spans = _members(path)
    data = bytearray(path.read_bytes())
    middle = (spans[1][0] + spans[1][1]) // 2
    data[middle] ^= 0xFF  # one flipped byte inside the second member
    path.write_bytes(bytes(data))
    reader = RecordReader(path)
    events = list(reader.events())
    assert events[:3] == EVENTS[:3] and events[-3:] == EVENTS[6:]
    assert len(reader.warnings) == 1
    assert reader.warnings[0].startswith("after line 3: corrupt compressed block")


@pytest.mark.parametrize("name", ["r.jsonl", "r.jsonl.gz"])
async def test_follow_yields_events_as_another_writer_puts_them_down(tmp_path, name):
    path = tmp_path / name
    writer = RecordWriter(path)
    seen: list = []

    async def follow():
        async for event in RecordReader(path).follow(poll_s=0.05):
            seen.append(event)

    follower = asyncio.ensure_future(follow())
    for event in EVENTS[:4]:
        writer.write(event)
    await asyncio.sleep(FLUSH_INTERVAL_S * 3)
    assert seen == EVENTS[:4] and not follower.done()  # caught up, still following
    for event in EVENTS[4:]:
        writer.write(event)
    await asyncio.wait_for(follower, timeout=5)  # ends by itself at session_end
    writer.close()
    assert seen == EVENTS


def test_a_folder_is_not_a_record(tmp_path):
    with pytest.raises(RecordError, match="is a folder"):
        list(RecordReader(tmp_path).events())


def test_a_gzip_file_with_no_readable_block_is_not_a_record(tmp_path):
    path = tmp_path / "r.jsonl.gz"
    data = bytearray(gzip.compress(b"".join(json.dumps(encode(e)).encode() + b"\n"
                                            for e in EVENTS)))
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RecordError, match="holds no readable line"):
        list(RecordReader(path).events())


@pytest.mark.parametrize("compressed", [True, False])
@pytest.mark.parametrize("read_slice, inflate_slice", [(7, 5), (1, 1), (64, 3)])
def test_reading_a_slice_at_a_time_reads_what_one_read_does(
        tmp_path, monkeypatch, compressed, read_slice, inflate_slice):
    """The reader takes a file a megabyte at a time and hands zlib 64 KiB at a time (memory
    and speed on long records); slices that cut members, lines and the gzip magic anywhere
    give the same events and warnings: a corrupt member's lines lost, a cut one's tail."""
    import soaktop.engine.records.format as fmt

    path = tmp_path / ("r.jsonl.gz" if compressed else "r.jsonl")
    text = [("".join(json.dumps(encode(e)) + "\n" for e in part)).encode()
            for part in (EVENTS[:3], EVENTS[3:6], EVENTS[6:8], EVENTS[8:])]
    if compressed:
        members = [gzip.compress(t, mtime=0) for t in text]
        broken = bytearray(members[1])
        broken[len(broken) // 2] ^= 0xFF
        members[1] = bytes(broken)
        members[3] = members[3][: len(members[3]) // 2]  # the writer killed mid-member
        path.write_bytes(b"".join(members))
    else:
        path.write_bytes(b"".join(text)[:-3])  # the last line cut short
    whole = RecordReader(path)
    expected = list(whole.events())
    assert expected[:3] == EVENTS[:3] and len(whole.warnings) == (2 if compressed else 1)
    assert expected[-2:] == EVENTS[6:8] if compressed else expected == EVENTS[:-1]
    monkeypatch.setattr(fmt, "_READ_SLICE", read_slice)
    monkeypatch.setattr(fmt, "_INFLATE_SLICE", inflate_slice)
    sliced = RecordReader(path)
    assert list(sliced.events()) == expected
    assert [w.split(" (")[0] for w in sliced.warnings] == \
        [w.split(" (")[0] for w in whole.warnings]


def test_offsets_that_are_not_integers_make_an_unreadable_line():
    line = json.loads(json.dumps(encode(EVENTS[2])))
    for bad in ([1.5, 2], ["1", "2"]):
        with pytest.raises(TypeError):
            decode({**line, "arrivals_dus": bad})


def test_a_request_line_read_raw_fails_exactly_where_decode_fails():
    """``RecordReader.events(raw_requests=True)`` hands a request_done line on as its dict,
    checked by check_request_line instead of made into an event: each malformed line must
    raise what decode raises (the warning names the exception), each good one nothing."""
    from soaktop.engine.records.format import check_request_line

    line = json.loads(json.dumps(encode(EVENTS[2])))
    cases = [
        {}, {"arrivals_dus": [1.5, 2]}, {"arrivals_dus": ["1", "2"]}, {"arrivals_dus": [True]},
        {"arrivals_dus": [True, True]}, {"arrivals_dus": [1, 2.5, -2.5]},
        {"arrivals_dus": "12"}, {"arrivals_dus": 5}, {"arrivals_dus": None},
        {"arrivals_dus": [[1], [2]]}, {"arrivals_dus": {"a": 1}}, {"arrivals_dus": [7]},
        {"arrivals_dus": []}, {"unknown_field": 1}, {"arrival_tokens": [1, 2, 3]},
    ]
    missing = [{k: v for k, v in line.items() if k != name} for name in line if name != "type"]
    for data in [{**line, **case} for case in cases] + missing:
        try:
            decode(data)
            expected = None
        except (KeyError, TypeError) as exc:
            expected = type(exc)
        try:
            check_request_line(data)
            got = None
        except (KeyError, TypeError) as exc:
            got = type(exc)
        assert got is expected, data


@pytest.mark.parametrize("name", ["r.jsonl", "r.jsonl.gz"])
def test_raw_reading_gives_the_lines_of_the_events_and_the_same_warnings(tmp_path, name):
    path = tmp_path / name
    lines = [json.dumps(encode(e)) for e in EVENTS]
    bad = json.loads(lines[3])
    lines[3:3] = ['{"type":"request_done","t_ns":1}', json.dumps({**bad, "arrivals_dus": [1.5]}),
                  json.dumps({**bad, "surprise": 1}), "{not json"]
    text = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    plain, raw = RecordReader(path), RecordReader(path)
    events = list(plain.events())
    read = list(raw.events(raw_requests=True))
    assert events == EVENTS
    assert [type(x) is dict for x in read] == [isinstance(e, RequestDone) for e in EVENTS]
    assert [decode(x) if type(x) is dict else x for x in read] == events
    assert raw.warnings == plain.warnings and len(plain.warnings) == 4


def test_a_record_that_starts_with_a_request_is_not_a_record_read_raw_either(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(encode(e)) + "\n" for e in EVENTS[2:]))
    with pytest.raises(RecordError, match="not a soaktop record"):
        list(RecordReader(path).events(raw_requests=True))


@pytest.mark.parametrize("name", ["r.jsonl", "r.jsonl.gz"])
async def test_follow_read_raw_gives_the_lines_of_the_events_a_slice_at_a_time(
        tmp_path, monkeypatch, name):
    # attach catches up on a long record a slice at a time, request_done lines as dicts
    import soaktop.engine.records.format as fmt

    monkeypatch.setattr(fmt, "_READ_SLICE", 7)
    path = tmp_path / name
    writer = RecordWriter(path)
    for event in EVENTS:
        writer.write(event)
    writer.close()
    seen = [x async for x in RecordReader(path).follow(poll_s=0.01, raw_requests=True)]
    assert [type(x) is dict for x in seen] == [isinstance(e, RequestDone) for e in EVENTS]
    assert [decode(x) if type(x) is dict else x for x in seen] == EVENTS
