"""The local backend streams token times from a continuous batcher, on the CPU.

These run the real ``tiny`` preset (4M parameters, milliseconds per step on two cores) with a
short cache, and assert on the batcher's own statistics and on token timestamps, never on
absolute speed: test machines are too noisy for that.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from soaktop.engine.backends import create
from soaktop.engine.backends import local as local_backend
from soaktop.engine.backends.base import Arrival, GenerationRequest, Prompt, StreamEnd
from soaktop.engine.backends.local import LocalBackend
from soaktop.engine.errors import BackendError, ConfigError, DeviceError, EngineCrashed, OutOfMemory
from soaktop.engine.load.prompts import make_prompts, word

pytestmark = pytest.mark.timeout(60)

PROMPTS = make_prompts(seed=0, count=8, input_tokens=12)


def _request(max_tokens: int, index: int = 0, prompt: Prompt | None = None) -> GenerationRequest:
    return GenerationRequest(request_id=index, prompt=prompt or PROMPTS[index % len(PROMPTS)],
                             max_tokens=max_tokens, model="tiny")


async def _collect(backend: LocalBackend, request: GenerationRequest) -> list:
    return [item async for item in backend.stream(request)]


async def _settle(backend: LocalBackend) -> None:
    """Wait until the batcher has retired everything (cancellations take one iteration)."""
    for _ in range(500):
        stats = backend.batcher.stats()
        if stats.active == stats.pending == stats.slots_in_use == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"batcher did not settle: {backend.batcher.stats()}")


@pytest.fixture
async def backend():
    backend = LocalBackend("tiny", device="cpu", max_len=256)
    await backend.start()
    yield backend
    await backend.close()


async def test_one_stream_yields_exactly_max_tokens_in_time_order(backend) -> None:
    from dataclasses import replace

    items = await _collect(backend, replace(_request(max_tokens=20), want_text=True))
    arrivals, end = items[:-1], items[-1]
    assert len(arrivals) == 20 and all(isinstance(a, Arrival) for a in arrivals)
    times = [a.t_ns for a in arrivals]
    assert all(b > a for a, b in zip(times, times[1:], strict=False))
    assert all(a.tokens == 1 and a.text.endswith(" ") for a in arrivals)
    assert {a.text.strip() for a in arrivals} <= {word(i) for i in range(4096)}
    assert isinstance(end, StreamEnd) and end.finish_reason == "length" and end.server is None
    # a request that does not want the text (no --save-outputs, no --tokenizer) gets none
    plain = await _collect(backend, _request(max_tokens=5))
    assert [a.text for a in plain[:-1]] == [""] * 5


async def test_same_prompt_same_seed_gives_same_text(backend) -> None:
    first = await _collect(backend, _request(max_tokens=8))
    second = await _collect(backend, _request(max_tokens=8))
    assert [a.text for a in first[:-1]] == [a.text for a in second[:-1]]


async def test_output_is_capped_to_fit_the_cache(backend) -> None:
    long_prompt = make_prompts(seed=1, count=1, input_tokens=250)[0]
    items = await _collect(backend, _request(max_tokens=100, prompt=long_prompt))
    assert len(items) - 1 == 256 - 250 + 1
    assert items[-1].server == {"capped_to_tokens": 7}
    with pytest.raises(BackendError) as raised:
        await _collect(backend, _request(10, prompt=make_prompts(2, 1, 257)[0]))
    assert raised.value.error_class == "prompt_too_long"


async def test_concurrent_requests_are_decoded_in_one_batch(backend) -> None:
    results = await asyncio.gather(*(_collect(backend, _request(32, i)) for i in range(4)))
    assert [len(r) for r in results] == [33] * 4
    stats = backend.batcher.stats()
    assert stats.decode_batch_sizes.get(4, 0) > 0, stats
    # Serialised requests would need 4 * 31 decode steps; batched they share them.
    assert stats.decode_steps < 2 * 31, stats


async def test_late_request_joins_running_ones_at_the_next_step(backend) -> None:
    early = [asyncio.create_task(_collect(backend, _request(150, i))) for i in range(2)]
    while backend.batcher.stats().decode_steps < 10:
        await asyncio.sleep(0.005)
    late = await _collect(backend, _request(5, index=2))
    early_items = await asyncio.gather(*early)
    late_times = [a.t_ns for a in late[:-1]]
    for items in early_items:
        times = [a.t_ns for a in items[:-1]]
        # The late request ran entirely while the early ones were generating: it was neither
        # queued behind them nor did it hold them up (they kept producing around it).
        assert times[0] < late_times[0] and late_times[-1] < times[-1]
        assert sum(late_times[0] <= t <= late_times[-1] for t in times) >= 4
    assert backend.batcher.stats().decode_batch_sizes.get(3, 0) >= 4


class _ForwardLog:
    """Wraps the model's two entry points to log ("prefill" | "decode", batch size) in order.

    ``during_decode`` / ``during_prefill`` run on the engine thread inside the forward, which
    lets a test act at a precise point of the batch loop without any sleep-based timing.
    """

    def __init__(self, backend: LocalBackend, monkeypatch) -> None:
        self.calls: list[tuple[str, int]] = []
        self.during_decode = self.during_prefill = lambda: None
        model = backend._model
        real_prefill, real_decode = model.prefill, model.decode

        def prefill(tokens, lengths, slots):
            self.calls.append(("prefill", len(slots)))
            self.during_prefill()
            return real_prefill(tokens, lengths, slots)

        def decode(tokens, positions, slots):
            self.calls.append(("decode", len(slots)))
            self.during_decode()
            return real_decode(tokens, positions, slots)

        monkeypatch.setattr(model, "prefill", prefill)
        monkeypatch.setattr(model, "decode", decode)


async def test_requests_that_arrive_during_a_step_are_prefilled_together(
        backend, monkeypatch) -> None:
    log = _ForwardLog(backend, monkeypatch)
    entered, release = threading.Event(), threading.Event()

    def hold_once():  # park the engine inside the first decode step
        log.during_decode = lambda: None
        entered.set()
        release.wait(10)

    log.during_decode = hold_once
    running = asyncio.create_task(_collect(backend, _request(40)))
    assert await asyncio.to_thread(entered.wait, 10)
    late = [asyncio.create_task(_collect(backend, _request(5, i))) for i in range(1, 4)]
    while backend.batcher.stats().pending < 3:
        await asyncio.sleep(0.005)
    release.set()
    await asyncio.gather(running, *late)
    assert backend.batcher.stats().prefill_batch_sizes == {1: 1, 3: 1}
    joined = log.calls.index(("prefill", 3))
    assert log.calls[joined + 1] == ("decode", 4)  # the next step ran old and new together


async def test_arrivals_at_every_step_do_not_starve_running_requests(
        backend, monkeypatch) -> None:
    log = _ForwardLog(backend, monkeypatch)
    loop = asyncio.get_running_loop()
    arrivals = 5

    def submit_another():  # one more request is pending at every iteration
        nonlocal arrivals
        if arrivals:
            arrivals -= 1
            backend.batcher.submit(PROMPTS[0].token_ids, 50, lambda output: None, loop=loop)

    log.during_prefill = submit_another
    await _collect(backend, _request(20))
    prefills = [i for i, (kind, _) in enumerate(log.calls) if kind == "prefill"]
    assert len(prefills) == 6
    # Every prefill is followed by a decode of everything active: admissions never stall
    # the sequences already running.
    for n, i in enumerate(prefills):
        assert log.calls[i + 1] == ("decode", n + 1)


async def test_cancelled_streams_free_their_slots(backend) -> None:
    capacity = backend.batcher.stats().slots_capacity
    for i in range(50):
        stream = backend.stream(_request(1000, i))
        assert isinstance(await anext(stream), Arrival)
        await stream.aclose()
    task = asyncio.create_task(_collect(backend, _request(1000)))
    while backend.batcher.stats().active == 0:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _settle(backend)
    stats = backend.batcher.stats()
    assert stats.slots_capacity == capacity  # 51 sequential requests, no growth
    assert len(await _collect(backend, _request(3))) == 4  # and the freed slots serve again


async def test_a_failing_forward_fails_its_requests_and_the_engine_carries_on(
        backend, monkeypatch) -> None:
    model = backend._model
    real_decode = model.decode
    errors = iter([RuntimeError("boom\nsecond line"), torch.cuda.OutOfMemoryError("CUDA oom")])

    def failing_decode(*args):
        error = next(errors, None)
        if error is not None:
            raise error
        return real_decode(*args)

    monkeypatch.setattr(model, "decode", failing_decode)
    with pytest.raises(EngineCrashed) as crashed:
        await _collect(backend, _request(5))
    assert crashed.value.error_class == "engine_crash"
    assert "\n" not in str(crashed.value) and "boom" in str(crashed.value)
    with pytest.raises(OutOfMemory) as oom:
        await _collect(backend, _request(5))
    assert oom.value.error_class == "oom"
    assert len(await _collect(backend, _request(5))) == 6
    await _settle(backend)
    assert backend.batcher.stats().failed_requests == 2


async def test_a_crashed_batch_loop_fails_everything_after_it(backend, monkeypatch) -> None:
    def broken() -> None:
        raise AssertionError("a bug in the loop")

    monkeypatch.setattr(backend.batcher, "_retire_cancelled", broken)
    with pytest.raises(EngineCrashed, match="a bug in the loop"):
        await _collect(backend, _request(5))
    with pytest.raises(EngineCrashed):
        await _collect(backend, _request(5))


async def test_running_out_of_memory_while_building_is_a_device_error(monkeypatch) -> None:
    def no_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(local_backend, "build_model", no_memory)
    backend = LocalBackend("llama-1b", device="cpu")
    with pytest.raises(DeviceError, match="not enough memory on cpu for the llama-1b model"):
        await backend.start()
    await backend.close()  # safe after a failed start


async def test_close_fails_unfinished_requests_and_is_idempotent() -> None:
    backend = LocalBackend("tiny", device="cpu", max_len=256)
    await backend.start()
    task = asyncio.create_task(_collect(backend, _request(10_000)))
    while backend.batcher.stats().decode_steps == 0:
        await asyncio.sleep(0.005)
    await backend.close()
    with pytest.raises(BackendError) as closed:
        await task
    assert closed.value.error_class == "engine_closed"
    await backend.close()


async def test_describe_and_models() -> None:
    backend = create("local", model="tiny", device="cpu")
    assert await backend.models() == ["tiny", "gpt2-small", "llama-1b"]
    facts = backend.describe()
    assert facts["kind"] == "local" and facts["arch"] == "llama"
    assert facts["parameters"] == 4_000_000 and facts["dtype"] == "float32"
    assert facts["torch"] == torch.__version__ and facts["device"] == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
async def test_concurrent_streams_on_cuda() -> None:
    backend = LocalBackend("tiny", device="cuda", max_len=256)
    await backend.start()
    try:
        results = await asyncio.gather(*(_collect(backend, _request(24, i)) for i in range(4)))
        stats = backend.batcher.stats()
        facts = backend.describe()
    finally:
        await backend.close()
    for items in results:
        times = [a.t_ns for a in items[:-1]]
        assert len(times) == 24 and all(b > a for a, b in zip(times, times[1:], strict=False))
    assert stats.decode_batch_sizes.get(4, 0) > 0
    assert facts["dtype"] == "bfloat16" and facts["device_name"] == torch.cuda.get_device_name()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_one_line_device_error() -> None:
    with pytest.raises(DeviceError) as raised:
        LocalBackend(device="cuda")
    message = str(raised.value)
    assert message.startswith("CUDA was asked for but torch sees no CUDA device")
    assert torch.__version__ in message and "\n" not in message


def test_unknown_preset_and_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="tiny, gpt2-small, llama-1b"):
        LocalBackend(model="gpt5")
    with pytest.raises(ConfigError):
        LocalBackend(max_len=4096)
    with pytest.raises(ConfigError):
        LocalBackend(device="tpu")


async def test_switching_preset_mid_run_serves_new_requests_on_the_new_model(monkeypatch):
    from soaktop.engine.config import RunConfig
    from soaktop.engine.events import Phase, RequestDone
    from soaktop.engine.local import presets
    from soaktop.engine.session import Session

    small = presets.ModelConfig(arch="gpt2", vocab_size=1024, n_layers=2, d_model=128,
                                n_heads=4, n_kv_heads=4, d_ff=256, max_positions=512)
    monkeypatch.setitem(presets.PRESETS, "tiny-gpt2", small)
    backend = LocalBackend("tiny", device="cpu")
    events: list = []
    config = RunConfig(backend="local", model="tiny", concurrency=2, duration_s=3.0,
                       output_tokens=16, input_tokens=16, warmup_requests=0)
    session = Session(config, backend, listeners=(events.append,))
    seen: dict = {}

    async def switch():
        await session.started.wait()
        await asyncio.sleep(0.8)
        seen["old"] = backend.batcher
        await session.load_and_switch("tiny-gpt2", reason="key")
        seen["new"] = backend.batcher
        await asyncio.sleep(1.0)
        seen["retired"] = not seen["old"]._thread.is_alive()

    await asyncio.gather(session.run(), switch())
    phases = [e for e in events if isinstance(e, Phase)]
    assert phases[-1].model == "tiny-gpt2" and phases[-1].reason == "key"
    done = [e for e in events if isinstance(e, RequestDone) and e.finish_reason != "cancelled"]
    after = [e for e in done if e.sent_ns > phases[-1].t_ns]
    assert after and all(e.model == "tiny-gpt2" and e.ok for e in after)
    assert all(len(e.arrivals_us) == 16 for e in after)
    assert seen["new"] is not seen["old"]
    assert seen["retired"]  # the old model's engine stopped once its last request ended
    with pytest.raises(ConfigError, match="unknown local model"):
        await backend.prepare("no-such-preset")
