"""soaktop's TTFT and ITL against what a loopback server actually put on the wire.

The server runs in its own process (client and server must not share a GIL) and records when
each content chunk left; requests are paired by their X-Request-Id, and both sides read
CLOCK_MONOTONIC. The bar is the HTTP-backends issue's: at 64 streams and at least 3,000
tokens/s in total on the 2 cores of a CI machine, soaktop's p50, p90 and p99 of TTFT and ITL
within 1 ms of the wire's. 1 ms is about 5% of the ~19 ms inter-token gap paced here, so a
client whose stamps lagged behind the event loop (the failure this guards against: bursts of
new requests stretch loop iterations to several ms) fails it at p99. As in soaktop's summary,
warm-up requests are not compared: here the closed loop's first two waves, during which the
client starts 64 requests at once and is CPU-bound (see engine/fidelity.py).
"""

from engine.fidelity import QUANTILES, measure


def assert_within_1ms(f):
    errors = {(m, q): round(f.error_ms(m, q), 3) for m in ("ttft_ms", "itl_ms")
              for q in QUANTILES}
    assert all(abs(e) < 1.0 for e in errors.values()), errors


def test_ttft_and_itl_are_within_1ms_of_the_wire_at_64_streams_and_3000_tokens_per_s():
    # paced for 3,400 tokens/s: ramp-up and the cut at the end leave about 95% of that
    f = measure(concurrency=64, tokens_per_s=3400, duration_s=10.0)
    assert f.tokens_per_s >= 3000, f"the run only reached {f.tokens_per_s:.0f} tokens/s"
    assert_within_1ms(f)


def test_ttft_and_itl_are_within_1ms_of_the_wire_at_8_streams():
    f = measure(concurrency=8, tokens_per_s=400, duration_s=4.0, tokens=32)
    assert f.requests >= 30
    assert_within_1ms(f)
