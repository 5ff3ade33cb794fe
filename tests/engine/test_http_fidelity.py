"""soaktop's TTFT and ITL against what a loopback server actually put on the wire.

The server runs in its own process (client and server must not share a GIL) and records when
each content chunk left; requests are paired by their X-Request-Id, and both sides read
CLOCK_MONOTONIC. The bar is the HTTP-backends issue's: at 64 streams and at least 3,000
tokens/s in total on the 2 cores of a CI machine, soaktop's p50, p90 and p99 of TTFT and ITL
within 1 ms of the wire's. 1 ms is about 5% of the ~19 ms inter-token gap paced here, so a
client whose stamps lagged behind the event loop (the failure this guards against: bursts of
new requests stretch loop iterations to several ms) fails it at p99. As in soaktop's summary,
warm-up requests are not compared: here the closed loop's first two waves, during which the
client starts 64 requests at once and is CPU-bound (see engine/fidelity.py). Each bar holds
with the streams read in the session's process and in 2 worker processes (``--workers 2``,
soaktop.engine.load.workers), whose stamps cross into the session's clock.

TTFT runs from the client's send stamp on both sides, so each run also holds that stamp against
the server's own receive time. And each bar is the machine's as much as soaktop's: a run that
misses one is run again only if soaktop flagged itself client-bound in it, as it must when
other work on the machine starves it (see ``measure_within_1ms``).
"""

import pytest

from soaktop.engine.metrics.fidelity import QUANTILES, measure

#: The send hop's lower quartile: from the client's send stamp to the server's receive time,
#: -0.1 to +0.11 ms measured (8 to 64 streams, in-process and 2 workers, on 2 cores); with the
#: stamp taken when the request's coroutine started instead, 0.41 to 0.98 ms. The lower
#: quartile, as a machine's load only delays: a server busy with other streams reads some
#: requests late (the hop's p90 reached 0.96 ms), but not a quarter of them.
SEND_HOP_P25_MS = 0.25
#: Runs of a test: one that misses a bar is run again only when soaktop flagged seconds of it
#: client-bound (the machine's other work starved it: its numbers said they were at risk).
ATTEMPTS = 3


def misses(f):
    """What in ``f`` misses a bar: errors of 1 ms or more at a quantile, or a send stamp that
    disagrees with the server's receive time. TTFT runs from the send stamp on both sides,
    so a stamp taken at the wrong moment (when the request was due, when its coroutine
    started) cancels out of the TTFT error; the server's own receive time catches it."""
    errors = {(m, q): round(f.error_ms(m, q), 3) for m in ("ttft_ms", "itl_ms")
              for q in QUANTILES}
    found = [f"errors of 1 ms or more: {errors}"] if any(
        abs(e) >= 1.0 for e in errors.values()) else []
    hop = {q: round(ms, 3) for q, ms in f.send_hop_ms.items()}
    if hop[25] >= SEND_HOP_P25_MS:
        found.append(f"send stamps earlier than the request left (the hop to the server's "
                     f"receive at p25 is {SEND_HOP_P25_MS} ms or more): {hop} ms")
    return found


def measure_within_1ms(**run):
    """``measure(**run)``, which must meet every bar. A run that misses one is excused only
    when the client flagged itself client-bound in it (after warm-up), as a run on a machine
    busy with other work does; one that misses a bar unflagged fails at once (either soaktop's
    timing or its self-check is wrong), and so do ``ATTEMPTS`` flagged ones."""
    excused = []
    for _ in range(ATTEMPTS):
        f = measure(**run)
        found = misses(f)
        if not found:
            return f
        assert f.client_bound_s > 0, f"missed with no second flagged client-bound: {found}"
        excused.append(f"{f.client_bound_s:.0f} s client-bound: {found}")
    pytest.fail(f"client-bound in each of {ATTEMPTS} runs (a busy machine?): {excused}")


WORKERS = pytest.mark.parametrize("workers", [1, 2], ids=["in-process", "2-workers"])


@WORKERS
def test_ttft_and_itl_are_within_1ms_of_the_wire_at_64_streams_and_3000_tokens_per_s(workers):
    # paced for 3,400 tokens/s: ramp-up and the cut at the end leave about 95% of that
    f = measure_within_1ms(concurrency=64, tokens_per_s=3400, duration_s=10.0, workers=workers)
    assert f.tokens_per_s >= 3000, f"the run only reached {f.tokens_per_s:.0f} tokens/s"


@WORKERS
def test_ttft_and_itl_are_within_1ms_of_the_wire_at_8_streams(workers):
    f = measure_within_1ms(concurrency=8, tokens_per_s=400, duration_s=4.0, tokens=32,
                           workers=workers)
    assert f.requests >= 30


def test_a_loopback_of_two_processes_is_measured_against_the_emissions_of_both():
    """Two server processes on one port (SO_REUSEPORT), 16 connections spread over them: every
    complete request pairs with its emission, gathered from whichever process served it, and
    soaktop agrees with that wire within 1 ms."""
    f = measure_within_1ms(concurrency=16, tokens_per_s=400, duration_s=4.0, tokens=16,
                           server_processes=2)
    assert f.server_processes == 2
    assert f.requests >= 40 and f.unpaired == 0, (f.requests, f.unpaired)


def test_compare_pairs_by_request_id_and_measures_against_the_wire():
    """The arithmetic the bar above rests on, on hand-made data with a known answer: each
    client arrival 0.2 ms after its chunk left the server, so every error is +0.2 ms."""
    from soaktop.engine.backends.http import request_uuid
    from soaktop.engine.events import RequestDone
    from soaktop.engine.loopback.schedule import Emission
    from soaktop.engine.metrics.fidelity import compare

    origin_ns, run_id, tokens = 1_000_000_000, "r1", 4
    done, emissions = [], []
    for i in range(3):
        sent_ns = i * 100_000_000  # session-relative
        chunks_ns = tuple(origin_ns + sent_ns + 20_000_000 + k * (10_000_000 + i * 1_000_000)
                          for k in range(tokens))
        arrivals_us = tuple((c - origin_ns - sent_ns + 200_000) // 1000 for c in chunks_ns)
        done.append(RequestDone(sent_ns + 60_000_000, 0, i, 1, "openai", "m", sent_ns, 8,
                                arrivals_us, arrivals_us[-1], "length"))
        received_ns = origin_ns + sent_ns + 50_000 * (i + 1)  # 50, 100, 150 µs after
        emissions.append(Emission(i + 1, "/v1/chat/completions", received_ns, None,
                                  chunks_ns, (1,) * tokens, 200, None,
                                  request_uuid(run_id, i)))
    # an emission of another run (its id does not pair) changes nothing
    emissions.append(Emission(9, "/v1/chat/completions", 0, None, (1, 2, 3, 4), (1,) * 4, 200,
                              None, request_uuid("other", 0)))
    f = compare(done, emissions, origin_ns, run_id, tokens, concurrency=3, duration_s=1.0)
    assert f.requests == 3 and f.concurrency == 3 and f.unpaired == 0
    lost = compare(done, emissions[1:], origin_ns, run_id, tokens, concurrency=3, duration_s=1)
    assert lost.requests == 2 and lost.unpaired == 1  # a request the wire never told of
    assert f.tokens_per_s == pytest.approx(3 * tokens / 1.0)  # received over the 1 s run
    for q in QUANTILES:
        assert f.error_ms("ttft_ms", q) == pytest.approx(0.2)
        assert f.ttft_ms[q][1] == pytest.approx(20.0)  # the wire's TTFT: 20 ms for each
        assert f.error_ms("itl_ms", q) == pytest.approx(0.0, abs=1e-9)
    assert f.itl_ms[50][1] == pytest.approx(11.0)  # gaps of 10, 11 and 12 ms
    # the send hop, from the client's send stamp to the server's receive time
    assert f.send_hop_ms[50] == pytest.approx(0.1) and f.send_hop_ms[25] == pytest.approx(0.075)


def test_the_trusted_rate_is_the_highest_whose_p99_errors_stay_under_1_ms():
    from soaktop.engine.metrics.fidelity import Fidelity, trusted_rate

    def row(rate, ttft_p99, itl_p99):
        quantiles = {50: (1.0, 1.0), 90: (1.0, 1.0)}
        return Fidelity(64, 100, rate, {**quantiles, 99: (ttft_p99, 0.0)},
                        {**quantiles, 99: (itl_p99, 0.0)})

    assert trusted_rate([row(400, 0.5, 0.2), row(3000, 0.3, 1.5), row(900, -0.9, 0.1)]) == 900
    assert trusted_rate([row(400, 1.2, 0.0)]) is None


def test_the_calibration_table_gives_each_rate_its_errors_in_ms():
    from soaktop.engine.metrics.fidelity import Fidelity
    from soaktop.tui.calibrate_text import calibration_table

    f = Fidelity(64, 120, 3000.0, {50: (1.25, 1.0), 90: (2.0, 1.5), 99: (3.0, 2.0)},
                 {50: (1.0, 1.0), 90: (0.75, 1.0), 99: (1.5, 1.0)}, client_bound_s=2.0)
    header, row = calibration_table([f])
    assert header.split() == ["got", "tok/s", "reqs", "TTFT", "p50", "TTFT", "p90", "TTFT",
                              "p99", "ITL", "p50", "ITL", "p90", "ITL", "p99", "client-bound"]
    assert row.split() == ["3,000", "120", "+0.250", "+0.500", "+1.000", "+0.000", "-0.250",
                           "+0.500", "2", "s"]
