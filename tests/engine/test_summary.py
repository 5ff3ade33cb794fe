"""Whole-run and per-phase summaries from hand-built events, checked against hand arithmetic."""

import pytest

from soaktop.engine.events import ClientSample, Phase, PhaseReason, RequestDone, SessionEnd
from soaktop.engine.metrics.results import CUT_SHORT
from soaktop.engine.metrics.summary import SessionSummary, server_input_tokens, summarise

MS = 1_000_000  # ns


def done(rid, phase, sent_ns, arrivals_us, end_us=None, **kw):
    return RequestDone(
        t_ns=sent_ns + (end_us or (arrivals_us[-1] if arrivals_us else 0)) * 1000,
        worker_id=0, request_id=rid, phase_id=phase, backend="fake", model="m",
        sent_ns=sent_ns, prompt_tokens=kw.pop("prompt_tokens", 8), arrivals_us=tuple(arrivals_us),
        end_us=end_us or (arrivals_us[-1] if arrivals_us else 0),
        finish_reason=kw.pop("finish_reason", "length"), **kw,
    )


def phase(pid, t_ns, concurrency=2, warmup=False, reason="start"):
    return Phase(t_ns, pid, concurrency, "m", "fake", reason, warmup)


def test_one_phase_by_hand():
    s = SessionSummary()
    for e in [
        phase(0, 0),
        done(0, 0, 0, [1000, 2000, 3000]),
        done(1, 0, 500_000, [2000, 2500]),
        done(2, 0, 1 * MS, [], end_us=400, finish_reason="error", error_class="oom",
             error_message="out of memory"),
        done(3, 0, 2 * MS, [100], end_us=200, finish_reason="cancelled"),
        SessionEnd(10 * MS, "completed"),
    ]:
        s.add(e)
    r = s.result()
    assert (r.requests_ok, r.requests_failed, r.requests_cancelled) == (2, 1, 1)
    assert r.errors == {"oom": 1}
    assert r.error_rate == pytest.approx(1 / 3)
    # tokens arriving in the window count, the cancelled request's one included: 3 + 2 + 1
    assert r.output_tokens == 6
    assert r.duration_s == pytest.approx(0.010)
    assert r.output_tokens_per_s == pytest.approx(600)
    assert r.requests_per_s == pytest.approx(200)
    assert r.ttft_ms.p50 == pytest.approx(1.5)  # median of 1.0 and 2.0 ms
    assert r.ttft_ms.p90 == pytest.approx(1.9)
    # ITL gaps 1000, 1000, 500 µs; nearest rank p50 of [500, 1000, 1000] is 1000
    assert r.itl_ms.p50 == pytest.approx(1.0)
    assert r.itl_ms.mean == pytest.approx(2500 / 3 / 1000)
    assert r.tpot_ms.p50 == pytest.approx(0.75)  # TPOTs 1000 and 500 µs
    assert r.e2e_ms.p50 == pytest.approx(2.75)  # E2E 3000 and 2500 µs
    assert r.ended == "completed"


def test_warmup_and_phases_attribute_tokens_by_arrival_and_latency_by_send():
    s = SessionSummary()
    for e in [
        phase(0, 0, warmup=True),
        phase(1, 5 * MS, reason="warm-up done"),
        done(0, 0, 0, [4000, 6000], warmup=True),  # one token in phase 0, one in phase 1
        phase(2, 10 * MS, concurrency=4, reason="key"),
        done(1, 1, 5 * MS, [1000, 7000]),  # tokens at 6 ms (phase 1) and 12 ms (phase 2)
        done(2, 2, 12 * MS, [1000]),  # token at 13 ms (phase 2)
        SessionEnd(20 * MS, "completed"),
    ]:
        s.add(e)
    r = s.result()
    p = {x.phase_id: x for x in r.phases}
    assert [p[i].output_tokens for i in range(3)] == [1, 2, 2]
    assert [p[i].requests_ok for i in range(3)] == [0, 1, 1]
    assert p[0].warmup and not p[1].warmup
    assert p[2].concurrency == 4 and p[2].duration_s == pytest.approx(0.010)
    assert p[2].reason is PhaseReason.KEY  # the record's string, read as the enum
    assert r.requests_warmup == 1
    # whole run = phases 1 and 2: 4 tokens over 15 ms; the warm-up request's latency excluded
    assert r.output_tokens == 4 and r.duration_s == pytest.approx(0.015)
    assert r.output_tokens_per_s == pytest.approx(4 / 0.015)
    assert r.requests_ok == 2
    assert r.ttft_ms.p50 == pytest.approx(1.0)


def test_zero_successful_requests_gives_none_not_zero_or_crash():
    s = SessionSummary()
    s.add(phase(0, 0))
    s.add(done(0, 0, 0, [], end_us=10, finish_reason="error", error_class="engine_crash"))
    s.add(SessionEnd(1 * MS, "completed"))
    r = s.result()
    assert r.requests_ok == 0 and r.requests_failed == 1 and r.error_rate == 1.0
    assert r.ttft_ms.p50 is None and r.itl_ms.p99 is None
    assert r.output_tokens == 0 and r.output_tokens_per_s == 0.0


def test_record_cut_before_session_end_uses_the_last_event_time():
    s = SessionSummary()
    s.add(phase(0, 0))
    s.add(done(0, 0, 0, [1000, 2000]))
    r = s.result()
    assert r.duration_s == pytest.approx(0.002)
    assert r.ended == CUT_SHORT == "cut_short"  # a code; the sentence is soaktop.tui's
    assert r.ended_at_s == pytest.approx(0.002)  # the last event: request 0 ended at 2 ms


def test_the_servers_own_speed_sits_beside_the_clients():
    s = SessionSummary()
    s.add(phase(0, 0))
    # client: 4 tokens, 300 µs apart -> (4 - 1) / 900 µs = 3333 tokens/s
    s.add(done(0, 0, 0, [1000, 1300, 1600, 1900],
               server_reported={"eval_count": 4, "eval_duration": 1_000_000}))
    s.add(done(1, 0, 0, [1000, 2000]))  # a server that reports nothing
    s.add(SessionEnd(5 * MS, "completed"))
    r = s.result()
    assert r.server_speed_tps.p50 == pytest.approx(4000)  # 4 tokens in 1 ms
    assert r.output_speed_tps.p50 == pytest.approx((3333.33 + 1000) / 2, rel=1e-3)
    empty = SessionSummary()
    empty.add(phase(0, 0))
    empty.add(done(0, 0, 0, [1000, 2000]))
    assert empty.result().server_speed_tps.p50 is None


def test_chunked_streams_keep_itl_token_weighted_beside_the_gaps_between_chunks():
    from soaktop.engine.events import SessionStart

    s = SessionSummary()
    s.add(SessionStart(0, 1, "2026-11-23T00:00:00+00:00", {"output_tokens": 6}, {}, {}))
    s.add(phase(0, 0))
    # 6 tokens in three chunks of 1, 3 and 2, 90 ms apart; then one that stopped at 4 tokens
    s.add(done(0, 0, 0, [10_000, 100_000, 190_000], arrival_tokens=(1, 3, 2)))
    s.add(done(1, 0, 1 * MS, [10_000, 100_000], arrival_tokens=(1, 3)))
    r = s.result()
    assert r.inter_chunk_ms.p50 == pytest.approx(90.0, rel=0.002)
    # the 90 ms gap before a 3-token chunk is 30 ms a token, before a 2-token chunk 45 ms
    assert r.itl_ms.p50 == pytest.approx(30.0, rel=0.002)
    assert r.itl_ms.p99 == pytest.approx(45.0, rel=0.002)
    assert r.output_length_attained == 0.5  # 6 of 6 asked for, then 4 of 6
    assert r.tpot_ms.p50 == pytest.approx((36.0 + 30.0) / 2, rel=0.01)


def test_client_bound_seconds_are_counted_by_reason():
    S = 1000 * MS
    samples = [ClientSample(k * S, 4, 100, S, kernel_stamps=True, read_lag_p99_us=lag,
                            read_gap_p10_us=4000, send_lateness_p99_us=late,
                            loop_cpu_percent=cpu)
               for k, (lag, late, cpu) in enumerate(
                   [(9000, 0, 10.0), (9000, 20_000, 10.0), (100, 0, 95.0), (100, 0, 10.0)],
                   start=1)]
    result = summarise([phase(0, 0), *samples, SessionEnd(4 * S, "completed")]).result()
    assert result.client_bound_s == 3.0
    assert result.client_bound_reasons == {"loop saturated": 1.0, "reads late": 2.0,
                                           "sends late": 1.0}
    assert result.to_dict()["client_bound_reasons"] == result.client_bound_reasons


def test_client_bound_seconds_count_only_seconds_wholly_after_the_warm_up():
    S = 1000 * MS

    def second(end_s, bound):  # a one-second client sample ending at end_s
        return ClientSample(end_s * S, 4, 100, S, loop_lag_p99_us=5000 if bound else 200,
                            loop_cpu_percent=20.0)

    summary = summarise([
        phase(0, 0, warmup=True),
        second(1, bound=True),  # warm-up: not counted
        phase(1, int(1.5 * S), reason="warm-up done"),
        second(2, bound=True),  # half warm-up: not counted
        second(3, bound=True),
        second(4, bound=False),
        second(5, bound=True),
        SessionEnd(5 * S, "completed"),
    ])
    assert summary.result().client_bound_s == 2.0
    assert summary.result().client_bound_reasons == {"loop late": 2.0}  # an old record's rule
    # without a warm-up, the run is measured from its start: the first second counts
    no_warmup = summarise([phase(0, 20_000), second(1, bound=True), second(2, bound=True)])
    assert no_warmup.result().client_bound_s == 2.0


def _three_phases_events() -> list:
    return [
        phase(0, 0, warmup=True),
        phase(1, 5 * MS, reason="warm-up done"),
        done(0, 0, 0, [4000, 6000], warmup=True),
        phase(2, 10 * MS, concurrency=4, reason="key"),
        done(1, 1, 5 * MS, [1000, 7000]),
        done(2, 2, 12 * MS, [1000, 1500, 2500]),
        SessionEnd(20 * MS, "completed"),
    ]


def _three_phases() -> SessionSummary:
    return summarise(_three_phases_events())


def test_one_phase_is_computed_alone_and_equals_that_phase_of_the_whole_run():
    s = _three_phases()
    whole = s.result()

    def no_whole_run():
        raise AssertionError("the whole run was computed for one phase")

    s._drift.result = no_whole_run  # the run's drift analysis: not a phase's business
    assert [s.phase(i) for i in range(3)] == list(whole.phases)
    assert s.phase(2).ttft_ms.p50 == pytest.approx(1.0) and s.phase(2).requests_ok == 1
    assert s.phase(7) is None  # a phase not seen (yet)
    assert s.phases() == list(whole.phases)


#: The JSON form, key for key and in order (README: "What each number means").
FIGURE_KEYS = [
    "requests_ok", "requests_failed", "requests_cancelled", "errors", "error_rate",
    "output_tokens", "duration_s", "output_tokens_per_s", "requests_per_s",
    "output_length_attained", "input_tokens", "cached_share", "input_lengths",
    "output_lengths", "ttft_ms", "ttfo_ms",
    "reasoning_tokens", "itl_ms",
    "inter_chunk_ms", "tpot_ms", "e2e_ms", "output_speed_tps", "server_speed_tps", "queue_ms",
    "gpus", "power_w", "energy_j_per_token", "tokens_per_s_per_w", "host", "servers",
]
RUN_KEYS = [*FIGURE_KEYS, "telemetry", "requests_warmup", "ended", "ended_at_s",
            "ended_explanation", "marks", "phases",
            "soak", "client_bound_s", "client_bound_reasons"]
PHASE_KEYS = ["phase_id", "concurrency", "rate", "model", "backend", "reason", "warmup", "start_s",
              *FIGURE_KEYS]


def test_the_json_form_keeps_its_keys_their_order_and_plain_values():
    import json

    d = _three_phases().result().to_dict()
    assert list(d) == RUN_KEYS
    assert [list(p) for p in d["phases"]] == [PHASE_KEYS] * 3
    assert list(d["ttft_ms"]) == ["p50", "p90", "p95", "p99", "mean"]
    assert list(d["output_speed_tps"]) == ["p25", "p50", "p90", "p95", "p99", "mean"]
    assert [p["reason"] for p in d["phases"]] == ["start", "warm-up done", "key"]
    assert type(d["phases"][2]["reason"]) is str  # the value, not the enum
    assert json.loads(json.dumps(d)) == d  # nothing JSON cannot hold as it is
    assert d["ended"] == "completed" and d["ended_at_s"] == pytest.approx(0.020)


def test_a_plan_adds_its_key_and_an_unreadable_slo_is_reported_not_raised():
    from soaktop.engine.events import SessionStart

    def run(config):
        return summarise([SessionStart(0, 1, "2026-11-23T00:00:00+00:00", config, {}, {}),
                          *_three_phases_events()]).result().to_dict()

    assert list(run({"ramp": [2, 4]}))[-4:] == ["ramp", "soak", "client_bound_s",
                                                 "client_bound_reasons"]
    assert [r["concurrency"] for r in run({"ramp": [2, 4]})["ramp"]] == [2]  # "key" is no step
    bad = run({"slo": "ttft_p42<=2"})["slo"]
    assert bad["slo"] == "ttft_p42<=2" and "unknown SLO metric" in bad["error"]
    assert list(bad) == ["slo", "error"]


def test_output_length_is_judged_only_against_a_length_the_record_holds():
    """A trace's output_length and a prompt file's output_tokens override --output-tokens per
    request and are not in the record: asking 10 of a config that says 128 is no shortfall."""
    from soaktop.engine.events import SessionStart

    def attained(config, workload):
        header = SessionStart(0, 1, "2026-11-23T00:00:00+00:00", config, {}, {}, workload)
        done = [RequestDone(t_ns=(i + 1) * MS, worker_id=0, request_id=i, phase_id=0,
                            backend="fake", model="m", sent_ns=i * MS,
                            arrivals_us=tuple(range(100, 1100, 100)), end_us=1200,
                            finish_reason="length", prompt_tokens=8) for i in range(4)]
        return summarise([header, Phase(0, 0, 1, "m", "fake", "start"), *done]) \
            .result().output_length_attained

    assert attained({"output_tokens": 128}, {}) == 0.0  # 10 of 128: the warning's case
    assert attained({"output_tokens": 10}, {}) == 1.0
    assert attained({"output_tokens": 128}, {"trace_file": {"name": "t.jsonl"}}) == 1.0
    assert attained({"output_tokens": 128, "prompts": "/p/chats.jsonl"}, {}) == 1.0


def _mixed_events(seed: int, requests: int = 5000) -> list:
    """A run of every kind of request (one token an arrival, chunks of several, reasoning,
    failed, cancelled, warm-up, open loop, a server's own speed), over phases that change
    while requests are in flight: more requests than one batch of the summary holds."""
    import bisect
    import random

    from soaktop.engine.events import SessionStart

    rng = random.Random(seed)
    events: list = [Phase(0, 0, 4, "m", "fake", "start", warmup=True)]
    starts = [0, *sorted(rng.sample(range(1, 20_000 * MS), 4))]
    for i, t in enumerate(starts[1:]):
        events.append(Phase(t, i + 1, 4 + i, "m", "fake", "command", rate=2.0 if i % 2 else None))
    for rid in range(requests):
        sent = rng.randrange(0, 20_000 * MS)
        arrivals, t = [], rng.randrange(0, 50_000)
        for _ in range(rng.choice([0, 1, 2, 8, 8, 30])):
            arrivals.append(t)
            t += rng.choice([0, 7, 1023, 1024, 1500, 20_001, 3_000_000])
        chunks = tuple(rng.randint(0, 4) for _ in arrivals) if rng.random() < 0.2 else ()
        reasoning = rng.randint(1, 3) if arrivals and rng.random() < 0.1 else 0
        kind = rng.random()
        events.append(done(
            rid, bisect.bisect_right(starts, sent) - 1, sent, arrivals,
            end_us=t + rng.randrange(1, 900),
            arrival_tokens=chunks if arrivals else (), reasoning_tokens=reasoning,
            first_output_us=arrivals[-1] if reasoning else None,
            finish_reason="cancelled" if kind < 0.05 else ("error" if kind < 0.1 else "length"),
            error_class="http_500" if 0.05 <= kind < 0.1 else None,
            warmup=kind > 0.9, queued_us=rng.randrange(0, 100),
            prompt_tokens=rng.randint(1, 300), server_reported=_reported(rng)))
    events.sort(key=lambda e: e.t_ns)
    header = SessionStart(0, 1, "2026-11-23T00:00:00+00:00", {"output_tokens": 8}, {}, {})
    return [header, *events, SessionEnd(25_000 * MS, "completed")]


def _reported(rng) -> dict | None:
    """What a server said of a request, or nothing: Ollama's speed and prompt count, an
    OpenAI usage with or without prefix-cache hits (details null as vLLM sends without them)."""
    kind = rng.random()
    if kind < 0.3:
        return {"eval_count": 5, "eval_duration": rng.randint(1, 10**9),
                **({"prompt_eval_count": rng.randint(1, 900)} if rng.random() < 0.5 else {})}
    if kind < 0.6:
        prompt = rng.randint(1, 900)
        details = {"cached_tokens": rng.randint(0, prompt)} if rng.random() < 0.5 else None
        return {"prompt_tokens": prompt, "completion_tokens": 5, "total_tokens": prompt + 5,
                "prompt_tokens_details": details}
    return None


@pytest.mark.parametrize("seed", [1, 2])
def test_the_numbers_do_not_depend_on_when_the_summary_is_read(seed):
    # a live run reads its summary whenever the screen or a plan asks, soaktop summary once
    # at the end: requests are counted in batches, and the batches' edges must not show
    import random

    events = _mixed_events(seed)
    once = summarise(events).result()
    rng, often = random.Random(seed), SessionSummary()
    for event in events:
        often.add(event)
        if rng.random() < 0.01:
            often.result()
        if rng.random() < 0.01:
            often.phase(rng.randint(0, 4))
    assert often.result() == once
    assert once.requests_ok > 2048 and once.itl_ms.p50 is not None


def test_batched_counting_matches_each_request_counted_by_the_definitions():
    """The batched path against the definitions in soaktop.engine.metrics.stats, applied
    one request at a time: every per-request value, the ITL and inter-chunk counts in each
    histogram bucket, and the tokens in each phase's window."""
    import numpy as np

    from soaktop.engine.metrics.histogram import LogHistogram
    from soaktop.engine.metrics.stats import distribution, request_metrics

    events = _mixed_events(3)
    s = summarise(events)
    s.result()  # counts what is still gathered
    phases = [e for e in events if isinstance(e, Phase)]
    starts = np.array([p.t_ns for p in phases])
    ttft: dict[int, list] = {p.phase_id: [] for p in phases}
    tpot: dict[int, list] = {p.phase_id: [] for p in phases}
    ttfo: dict[int, list] = {p.phase_id: [] for p in phases}
    itl = {p.phase_id: LogHistogram() for p in phases}
    chunks = {p.phase_id: LogHistogram() for p in phases}
    tokens = np.zeros(len(phases))
    seen = set()
    for e in events:
        if isinstance(e, Phase):
            seen.add(e.phase_id)
        if not isinstance(e, RequestDone):
            continue
        if e.arrivals_us:
            w = np.asarray(e.arrival_tokens or [1] * len(e.arrivals_us), dtype=float)
            w = np.clip(np.cumsum(w) - e.reasoning_tokens, 0, w)
            at = e.sent_ns + np.asarray(e.arrivals_us) * 1000
            for slot, n in zip(np.searchsorted(starts, at, side="right") - 1, w):
                tokens[max(slot, 0)] += n
        if e.ok and not e.warmup and e.phase_id in seen:  # else a phase not begun yet
            m = request_metrics(e.arrivals_us, e.end_us, e.arrival_tokens or None)
            ttft[e.phase_id] += [m.ttft_us] if m.ttft_us is not None else []
            ttfo_us = e.first_output_us if e.reasoning_tokens else m.ttft_us
            ttfo[e.phase_id] += [ttfo_us] if ttfo_us is not None else []
            tpot[e.phase_id] += [m.tpot_us] if m.tpot_us is not None else []
            itl[e.phase_id].add(m.itl_us)
            chunks[e.phase_id].add(np.diff(np.asarray(e.arrivals_us, dtype=float)))
    for index, p in enumerate(phases):
        stats = s._order[index]
        assert stats.columns["ttft_us"].values().tolist() == ttft[p.phase_id]
        assert stats.columns["tpot_us"].values().tolist() == tpot[p.phase_id]
        assert s.phase(p.phase_id).ttfo_ms == distribution(np.array(ttfo[p.phase_id]), 1e-3)
        assert np.array_equal(stats.itl.counts, itl[p.phase_id].counts)
        assert np.array_equal(stats.chunk_gaps.counts, chunks[p.phase_id].counts)
        assert stats.itl.count == itl[p.phase_id].count
        assert stats.itl.total == pytest.approx(itl[p.phase_id].total, rel=1e-12)
        assert stats.chunk_gaps.total == chunks[p.phase_id].total  # integers: exact
        assert stats.tokens_in_window == int(tokens[index])
        # input tokens: the mean a successful measured request, soaktop's over all of them,
        # the server's over those it counted; cached share over those that reported hits
        mine = [e for e in events if isinstance(e, RequestDone) and e.ok and not e.warmup
                and e.phase_id == p.phase_id]
        counts = [server_input_tokens(e.server_reported) for e in mine]
        server = [n for n, _ in counts if n is not None]
        hits = [(n, c) for n, c in counts if c is not None]
        figures = s.phase(p.phase_id)
        assert figures.input_tokens.asked == (
            sum(e.prompt_tokens for e in mine) / len(mine) if mine else None)
        assert figures.input_tokens.server == (sum(server) / len(server) if server else None)
        assert figures.cached_share == (
            sum(c for _, c in hits) / sum(n for n, _ in hits) if hits else None)
    assert sum(len(v) for v in ttft.values()) > 2048
    assert sum(len(v) for v in ttfo.values()) > 2048
    assert sum(e.reasoning_tokens > 0 for e in events if isinstance(e, RequestDone)) > 100


def test_itl_mean_is_exact_for_a_chunk_of_several_tokens():
    # seven tokens in one arrival 1 µs after the first: seven ITL values of 1/7 µs, which add
    # up to less than 1 as floats; the summary adds the gap itself, so the mean is exact
    # and cannot depend on which other requests were added before it
    s = SessionSummary()
    s.add(phase(0, 0))
    s.add(done(0, 0, 0, [0, 1], arrival_tokens=(1, 7)))
    assert s.result().itl_ms.mean == 1 / 7 * 1e-3


def _record_lines(events: list) -> list:
    """Each request_done as the record line ``RecordReader.events(raw_requests=True)``
    yields (a dict, its offsets as differences); every other event as it is."""
    import json

    from soaktop.engine.records.format import encode

    return [json.loads(json.dumps(encode(e))) if isinstance(e, RequestDone) else e
            for e in events]


def _soak_events(seed: int, phases_measured: int = 4) -> list:
    """:func:`_mixed_events` stretched over 4 minutes (a soak verdict's state, though too short
    to judge), with two GPUs and the host sampled every 250 ms and the client every second;
    with ``phases_measured=1`` one measured phase after the warm-up."""
    import dataclasses
    import random

    from soaktop.engine.events import GpuSample, HostSample

    rng = random.Random(seed)
    stretched = []
    for e in _mixed_events(seed):
        if isinstance(e, RequestDone):
            e = dataclasses.replace(e, t_ns=e.t_ns * 10, sent_ns=e.sent_ns * 10)
        elif isinstance(e, Phase):
            if phases_measured == 1 and e.phase_id > 1:
                e = dataclasses.replace(e, phase_id=1)  # its requests, once it has begun
                continue
            e = dataclasses.replace(e, t_ns=e.t_ns * 10)
        elif isinstance(e, SessionEnd):
            e = dataclasses.replace(e, t_ns=e.t_ns * 10)
        stretched.append(e)
    if phases_measured == 1:
        stretched = [dataclasses.replace(e, phase_id=min(e.phase_id, 1))
                     if isinstance(e, RequestDone) else e for e in stretched]
    samples: list = []
    energy = [0, 0]
    for t in range(0, 250 * 10**9, 250 * MS):
        for gpu in (0, 1):
            energy[gpu] += rng.randint(100_000, 200_000)
            samples.append(GpuSample(
                t, gpu, temperature_c=60 + rng.random() * 20, slowdown_temperature_c=90.0,
                sm_clock_mhz=1900 - t / 10**9, sm_clock_max_mhz=1980.0,
                power_w=rng.uniform(300, 700), power_limit_w=700.0, energy_mj=energy[gpu],
                clock_event_reasons=("sw_power_cap",) if rng.random() < 0.2 else (),
                clock_event_counters_ns={"sw_power_cap": t // 7}))
        samples.append(HostSample(t, cpu_percent=rng.uniform(0, 100)))
        if t % 10**9 == 0 and t:
            samples.append(ClientSample(  # now and then a lagging loop: client-bound
                t, in_flight=4, tokens=10, interval_ns=10**9,
                loop_lag_p99_us=rng.choice([10, 10, 10, 80_000]), send_lateness_p99_us=5,
                cpu_percent=10.0, loop_cpu_percent=5.0))
    body = sorted(stretched[1:-1] + samples, key=lambda e: e.t_ns)
    return [stretched[0], *body, stretched[-1]]


def _same_state(a: SessionSummary, b: SessionSummary) -> None:
    import numpy as np

    a.result(), b.result()  # count what waits in the buffers
    for metric in ("ttft_us", "ttfo_us", "tpot_us", "e2e_us", "speed_tps", "queued_us",
                   "server_speed_tps", "input_asked", "input_server", "output_received",
                   "output_server"):
        assert np.array_equal(a.request_values(metric), b.request_values(metric)), metric
    for x, y in zip(a._order, b._order, strict=True):
        assert np.array_equal(x.itl.counts, y.itl.counts)
        assert np.array_equal(x.chunk_gaps.counts, y.chunk_gaps.counts)
        assert (x.tokens_in_window, x.ok, x.failed, x.cancelled, x.warmup, x.attained) == \
            (y.tokens_in_window, y.ok, y.failed, y.cancelled, y.warmup, y.attained)
        counted = ("asked_tokens", "server_tokens", "server_reports", "cached_tokens",
                   "cached_of")
        assert [getattr(x, c) for c in counted] == [getattr(y, c) for c in counted]
    da, db = a._drift, b._drift
    assert np.array_equal(da._tokens, db._tokens) and da.end_ns == db.end_ns
    assert np.array_equal(da._ttft_n, db._ttft_n) and da._ttft_n.sum() > 0
    assert np.array_equal(da._ttft_log_sum, db._ttft_log_sum)  # the same bits
    assert da._first_n == db._first_n > 0
    for column in ("_first_t", "_first_ttft", "_first_itl"):
        assert np.array_equal(getattr(da, column)[: da._first_n],
                              getattr(db, column)[: db._first_n], equal_nan=True), column
    assert da._ring_next == db._ring_next
    used = min(da._ring_next, da._ring_t.size)  # the rest was never written
    for column in ("_ring_t", "_ring_ttft", "_ring_itl"):
        assert np.array_equal(getattr(da, column)[:used], getattr(db, column)[:used],
                              equal_nan=True), column


@pytest.mark.parametrize("seed, phases_measured", [(1, 4), (2, 4), (3, 1)])
def test_record_lines_count_exactly_as_their_events(seed, phases_measured):
    """``soaktop summary`` feeds request_done lines as the dicts they were read as, counted a
    batch at a time with whole-array numpy (SessionSummary._flush_lines): every figure, the
    soak verdict and the telemetry windows are those of the events, bit for bit."""
    events = _soak_events(seed, phases_measured)
    lines = _record_lines(events)
    assert sum(type(x) is dict for x in lines) == sum(isinstance(e, RequestDone) for e in events)
    by_event, by_line = summarise(events), summarise(lines)
    result = by_line.result()
    assert result == by_event.result()
    assert result.soak is not None and result.gpus and result.host
    assert len(result.phases) == 1 + phases_measured
    _same_state(by_event, by_line)


def test_record_lines_give_the_judged_soak_verdict_of_their_events():
    """A run long enough to be judged (12 minutes after warm-up, TTFT 20% up at the end,
    noisy, gaps of varying length, two GPUs slowing), as events and as record lines: the same
    verdict, figure for figure, and the state behind it bit for bit."""
    import numpy as np

    from soaktop.engine.events import GpuSample

    rng = np.random.default_rng(4)
    s = 10**9
    events: list = [Phase(0, 0, 4, "m", "f", "start", True)]
    for i in range(7200):  # one every 0.1 s from 29 s (warm-up until 30 s)
        sent = int((29 + i * 0.1) * s)
        ttft = 50_000 * rng.lognormal(0, 0.3) * (1.2 if i > 5400 else 1.0)
        gaps = rng.integers(15_000, 25_000, size=int(rng.integers(1, 30)))
        offsets = tuple((int(ttft) + np.concatenate([[0], np.cumsum(gaps)])).tolist())
        if i == 10:
            events.append(Phase(30 * s, 1, 4, "m", "f", "warm-up done"))
        events.append(RequestDone(sent + offsets[-1] * 1000, 0, i, int(i >= 10), "f", "m",
                                  sent, 8, offsets, offsets[-1], "length", warmup=i < 10))
    samples = [GpuSample(t * s // 4, gpu, temperature_c=60.0 + gpu, sm_clock_mhz=1900.0 - t)
               for t in range(4 * 30, 4 * 750) for gpu in (0, 1)]
    events = sorted(events[1:] + samples, key=lambda e: e.t_ns)
    events = [Phase(0, 0, 4, "m", "f", "start", True), *events, SessionEnd(750 * s, "completed")]
    by_event, by_line = summarise(events), summarise(_record_lines(events))
    soak = by_line.result().soak
    assert soak == by_event.result().soak
    # the clocks fell (1 MHz a sample) with no reasons reported to clear them: throttled
    assert soak.verdict == "throttled" and soak.deciding == ("ttft_ms",)
    assert soak.measures["itl_ms"].n_early > 2000 and set(soak.gpus) == {"0", "1"}
    _same_state(by_event, by_line)


def test_record_lines_count_the_input_tokens_as_their_events():
    """input_tokens and cached_share come out of record lines as out of events, per phase and
    for the run, and there are some of each kind in the mix to count."""
    events = _soak_events(1)
    by_event, by_line = summarise(events), summarise(_record_lines(events))
    a, b = by_event.result(), by_line.result()
    assert a.input_tokens == b.input_tokens and a.cached_share == b.cached_share
    assert [(p.input_tokens, p.cached_share) for p in a.phases] == \
        [(p.input_tokens, p.cached_share) for p in b.phases]
    assert a.input_tokens.asked and a.input_tokens.server and a.cached_share
    assert by_line.input_tokens() == a.input_tokens


@pytest.mark.parametrize("seed", [4, 5])
def test_record_lines_give_the_same_numbers_whenever_the_summary_is_read(seed):
    import random

    lines = _record_lines(_soak_events(seed))
    once = summarise(lines).result()
    rng, often = random.Random(seed), SessionSummary()
    for line in lines:
        often.add(line)
        if rng.random() < 0.005:
            often.result()
        if rng.random() < 0.005:
            often.phase(rng.randint(0, 4))
    assert often.result() == once


def test_the_run_telemetry_is_that_of_every_measured_sample():
    # while the measured samples are one phase's, that phase's window stands for the run's;
    # a sample of another measured phase gives the run a copy of it: always the same figures
    # as one window fed every measured sample
    from soaktop.engine.events import GpuSample, HostSample
    from soaktop.engine.metrics.summary import _Telemetry

    for phases_measured in (1, 4):
        events = _soak_events(6, phases_measured)
        s = summarise(events)
        measured = [p.t_ns for p in events if isinstance(p, Phase) and not p.warmup]
        reference = _Telemetry()
        for e in events:
            if isinstance(e, (GpuSample, HostSample)) and e.t_ns >= measured[0]:
                reference.add(e)
        assert s._run_window().figures(100, 10.0) == reference.figures(100, 10.0)
        starts = [p.t_ns for p in events if isinstance(p, Phase)] + [2**63]
        for index, stats in enumerate(s._order):  # and each phase's window its own samples
            alone = _Telemetry()
            for e in events:
                if isinstance(e, (GpuSample, HostSample)) and \
                        starts[index] <= e.t_ns < starts[index + 1]:
                    alone.add(e)
            assert stats.telemetry.figures(100, 10.0) == alone.figures(100, 10.0)


def test_input_tokens_set_the_servers_count_beside_soaktops():
    s = SessionSummary()
    s.add(phase(0, 0, warmup=True))
    s.add(done(0, 0, 0, [1000], prompt_tokens=1, warmup=True,
               server_reported={"prompt_tokens": 1000}))  # warm-up: not counted
    s.add(phase(1, 10 * MS))
    s.add(done(1, 1, 10 * MS, [1000], prompt_tokens=100,
               server_reported={"prompt_tokens": 300, "completion_tokens": 1,
                                "prompt_tokens_details": {"cached_tokens": 30}}))
    s.add(done(2, 1, 10 * MS, [1000], prompt_tokens=120,
               server_reported={"prompt_eval_count": 360, "eval_count": 1}))  # Ollama
    s.add(done(3, 1, 10 * MS, [1000], prompt_tokens=140))  # the server said nothing
    s.add(done(4, 1, 10 * MS, [], prompt_tokens=999, finish_reason="error",
               error_class="http_500", server_reported={"prompt_tokens": 9999}))  # failed
    s.add(done(5, 1, 10 * MS, [1000], prompt_tokens=100,
               server_reported={"prompt_tokens": 300,  # vLLM without prefix-cache details
                                "prompt_tokens_details": None}))
    s.add(SessionEnd(20 * MS, "completed"))
    r = s.result()
    assert r.input_tokens.asked == (100 + 120 + 140 + 100) / 4  # every successful request
    assert r.input_tokens.server == (300 + 360 + 300) / 3  # those the server counted
    assert r.cached_share == 30 / 300  # of the prompts whose hits it reported
    assert r.phases[1].input_tokens == r.input_tokens and r.phases[1].cached_share == 0.1
    assert r.phases[0].input_tokens.asked is None and r.phases[0].cached_share is None
    assert r.to_dict()["input_tokens"] == {"asked": 115.0, "server": 320.0}
    assert s.input_tokens() == r.input_tokens


def test_a_server_that_reports_no_counts_leaves_them_null():
    s = SessionSummary()
    s.add(phase(0, 0))
    s.add(done(0, 0, 0, [1000], server_reported={"eval_count": 1, "eval_duration": 5}))
    s.add(done(1, 0, 0, [1000], server_reported={"prompt_tokens": True}))  # not a count
    r = s.result()
    assert r.input_tokens.asked == 8 and r.input_tokens.server is None
    assert r.cached_share is None and r.to_dict()["cached_share"] is None


@pytest.mark.parametrize("server, warned", [(110.0, False), (90.0, False), (111.0, True),
                                            (89.0, True), (None, False)])
def test_the_input_tokens_warning_fires_beyond_ten_percent_either_way(server, warned):
    import csv
    import io

    from soaktop.engine.metrics.results import InputTokens, PhaseSummary, RunSummary
    from soaktop.tui.text import summary_csv, summary_table

    counted = InputTokens(asked=100.0, server=server)
    phases = (PhaseSummary(phase_id=0, concurrency=1, warmup=True),
              PhaseSummary(phase_id=1, concurrency=1, input_tokens=counted, cached_share=0.25))
    r = RunSummary(requests_ok=1, input_tokens=counted, cached_share=0.25, phases=phases)
    text = summary_table(r, width=400)
    assert ("warning: the server counted" in text) is warned
    assert "prefix cache: phase 1 25% of prompt tokens served from it (run 25%)" in text
    rows = list(csv.DictReader(io.StringIO(summary_csv(r))))
    assert rows[0]["input_tokens_asked"] == "100.0" and rows[0]["cached_share"] == "0.25"
    assert rows[0]["input_tokens_server"] == ("" if server is None else repr(server))
    assert rows[1]["cached_share"] == "" and rows[2]["cached_share"] == "0.25"


def test_compare_names_a_different_server_count_of_the_input_tokens():
    from soaktop.engine.events import SessionStart
    from soaktop.engine.metrics.compare import Difference, differences

    def run(per_word):
        s = SessionSummary()
        s.add(SessionStart(0, 1, "2026-11-23T00:00:00+00:00", {"input_tokens": 8}, {}, {}))
        s.add(phase(0, 0))
        for rid in range(3):
            s.add(done(rid, 0, 0, [1000], server_reported=None if per_word is None
                       else {"prompt_tokens": 8 * per_word}))
        return s

    assert differences(run(1), run(1)) == []
    assert differences(run(1), run(3)) == [Difference("server input tokens", 8, 24)]
    assert differences(run(None), run(3)) == [Difference("server input tokens", None, 24)]


def test_record_lines_count_each_form_of_a_servers_usage_as_their_events():
    """The plain OpenAI usage, with or without ``total_tokens``, is counted inline on the
    record-line path; every other form goes the event's way. Worked by hand: 4 requests of
    16 words each; the server counted 48, 48, 40 and 32 (Ollama) prompt tokens, and of one
    of them 30 were cached."""
    import numpy as np

    reports = [{"prompt_tokens": 48, "completion_tokens": 4},
               {"prompt_tokens": 48, "completion_tokens": 4, "total_tokens": 52},
               {"prompt_tokens": 40, "completion_tokens": 4,
                "prompt_tokens_details": {"cached_tokens": 30}},
               {"prompt_eval_count": 32, "eval_count": 4, "eval_duration": 10**8}]
    events = [phase(0, 0)] + [
        done(i, 0, i * 10**9, [1000, 2000, 3000, 4000], prompt_tokens=16,
             server_reported=r) for i, r in enumerate(reports)]
    events.append(SessionEnd(5 * 10**9, "completed"))
    by_event, by_line = summarise(events).result(), summarise(_record_lines(events)).result()
    assert by_line == by_event
    # each column in the order the requests came, whichever way each form was counted
    for metric in ("input_server", "output_server", "server_speed_tps"):
        assert np.array_equal(summarise(events).request_values(metric),
                              summarise(_record_lines(events)).request_values(metric)), metric
    assert summarise(events).request_values("input_server").tolist() == [48, 48, 40, 32]
    assert by_line.input_tokens.asked == 16 and by_line.input_tokens.server == 168 / 4
    assert by_line.cached_share == 30 / 40
