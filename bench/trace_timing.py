"""How close to a trace's timestamps soaktop's sends land (``--trace``), against what bare
httpx does on the same machine, side by side in one run.

A dense synthetic trace (``--requests`` over ``--span`` seconds of trace time, uniform
arrivals, replayed at ``--speed``) goes to a loopback server in a process of its own. The table
prints how late each request's last byte reached the kernel after its planned time (``queued_us``
in the record: p50, p90, p99, max, in ms) and the event loop's own lag (the worst second's p99).
Beside it, the floor: bare httpx sending the same requests, each built 5 ms ahead and sent at its
time (an asyncio sleep to it), so what soaktop adds is the difference; the ratio row is soaktop
over the floor.

What it tells: the lateness a trace replay adds on this machine, before any server delay. Every
latency runs from the planned time, so the lateness is counted either way; this measures how
small it is. Run it on a quiet machine: anything else on the cores is measured too. ``--pin``
puts the server on the last core and the client on the others, as on a GPU box where the
server has cores of its own (on a 2-core machine the two otherwise take turns on both).

    python bench/trace_timing.py                      # 1,000 requests, 8 s at 2x
    python bench/trace_timing.py --speed 0.2 --pin    # 25 requests/s, server on its own core
    python bench/trace_timing.py --requests 4000 --span 16 --speed 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from soaktop.engine.backends.openai import OpenAIBackend
from soaktop.engine.config import RunConfig
from soaktop.engine.events import ClientSample, RequestDone
from soaktop.engine.loopback import Schedule
from soaktop.engine.loopback.process import spawn
from soaktop.engine.session import Session


async def _replay(url: str, trace: str, speed: float) -> tuple[np.ndarray, float]:
    events: list = []
    config = RunConfig(backend="openai", url=url, model="loopback", trace=trace,
                       trace_speed=speed, telemetry=())
    session = Session(config, OpenAIBackend(url, model="loopback"), listeners=(events.append,))
    await session.run()
    late = np.array([e.queued_us for e in events if isinstance(e, RequestDone)], dtype=float)
    lag = [e.loop_lag_p99_us for e in events
           if isinstance(e, ClientSample) and e.loop_lag_p99_us is not None]
    return late / 1e3, (max(lag) / 1e3 if lag else float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--span", type=float, default=8.0, help="trace seconds")
    parser.add_argument("--speed", type=float, default=2.0)
    parser.add_argument("--pin", action="store_true",
                        help="the server on the last core, the client on the others")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    if args.pin and len(cores) < 2:
        parser.error("--pin needs two cores")
    times = np.sort(np.random.default_rng(1).uniform(0, args.span * 1e3, args.requests))
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.jsonl"
        trace.write_text("".join(json.dumps({"timestamp": round(float(t), 3),
                                             "input_length": 8, "output_length": 2}) + "\n"
                                 for t in times))
        rate = args.requests / (args.span / args.speed)
        print(f"trace replay: {args.requests} requests, {args.span:g} s at {args.speed:g}x "
              f"({rate:,.0f} requests/s); lateness of each send after its planned time, ms")
        print(f"{'client':<12} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>8} {'loop lag':>9}")
        if args.pin:  # the server inherits the last core; then this process takes the rest
            os.sched_setaffinity(0, cores[-1:])
            print(f"server on core {cores[-1]}, client on {', '.join(map(str, cores[:-1]))}")
        with spawn(Schedule(ttft_ms=1, itl_ms=0, tokens=2)) as url:
            if args.pin:
                os.sched_setaffinity(0, cores[:-1])
            late, lag = asyncio.run(_replay(url, str(trace), args.speed))
            floor = asyncio.run(_bare(url, times, args.speed))
        rows = []
        for name, values, loop_lag in (("soaktop", late, lag), ("bare httpx", floor, None)):
            row = [float(np.percentile(values, q)) for q in (50, 90, 99)] + [values.max()]
            rows.append(row)
            print(f"{name:<12} " + " ".join(f"{v:>7.3f}" for v in row[:3]) + f" {row[3]:>8.3f}"
                  + (f" {loop_lag:>9.3f}" if loop_lag is not None else ""))
        print(f"{'ratio':<12} " + " ".join(f"{a / b:>7.2f}" for a, b in zip(*rows)))


async def _bare(url: str, times: np.ndarray, speed: float) -> np.ndarray:
    """Bare httpx: each request built 5 ms before its time, sent at it; how late each one's
    body was on its way (httpcore's trace), in ms."""
    import time

    import httpx

    body = {"model": "loopback", "messages": [{"role": "user", "content": "a b c d e f g h"}],
            "max_tokens": 2, "stream": True}
    late: list[int] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async def one(i: int, due: int) -> None:
            sent: list[int] = []

            async def trace(event: str, info: dict) -> None:
                if event == "http11.send_request_body.complete":
                    sent.append(time.perf_counter_ns())

            request = client.build_request("POST", "/v1/chat/completions", json=body,
                                           extensions={"trace": trace})
            await asyncio.sleep(max(0.0, (due - time.perf_counter_ns()) / 1e9))
            response = await client.send(request, stream=True)
            late.append(sent[0] - due)
            await response.aread()
            await response.aclose()

        start = time.perf_counter_ns() + 50_000_000
        dues = start + ((times - times[0]) * 1e6 / speed).astype(np.int64)
        tasks = []
        for i, due in enumerate(dues):
            await asyncio.sleep(max(0.0, (int(due) - 5_000_000 - time.perf_counter_ns()) / 1e9))
            tasks.append(asyncio.create_task(one(i, int(due))))
        await asyncio.gather(*tasks)
    return np.array(late, dtype=float) / 1e6


if __name__ == "__main__":
    main()
