"""A session changes no process-wide state: what a caller wants held for the run alone (the
command line freezes the garbage collector) goes in ``while_running``."""

import contextlib
import gc

from soaktop.engine.backends.fake import FakeBackend
from soaktop.engine.events import SessionEnd, SessionStart


class LoggedBackend(FakeBackend):
    def __init__(self, log: list[str]) -> None:
        super().__init__(ttft_s=0.001, itl_s=0.001)
        self.log = log

    async def start(self) -> None:
        self.log.append("backend started")
        await super().start()

    async def close(self) -> None:
        self.log.append("backend closed")
        await super().close()


async def test_a_session_leaves_the_garbage_collector_as_it_found_it(make_session):
    before = gc.get_freeze_count()
    seen = set()
    session, _ = make_session(FakeBackend(ttft_s=0.001, itl_s=0.001), concurrency=2,
                              max_requests=4, output_tokens=3, warmup_requests=0)
    session.add_listener(lambda event: seen.add(gc.get_freeze_count()))
    await session.run()
    assert seen == {before}


async def test_while_running_holds_from_the_backend_s_start_to_the_run_s_end(make_session):
    log: list[str] = []

    @contextlib.contextmanager
    def hold():
        log.append("held")
        try:
            yield
        finally:
            log.append("let go")

    session, _ = make_session(LoggedBackend(log), concurrency=1, max_requests=2,
                              output_tokens=2, warmup_requests=0)
    session.while_running = hold
    session.add_listener(
        lambda event: log.append(type(event).__name__)
        if isinstance(event, (SessionStart, SessionEnd)) else None)
    await session.run()
    assert log == ["backend started", "held", "SessionStart", "SessionEnd", "let go",
                   "backend closed"]
