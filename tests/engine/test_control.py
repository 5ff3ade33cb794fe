"""The control socket, served by a real session on the fake backend and spoken to as a client
would: over the socket, line by line. Every test is bounded by the run's own duration."""

import asyncio
import contextlib
import json
import os
import socket
import stat
from pathlib import Path

import pytest

from soaktop.engine import control
from soaktop.engine.backends.fake import FakeBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.events import Mark, Phase, RequestDone, SessionEnd
from soaktop.engine.records.format import RecordReader
from soaktop.engine.session import Session


class TwoModels(FakeBackend):
    """The fake backend serving two models, the second taking ``load_s`` to get ready (as
    the local engine builds a preset); ``prepared`` lists what it was asked to ready."""

    def __init__(self, load_s: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.load_s, self.prepared = load_s, []

    async def models(self) -> list[str]:
        return ["fake", "fake-large"]

    async def prepare(self, model: str) -> None:
        self.prepared.append(model)
        await asyncio.sleep(self.load_s)


@contextlib.asynccontextmanager
async def steerable(record: Path, said: list | None = None, backend: FakeBackend | None = None,
                    **config):
    """A session writing ``record`` with its control socket, running until the block ends
    (then stopped, if nothing stopped it); yields the session once its clock runs."""
    settings = {"backend": "fake", "model": "fake", "concurrency": 2, "duration_s": 20.0,
                "output_tokens": 8, "warmup_requests": 0, **config}
    session = Session(RunConfig(**settings), backend or FakeBackend(ttft_s=0.005, itl_s=0.002),
                      record_path=record)
    server = control.serve_while_running(session, (said if said is not None else []).append)
    run = asyncio.ensure_future(session.run())
    await asyncio.wait_for(session.started.wait(), 10)
    await asyncio.sleep(0.02)  # the server's task has started accepting
    session.control = server
    try:
        yield session
    finally:
        session.stop()
        await asyncio.wait_for(run, 10)


async def ask(record: Path, **request) -> control.Reply:
    return await control.send(record, request)


def recorded(record: Path, *kinds) -> list:
    return [e for e in RecordReader(record).events() if isinstance(e, kinds)]


async def test_the_socket_is_the_owners_alone_and_is_gone_when_the_run_ends(tmp_path):
    record = tmp_path / "run.jsonl"
    async with steerable(record, duration_s=0.5) as session:
        path = control.socket_path(record)
        assert path == Path(f"{record.resolve()}.sock")  # beside the record
        info = path.stat()
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_uid == os.getuid()
        await asyncio.sleep(0.7)
        assert session.ended
    assert not os.path.lexists(path)  # removed with the run, not left stale


async def test_each_command_is_the_phase_or_mark_a_key_would_make(tmp_path):
    record = tmp_path / "run.jsonl"
    async with steerable(record) as session:
        steps = [
            (dict(cmd="concurrency", value=5), "concurrency 2 -> 5"),
            (dict(cmd="concurrency", step=1, source="key"), "concurrency 5 -> 6"),
            (dict(cmd="pause"), "paused at"),
            (dict(cmd="concurrency", value=3), "concurrency 3 on resume"),
            (dict(cmd="resume", source="key"), "resumed at concurrency 3"),
            (dict(cmd="mark", text="fans at 100%"), "'fans at 100%' marked at"),
            (dict(cmd="mark", source="key"), "'mark 1' marked at"),
        ]
        for request, says in steps:
            reply = await ask(record, **request)
            assert reply.ok and reply.text.startswith(says), (request, reply)
        assert reply.state["concurrency"] == 3 and not reply.state["paused"]
        stopped = await ask(record, cmd="stop")
        # the reply to stop comes once the record is closed: its session_end is there now
        assert stopped.ok and "the record is closed" in stopped.text
        assert session.ended
        assert isinstance(list(RecordReader(record).events())[-1], SessionEnd)
    phases = [(p.concurrency, str(p.reason)) for p in recorded(record, Phase)]
    assert phases == [(2, "start"), (5, "command"), (6, "key"), (0, "paused"),
                      (3, "key: resumed")]
    assert [m.note for m in recorded(record, Mark)] == ["fans at 100%", "mark 1"]
    end = recorded(record, SessionEnd)
    assert len(end) == 1 and end[0].reason == "interrupted"


async def test_an_open_loop_is_steered_by_its_rate(tmp_path):
    record = tmp_path / "rate.jsonl"
    async with steerable(record, rate=20.0, concurrency=1) as session:
        assert (await ask(record, cmd="rate", value=40)).text == "rate 20 -> 40 requests/s"
        assert (await ask(record, cmd="rate", factor=1.25, source="key")).text == (
            "rate 40 -> 50 requests/s")
        refused = await ask(record, cmd="concurrency", value=4)
        assert not refused.ok and "keeps a rate" in refused.text
        assert (await ask(record, cmd="pause")).ok  # while the loop waits for an arrival
        await asyncio.sleep(0.1)
        assert session.rate == 0.0 and not session.ended  # paused, not ended
        resumed = await ask(record, cmd="resume")
        assert resumed.text == "resumed at rate 50 requests/s" and session.rate == 50.0
    rates = [(p.rate, str(p.reason)) for p in recorded(record, Phase)]
    assert rates == [(20.0, "start"), (40.0, "command"), (50.0, "key"), (0.0, "paused"),
                     (50.0, "resumed")]


async def test_the_model_key_over_the_socket_lists_and_switches_models(tmp_path):
    record = tmp_path / "run.jsonl"
    backend = TwoModels(load_s=0.3, ttft_s=0.005, itl_s=0.002)
    async with steerable(record, backend=backend) as session:
        listed = await ask(record, cmd="models")
        assert listed.ok and listed.models == ("fake", "fake-large")
        assert listed.text == "2 models: fake, fake-large" and listed.state["model"] == "fake"
        unknown = await ask(record, cmd="model", name="gpt-9")
        assert not unknown.ok and "'gpt-9' is not among the 2 models" in unknown.text
        assert backend.prepared == []  # refused before the backend was asked to load it
        # the reply waits for the model to be ready; the run answers others meanwhile
        switching = asyncio.ensure_future(ask(record, cmd="model", name="fake-large",
                                              source="key"))
        await asyncio.sleep(0.1)
        during = await ask(record, cmd="status")
        assert during.ok and during.state["model"] == "fake" and not switching.done()
        switched = await switching
        assert switched.ok and switched.text == "model fake -> fake-large"
        assert switched.state["model"] == "fake-large" == session.model
        assert backend.prepared == ["fake-large"]
        same = await ask(record, cmd="model", name="fake-large")
        assert same.ok and same.text == "model stays fake-large"
        await asyncio.sleep(0.1)  # requests go to the new model
    phases = [(p.model, str(p.reason)) for p in recorded(record, Phase)]
    assert phases == [("fake", "start"), ("fake-large", "key")]
    models = {d.model for d in recorded(record, RequestDone)
              if d.sent_ns > switched.state["t_s"] * 1e9}
    assert models == {"fake-large"}


async def exchange(path: Path, lines: list[bytes]) -> list[dict]:
    """Send ``lines`` on one raw connection, then read one reply per line."""
    reader, writer = await asyncio.open_unix_connection(os.fspath(path))
    writer.write(b"".join(lines))
    await writer.drain()
    replies = [json.loads(await asyncio.wait_for(reader.readline(), 5)) for _ in lines]
    writer.close()
    return replies


async def test_two_clients_at_once_and_one_that_vanishes_leave_the_run_going(tmp_path):
    record = tmp_path / "run.jsonl"
    async with steerable(record) as session:
        path = control.socket_path(record)
        # a client that leaves mid-line and one that leaves without reading its reply
        rude, half = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
        rude.connect(os.fspath(path))
        rude.sendall(b'{"cmd": "conc')
        half.connect(os.fspath(path))
        half.sendall(b'{"cmd": "status"}\n')
        rude.close()
        half.close()
        one, two = await asyncio.gather(
            exchange(path, [b'{"cmd": "concurrency", "value": 4}\n', b'{"cmd": "status"}\n']),
            exchange(path, [b'{"cmd": "mark", "text": "from two"}\n',
                            b'{"cmd": "status"}\n']))
        assert one[0] == {"ok": True, "done": "concurrency 2 -> 4", "state": one[0]["state"]}
        assert two[0]["ok"] and two[0]["done"].startswith("'from two' marked")
        assert one[1]["state"]["concurrency"] == two[1]["state"]["concurrency"] == 4
        assert not session.ended and (await ask(record, cmd="status")).ok
    assert [m.note for m in recorded(record, Mark)] == ["from two"]


@pytest.mark.parametrize("line, says", [
    (b"pause please\n", "not JSON"),
    (b"[1, 2]\n", "not a JSON object"),
    (b'{"cmd": "fly"}\n', "unknown command 'fly'"),
    (b'{"value": 3}\n', "unknown command 'None'"),
    (b'{"cmd": "concurrency", "value": 0}\n', "at least 1"),
    (b'{"cmd": "concurrency", "value": true}\n', "must be a whole number"),
    (b'{"cmd": "concurrency", "value": "8"}\n', "must be a whole number"),
    (b'{"cmd": "concurrency", "step": -5}\n', "at its lowest"),
    (b'{"cmd": "rate", "value": 5}\n', "keeps a concurrency, not a rate"),
    (b'{"cmd": "resume"}\n', "not paused"),
    (b'{"cmd": "mark", "text": ""}\n', "needs some text"),
    (b'{"cmd": "mark", "text": "\\u001b[2J"}\n', "printable"),
    (b'{"cmd": "mark", "text": 7}\n', "needs some text"),
    (b'{"cmd": "model"}\n', "a model needs a name"),
    (b'{"cmd": "model", "name": "\\u001b[2J"}\n', "printable"),
    (b'{"cmd": "model", "name": "nope"}\n', "not among the 1 models"),
    (b"\xff\xfe\n", "not JSON"),
])
async def test_a_bad_command_is_an_error_reply_and_the_run_goes_on(tmp_path, line, says):
    record = tmp_path / "run.jsonl"
    async with steerable(record) as session:
        path = control.socket_path(record)
        bad, after = await exchange(path, [line, b'{"cmd": "status"}\n'])
        assert bad["ok"] is False and says in bad["error"], bad
        assert "\n" not in bad["error"]
        assert after["ok"] and not session.ended  # the same connection goes on serving
    assert [p.concurrency for p in recorded(record, Phase)] == [2]  # nothing changed


async def test_a_line_too_long_is_refused_without_reading_it_all(tmp_path):
    record = tmp_path / "run.jsonl"
    async with steerable(record) as session:
        path = control.socket_path(record)
        reader, writer = await asyncio.open_unix_connection(os.fspath(path))
        writer.write(b'{"cmd": "mark", "text": "' + b"x" * (control.MAX_LINE * 2) + b'"}\n')
        reply = json.loads(await asyncio.wait_for(reader.readline(), 5))
        assert reply["ok"] is False and "at most 4096 bytes" in reply["error"]
        writer.close()
        assert (await ask(record, cmd="status")).ok and not session.ended


async def test_a_stale_or_missing_socket_is_one_line(tmp_path):
    record = tmp_path / "dead.jsonl"
    record.write_text("")
    with pytest.raises(control.ControlError, match="no control socket for"):
        await ask(record, cmd="status")
    stale = socket.socket(socket.AF_UNIX)  # a run killed with -9 leaves its socket file
    stale.bind(os.fspath(control.socket_path(record)))
    stale.close()
    with pytest.raises(control.ControlError) as caught:
        await ask(record, cmd="status")
    assert str(caught.value).startswith("stale control socket") and "\n" not in str(caught.value)


async def test_a_stale_socket_where_a_new_run_listens_is_replaced(tmp_path):
    record = tmp_path / "run.jsonl"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(os.fspath(control.socket_path(record)))
    stale.close()
    said = []
    async with steerable(record, said):
        assert said == [] and (await ask(record, cmd="status")).ok


async def test_a_socket_that_cannot_be_made_costs_the_run_nothing(tmp_path):
    record = tmp_path / "run.jsonl"
    control.socket_path(record).write_text("not a socket")
    said = []
    async with steerable(record, said, duration_s=0.3) as session:
        await asyncio.sleep(0.5)
        assert session.ended
    assert said == [f"control socket: {control.socket_path(record)} exists and is not a "
                    "socket; this run cannot be steered from outside"]
    assert recorded(record, SessionEnd)[0].reason == "completed"
    assert control.socket_path(record).read_text() == "not a socket"  # left as it was


async def test_a_path_too_long_for_a_unix_socket_falls_back_to_a_short_one(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    record = deep / "run.jsonl"
    path = control.socket_path(record)
    assert len(os.fsencode(f"{record.resolve()}.sock")) > control.SUN_PATH_MAX
    assert path.parent == control.private_folder()
    assert len(os.fsencode(path)) <= control.SUN_PATH_MAX
    said = []
    async with steerable(record, said) as session:
        assert said == [f"control socket: {path} (the path beside the record is too long for "
                        "a Unix socket)"]
        assert session.control.fallback == path
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert (await ask(record, cmd="concurrency", value=3)).ok  # found from the record
    assert not path.exists()
    assert [p.concurrency for p in recorded(record, Phase)] == [2, 3]


def test_a_session_without_a_record_has_no_socket():
    session = Session(RunConfig(backend="fake", model="fake"), FakeBackend())
    assert control.serve_while_running(session) is None
