"""Conversations (--turns): later turns carry the history, the server's replies included; the
concurrency counts conversations; the record keeps each request's conversation and turn,
and the summary splits first turns' TTFT from later ones'."""

import asyncio
import json

import pytest

from soaktop.engine.backends.base import Arrival, Backend, StreamEnd
from soaktop.engine.backends.http import request_uuid
from soaktop.engine.backends.openai import OpenAIBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.errors import ConfigError
from soaktop.engine.events import Mark, Phase, PhaseReason, RequestDone, SessionStart
from soaktop.engine.load.conversations import parse_think_time
from soaktop.engine.loopback import LoopbackServer, Schedule
from soaktop.engine.loopback.wire import words
from soaktop.engine.metrics.summary import summarise
from soaktop.engine.records.format import RecordReader, decode, encode
from soaktop.engine.session import Session
from soaktop.tui.text import summary_document, turn_lines


async def converse(requests=12, tokens=3, **config):
    """A run against the loopback server; each request's RequestDone and what the server
    received for it."""
    events = []
    async with LoopbackServer(Schedule(ttft_ms=1, itl_ms=0, tokens=tokens)) as server:
        backend = OpenAIBackend(server.url, model="loopback", api=config.get("api"))
        cfg = RunConfig(backend="openai", url=server.url, model="loopback",
                        max_requests=requests, warmup_requests=0, output_tokens=tokens,
                        **{"concurrency": 2, "turns": 3, **config})
        session = Session(cfg, backend, listeners=(events.append,))
        await session.run()
        by_id = {e.request_id: e for e in server.emissions()}
    done = sorted((e for e in events if isinstance(e, RequestDone)), key=lambda e: e.request_id)
    return done, {d.request_id: by_id[request_uuid(backend.run_id, d.request_id)]
                  for d in done}, events


async def test_later_turns_carry_the_history_with_the_servers_replies():
    done, sent, _ = await converse(requests=12, input_tokens=6)
    reply = {"role": "assistant", "content": words(0, 3)}  # what the loopback streams
    turns: dict[int, list[RequestDone]] = {}
    for d in done:
        assert d.ok and d.conversation is not None
        turns.setdefault(d.conversation, []).append(d)
    assert all(len(t) == 3 for t in turns.values()) and len(turns) == 4
    for conversation in turns.values():
        assert [d.turn for d in conversation] == [0, 1, 2]
        previous = None
        for d in conversation:
            messages = sent[d.request_id].prompt
            assert len(messages) == 2 * d.turn + 1
            assert [m["role"] for m in messages] == ["user", "assistant"] * d.turn + ["user"]
            if previous is not None:  # turn k: turn k-1 as sent, its reply, a new question
                assert messages[:-2] == previous and messages[-2] == reply
                assert messages[-1] not in previous
            assert len(messages[-1]["content"].split()) == 6
            # the record's prompt length is the whole history's, replies included
            assert d.prompt_tokens == 6 * (d.turn + 1) + 3 * d.turn
            previous = messages


async def test_the_completions_api_gets_the_history_as_text():
    done, sent, _ = await converse(requests=4, input_tokens=4, api="completions",
                                   concurrency=1, turns=2)
    first, second = sent[done[0].request_id].prompt, sent[done[1].request_id].prompt
    assert done[1].turn == 1 and second.startswith(first + "\n" + words(0, 3) + "\n")


async def test_the_concurrency_counts_conversations_in_flight():
    done, _, events = await converse(requests=12, concurrency=2, turns=3, think_time=0.05)
    # Which ids the later conversations take (5 or 6, 7 or 8...) is the loopback's timing:
    # asserted instead is that two were in flight at a time, each for all its turns.
    firsts = [d.conversation for d in done if d.turn == 0]
    assert firsts[:2] == [0, 1] and len(firsts) >= 4
    assert {d.conversation for d in done} == set(firsts)
    for c in firsts:  # the first two whole; a later one may be cut short by the budget
        turns = sorted(d.turn for d in done if d.conversation == c)
        assert turns == [0, 1, 2] if c < 2 else turns == list(range(len(turns)))
    started = {d.conversation: d.t_ns - d.end_us * 1000 for d in done if d.turn == 0}
    ended = {c: max(d.t_ns for d in done if d.conversation == c) for c in firsts}
    for c in firsts[2:]:  # a later one started only when one of the two before had ended
        others = [o for o in firsts if o != c and started[o] <= started[c]]
        in_flight = [o for o in others if ended[o] > started[c] + 2_000_000]
        assert len(in_flight) <= 1, (c, in_flight)


def test_think_times_are_seeded_and_read_as_the_lengths_are():
    assert parse_think_time("2").text() == 2.0 and parse_think_time(0).text() == 0.0
    normal = parse_think_time("1.5:0.5")
    draws = [normal.draw(3, c, 1) for c in range(4000)]
    assert abs(sum(draws) / len(draws) - 1.5) < 0.05 and min(draws) >= 0
    assert draws == [normal.draw(3, c, 1) for c in range(4000)]
    uniform = parse_think_time("1-5")
    assert all(1 <= uniform.draw(0, c, 2) <= 5 for c in range(100))
    for bad in ("abc", "5-1", "-1"):
        with pytest.raises(ConfigError) as err:
            parse_think_time(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="give --turns too"):
        RunConfig(backend="fake", model="m", think_time=2)


async def test_a_prompt_files_multi_turn_entry_is_sent_turn_by_turn(tmp_path):
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one"},
            {"role": "assistant", "content": "canned"}, {"role": "user", "content": "two"},
            {"role": "assistant", "content": "canned"}, {"role": "user", "content": "three"}]
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"messages": chat}) + "\n")
    done, sent, _ = await converse(requests=3, concurrency=1, turns=5, prompts=str(path),
                                   unique_prefix=False)
    got = [sent[d.request_id].prompt for d in done]
    reply = {"role": "assistant", "content": words(0, 3)}
    assert got[0] == chat[:2]
    assert got[1] == [*chat[:2], reply, chat[3]]
    assert got[2] == [*chat[:2], reply, chat[3], reply, chat[5]]  # the server's, not canned
    assert [d.turn for d in done] == [0, 1, 2]


async def test_a_sharegpt_entrys_human_turns_are_sent_turn_by_turn(tmp_path):
    """A ShareGPT conversation of three human turns: with --turns its turns go one a request,
    the server's replies replacing the dataset's; without --turns only its first human turn
    is sent, as before."""
    talk = [{"from": "system", "value": "be brief"}, {"from": "human", "value": "one"},
            {"from": "gpt", "value": "canned"}, {"from": "human", "value": "two"},
            {"from": "gpt", "value": "canned"}, {"from": "human", "value": "three"},
            {"from": "gpt", "value": "canned, after the last human turn"}]
    path = tmp_path / "share.json"
    path.write_text(json.dumps([{"conversations": talk}]))
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one"},
            {"role": "user", "content": "two"}, {"role": "user", "content": "three"}]
    reply = {"role": "assistant", "content": words(0, 3)}
    done, sent, _ = await converse(requests=3, concurrency=1, turns=5, prompts=str(path),
                                   unique_prefix=False)
    got = [sent[d.request_id].prompt for d in done]
    assert got == [chat[:2], [*chat[:2], reply, chat[2]],
                   [*chat[:2], reply, chat[2], reply, chat[3]]]
    assert [d.turn for d in done] == [0, 1, 2]
    done, sent, _ = await converse(requests=2, concurrency=1, turns=1, prompts=str(path),
                                   unique_prefix=False)
    assert [sent[d.request_id].prompt for d in done] == [chat[:2], chat[:2]]


class _Textless(Backend):
    """Streams tokens with no text, as a backend that cannot give it."""

    kind = "fake"

    async def models(self):
        return ["m"]

    async def stream(self, request):
        self.prompts = [*getattr(self, "prompts", []), request.prompt]
        for _ in range(4):
            yield Arrival(t_ns=__import__("time").perf_counter_ns(), tokens=1, text="")
        yield StreamEnd("length")


async def test_without_reply_text_a_placeholder_of_its_length_is_carried_and_said():
    backend, events = _Textless(), []
    config = RunConfig(backend="fake", model="m", concurrency=1, max_requests=2,
                       warmup_requests=0, turns=2, input_tokens=3)
    await Session(config, backend, listeners=(events.append,)).run()
    second = backend.prompts[1].messages
    assert second[1]["role"] == "assistant" and len(second[1]["content"].split()) == 4
    assert sum("placeholder" in e.note for e in events if isinstance(e, Mark)) == 1


async def test_a_later_turn_waits_out_a_pause_and_goes_on_resume():
    """A pause sends nothing new, a conversation's next turn included; the resume lets it go
    at once (it waits on the session's own resume, not a poll)."""
    events, paused_at, resumed_at = [], [], []
    async with LoopbackServer(Schedule(ttft_ms=1, itl_ms=0, tokens=2)) as server:
        cfg = RunConfig(backend="openai", url=server.url, model="loopback", concurrency=1,
                        max_requests=2, warmup_requests=0, output_tokens=2, turns=2)
        session = Session(cfg, OpenAIBackend(server.url, model="loopback"))

        def resume():
            resumed_at.append(session.now_ns())
            session.resume()

        def listen(event):
            events.append(event)
            if isinstance(event, RequestDone) and event.turn == 0:
                session.pause()
                paused_at.append(session.now_ns())
                asyncio.get_running_loop().call_later(0.3, resume)

        session.add_listener(listen)
        await asyncio.wait_for(session.run(), timeout=10)
    second = next(e for e in events if isinstance(e, RequestDone) and e.turn == 1)
    sent_ns = second.t_ns - second.end_us * 1000
    assert paused_at and resumed_at and second.ok
    assert sent_ns >= resumed_at[0]  # nothing went out while paused
    assert sent_ns - resumed_at[0] < 200_000_000  # and it went out once resumed


# -- the record and the summary ------------------------------------------------------------


def _done(request_id, ttft_us, conversation=None, turn=0, warmup=False):
    return RequestDone(t_ns=10**9 + request_id, worker_id=0, request_id=request_id,
                       phase_id=0, backend="fake", model="m", sent_ns=request_id,
                       prompt_tokens=5, arrivals_us=(ttft_us, ttft_us + 100),
                       end_us=ttft_us + 200, finish_reason="length", warmup=warmup,
                       conversation=conversation, turn=turn)


def _events(requests):
    header = SessionStart(0, 1, "", RunConfig(backend="fake", model="m").to_dict(), {}, {}, {})
    phase = Phase(0, 0, 2, "m", "fake", PhaseReason.START, False)
    return [header, phase, *requests]


def test_a_conversations_fields_round_trip_and_old_records_still_read():
    later = _done(5, 300, conversation=2, turn=3)
    line = encode(later)
    assert line["conversation"] == 2 and line["turn"] == 3
    assert decode(json.loads(json.dumps(line))) == later
    first = encode(_done(2, 300, conversation=2))
    assert first["conversation"] == 2 and "turn" not in first  # a default stays implicit
    plain = encode(_done(1, 300))
    assert "conversation" not in plain and "turn" not in plain
    assert decode(plain).conversation is None  # an old record's line


@pytest.mark.parametrize("raw", [False, True])
def test_the_summary_splits_first_turns_from_later_ones(tmp_path, raw):
    requests = [_done(i, 100_000 + i, conversation=i // 3 * 3, turn=i % 3) for i in range(30)]
    requests.append(_done(30, 999_000, conversation=30, turn=1, warmup=True))  # not counted
    path = tmp_path / "run.jsonl"
    path.write_text("".join(json.dumps(encode(e)) + "\n" for e in _events(requests)))
    source = RecordReader(path).events(raw_requests=True) if raw else _events(requests)
    result = summarise(source).result()
    split = result.turns
    assert (split.first, split.later) == (10, 20)
    assert split.first_ttft_ms.p50 == pytest.approx(100.0135)  # first turns: i = 0, 3, ... 27
    later = sorted(100 + i / 1000 for i in range(30) if i % 3)
    assert split.later_ttft_ms.p50 == pytest.approx((later[9] + later[10]) / 2)
    document = summary_document(result)
    assert document["turns"]["first"]["requests"] == 10
    assert document["turns"]["later"]["ttft_ms"]["p50"] == split.later_ttft_ms.p50
    assert turn_lines(result)[0].startswith("conversations: TTFT first turns p50 100.0 ms")


def test_a_run_without_conversations_has_no_split():
    result = summarise(_events([_done(i, 1000) for i in range(5)])).result()
    assert result.turns is None and "turns" not in result.to_dict() and turn_lines(result) == []


async def test_worker_processes_hand_back_the_reply_a_later_turn_carries():
    from soaktop.engine.factory import build_session

    async with LoopbackServer(Schedule(ttft_ms=1, itl_ms=0, tokens=3)) as server:
        config = RunConfig(backend="openai", url=server.url, model="loopback", concurrency=1,
                           max_requests=2, warmup_requests=0, turns=2, output_tokens=3,
                           input_tokens=4, workers=2, telemetry=())
        session = await build_session(config, steerable=False)
        await session.run()
        sent = sorted((e for e in server.emissions() if e.prompt), key=lambda e: e.request)
    assert [len(e.prompt) for e in sent] == [1, 3]
    assert sent[1].prompt[:2] == [sent[0].prompt[0], {"role": "assistant",
                                                      "content": words(0, 3)}]
