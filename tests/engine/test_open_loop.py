"""Open-loop arrivals (--rate): requests at planned times, latency from the planned time (no
coordinated omission), a slot cap whose wait counts and is reported apart."""

import asyncio

import numpy as np
import pytest

from soaktop.engine.backends.fake import FakeBackend
from soaktop.engine.events import Phase, RequestDone
from soaktop.engine.metrics.summary import SessionSummary


async def _run(make_session, backend, **config):
    config = {"output_tokens": 10, "warmup_requests": 0, **config}
    session, events = make_session(backend, **config)
    summary = SessionSummary()
    session.add_listener(summary.add)
    return session, events, summary


async def test_constant_arrivals_go_out_on_schedule(make_session):
    session, events, _ = await _run(make_session, FakeBackend(ttft_s=0.005, itl_s=0.002),
                                    rate=50.0, duration_s=2.0)
    await session.run()
    sent = sorted(e.sent_ns for e in events.of(RequestDone))
    assert 95 <= len(sent) <= 101
    gaps = np.diff(sent)
    assert np.all(gaps == 20_000_000)  # planned times: exactly 1/rate apart
    phase = events.of(Phase)[0]
    assert phase.rate == 50.0 and phase.concurrency == 0


async def test_poisson_arrivals_have_exponential_gaps(make_session):
    session, events, _ = await _run(make_session, FakeBackend(ttft_s=0.002, itl_s=0.001),
                                    rate=200.0, arrival="poisson", duration_s=2.0)
    await session.run()
    gaps = np.diff(sorted(e.sent_ns for e in events.of(RequestDone))) / 1e9
    assert abs(gaps.mean() - 1 / 200) < 0.001
    assert 0.8 < gaps.std() / gaps.mean() < 1.2  # exponential: coefficient of variation ~1


async def test_an_overloaded_server_shows_in_latency_not_hidden_by_the_client(make_session):
    """The server runs one request at a time (~30 ms each); requests arrive every 20 ms. A
    closed loop would slow down and report ~30 ms; the open loop keeps the schedule, so the
    queue grows and TTFT measured from each planned time grows with it."""
    backend = FakeBackend(ttft_s=0.010, itl_s=0.002, max_concurrent=1)
    session, events, summary = await _run(make_session, backend, rate=50.0, duration_s=1.5)
    await session.run()
    done = sorted((e for e in events.of(RequestDone) if e.ok), key=lambda e: e.sent_ns)
    ttft = [e.arrivals_us[0] / 1e3 for e in done]
    assert ttft[-1] > 10 * ttft[0] and ttft[-1] > 200  # the backlog, counted
    # no slot cap: every request went out on time; the backlog is the server's, in TTFT
    assert summary.result().queue_ms.p99 < 5


async def test_a_slot_cap_makes_requests_wait_and_the_wait_counts(make_session):
    backend = FakeBackend(ttft_s=0.030, itl_s=0.002)
    session, events, summary = await _run(make_session, backend, rate=100.0, max_inflight=2,
                                          duration_s=1.5)
    await session.run()
    done = [e for e in events.of(RequestDone) if e.ok]
    queued = [e for e in done if e.queued_us > 20_000]
    assert queued  # requests waited for one of the 2 slots
    for e in queued:  # their TTFT counts from the planned time: the wait is inside it
        assert e.arrivals_us[0] >= e.queued_us + 29_000
    # never more than 2 out at once: count overlaps of [actual send, end]
    edges = sorted([(e.sent_ns + e.queued_us * 1000, 1) for e in done]
                   + [(e.t_ns, -1) for e in done])
    assert max(np.cumsum([step for _, step in edges])) <= 2
    # planned 10 ms apart, 2 slots of ~48 ms each (30 ms TTFT, 9 gaps of 2 ms): one slot
    # frees every ~24 ms, so request n waits about 24n - 10n = 14n ms (a little more with
    # the client's own few hundred µs a request); the summary's figure is these waits
    order = sorted(done, key=lambda e: e.sent_ns)
    waits = np.array([e.queued_us / 1e3 for e in order])
    slope = np.polyfit(np.arange(len(waits)), waits, 1)[0]
    assert 13 < slope < 19
    result = summary.result()
    assert result.queue_ms.p50 == pytest.approx(np.median(waits), abs=0.01)


async def test_the_rate_changes_live_in_a_new_phase(make_session):
    session, events, summary = await _run(make_session,
                                          FakeBackend(ttft_s=0.002, itl_s=0.001),
                                          rate=20.0, duration_s=2.0)

    async def faster():
        await session.started.wait()
        await asyncio.sleep(1.0)
        session.set_rate(80.0, reason="key")

    await asyncio.gather(session.run(), faster())
    phases = events.of(Phase)
    assert [(p.rate, p.reason) for p in phases] == [(20.0, "start"), (80.0, "key")]
    late = sorted(e.sent_ns for e in events.of(RequestDone) if e.sent_ns > phases[1].t_ns)
    assert np.median(np.diff(late)) == 12_500_000
    # each phase's summary says the rate it planned (its concurrency is 0: none was held)
    result = summary.result()
    assert [(p.rate, p.concurrency) for p in result.phases] == [(20.0, 0), (80.0, 0)]
    assert [p["rate"] for p in result.to_dict()["phases"]] == [20.0, 80.0]
    from soaktop.tui.text import summary_csv, summary_table

    table = summary_table(result, width=120).splitlines()
    assert table[1].split()[:2] == ["0", "r20"] and table[2].split()[:2] == ["1", "r80"]
    assert "rate" in summary_csv(result).splitlines()[0].split(",")
    assert summary_csv(result).splitlines()[2].split(",")[3] == "20.0"


async def test_a_concurrency_change_is_refused_in_an_open_loop(make_session):
    import pytest

    from soaktop.engine.errors import ConfigError

    session, events, _ = await _run(make_session, FakeBackend(ttft_s=0.002, itl_s=0.001),
                                    rate=20.0, duration_s=0.5)

    async def steer():
        await session.started.wait()
        with pytest.raises(ConfigError, match="keeps a rate"):
            session.set_concurrency(8)

    await asyncio.gather(session.run(), steer())
    assert [p.rate for p in events.of(Phase)] == [20.0]  # no phase came of it


@pytest.mark.parametrize("what", ["pause", "stop"])
async def test_a_pause_or_stop_in_the_iteration_a_request_falls_due_launches_nothing(
        monkeypatch, what):
    """A request's planned time and a pause (or the stop) in one loop iteration: the wait
    ends by its timeout, yet nothing may go out, and the loop must not divide by a rate of 0
    (it did: the run ended as 'completed' at a pause; a stop let one request outlive it)."""
    from soaktop.engine.load import loops

    launched = []
    clock = [0]

    async def request():
        pass

    def launch(due):
        launched.append(due)
        return request()

    load = loops.OpenLoop(10.0, launch, lambda: clock[0])
    waits = []
    real_wait_for = asyncio.wait_for

    async def due_as_the_command_lands(awaitable, timeout):
        if not asyncio.iscoroutine(awaitable):  # not the open loop's wait for a change
            return await real_wait_for(awaitable, timeout)
        awaitable.close()
        waits.append(timeout)
        if len(waits) == 2:  # the second request falls due as the command lands
            if what == "pause":
                load.set_target(0)
            else:
                load._stopping = True
        raise asyncio.TimeoutError

    monkeypatch.setattr(loops.asyncio, "wait_for", due_as_the_command_lands)
    run = asyncio.ensure_future(load.run())
    await asyncio.sleep(0.01)
    assert not run.done() or run.exception() is None
    await load.stop()
    await asyncio.wait_for(run, 1.0)  # ended, without an exception
    # not the third, due as the command landed; the first is due once it could be prepared
    assert launched == [loops.PREPARE_NS, loops.PREPARE_NS + 100_000_000]
