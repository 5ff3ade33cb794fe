"""A worker process: sends the requests the main process hands it and reads their streams.

Why: one process reads every stream on one event loop, and that loop tops out near one core
(parsing SSE, httpx, h11), so a big server at high concurrency would make soaktop the
bottleneck of its own soak. With ``--workers N`` the streams are shared among N processes like
this one, each with its own event loop, connection pool and kernel stamping
(:mod:`soaktop.engine.backends.stamping`); the main process keeps the session, its clock, its
load loops and every event (:mod:`soaktop.engine.load.workers`).

What crosses the pipe (pickled tuples, small ints for kinds):

- main -> worker: lists of commands (one loop iteration's): ``(GO, request_id, model,
  max_tokens, prompt, want_text, send_at_ns)``, the prompt its text or ``(text, chat
  messages)``, ``want_text`` whether the output's text is wanted (``--save-outputs``, a
  tokenizer, a conversation's next turn), ``send_at_ns`` None or the planned moment
  (``perf_counter_ns``, one clock on one host): send it now, or then (the main decided when
  it was due, and which worker takes it); ``(CANCEL, request_id)``; ``(STOP,)``.
  The first message is the setup: the backend's kind and options (the API key among them: it
  crosses the pipe, never a command line) and the run's X-Request-Id prefix.
- worker -> main: ``(READY, describe)`` or ``(FAILED, exception)`` once started, then lists
  of items, each list a batch: ``(SENT, rid, t_ns)``, ``(ARRIVED, rid, t_ns, tokens,
  reasoning)``, ``(END, rid, finish, arrival_tokens, server, t_ns, output)`` (``output``:
  ``(answer, reasoning)`` text where it was wanted, else None), ``(ERROR, rid, class,
  message, refused, retry_after_s, output)`` (the text so far, as ``END``'s), once a second
  ``(HEALTH, figures)``: this process's
  :class:`~soaktop.engine.metrics.client_health.HealthFigures` as a dict; and, last,
  ``(CRASHED, text)`` if a bug ends it. A worker writes nothing to the terminal (a full-screen
  app may own it): its stdout and stderr go to ``/dev/null``.

Stamps are this process's ``perf_counter_ns()`` readings: CLOCK_MONOTONIC, one clock for every
process on a Linux host, so the main subtracts its session origin from them as it does from its
own. Items are batched: a batch goes at most :data:`FLUSH_S` after its first item (or at
:data:`BATCH_ITEMS` items), never a message per token; an ended request's batch goes at the end
of the loop iteration, so the main's closed loop refills its slot without that wait.

The serving loop (:class:`_Worker`, :func:`open_backend`, :func:`serve`) does not know its
transport: a Ray actor on another host runs it too (:mod:`soaktop.engine.load.ray_workers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import pickle
import signal
import time
from collections.abc import Callable
from dataclasses import asdict
from multiprocessing.connection import Connection
from typing import Any

from soaktop.engine import backends
from soaktop.engine.backends.base import Arrival, GenerationRequest, Prompt, RequestSent
from soaktop.engine.errors import BackendError, BackendUnavailable
from soaktop.engine.load.turnstile import Turnstile
from soaktop.engine.metrics.client_health import ClientHealth

GO, CANCEL, STOP = 0, 1, 2
READY, FAILED, SENT, ARRIVED, END, ERROR, HEALTH, CRASHED = 10, 11, 12, 13, 14, 15, 16, 17

FLUSH_S = 0.005  # a batch waits at most this long (the live view's lag, not a stamp's)
BATCH_ITEMS = 512  # or goes at once when this full
HEALTH_S = 1.0


class _Outbox:
    """Items for the main process, sent in batches (see the module docstring)."""

    def __init__(self, send: Callable[[list[tuple]], None]) -> None:
        self._send = send  # a pipe's, or a Ray actor's buffer (soaktop.engine.load.ray_workers)
        self._loop = asyncio.get_running_loop()
        self._items: list[tuple] = []
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._soon = False

    def put(self, item: tuple, soon: bool = False) -> None:
        self._items.append(item)
        if len(self._items) >= BATCH_ITEMS:
            self.flush()
        elif soon and not self._soon:
            self._soon = True
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_soon(self.flush)
        elif self._timer is None:
            self._timer = self._loop.call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._soon = None, False
        if self._items:
            items, self._items = self._items, []
            with contextlib.suppress(OSError):  # the main is gone: the worker ends on EOF
                self._send(items)


class _Worker:
    """The serving loop, whatever carries its messages: ``send`` takes a batch of items for
    the main, and the main's commands come to :meth:`command` (from a pipe, :meth:`readable`,
    or a Ray actor's method)."""

    def __init__(self, send: Callable[[list[tuple]], None], backend: Any,
                 health: ClientHealth) -> None:
        self.backend = backend
        self.out = _Outbox(send)
        self.tasks: dict[int, asyncio.Task] = {}
        self.turnstile = Turnstile()  # a wave of sends one per loop iteration, as in the main
        self.done = asyncio.get_running_loop().create_future()
        self.health = health  # a ClientHealth, told of this process's reads

    def readable(self, conn: Connection) -> None:
        """Commands from the main process: one message a call (the loop calls again while
        more wait)."""
        try:
            for message in conn.recv():  # one iteration's commands, together
                self.command(message)
        except (EOFError, OSError):  # the main process is gone: so is the run
            self.finish()

    def command(self, message: tuple) -> None:
        kind = message[0]
        if kind == GO:
            _, rid, model, max_tokens, text, want_text, send_at_ns = message
            task = asyncio.get_running_loop().create_task(self.request(
                rid, model, max_tokens, text, want_text, send_at_ns))
            self.tasks[rid] = task
            task.add_done_callback(lambda _t, rid=rid: self.tasks.pop(rid, None))
        elif kind == CANCEL:
            task = self.tasks.pop(message[1], None)
            if task is not None:
                task.cancel()
        elif kind == STOP:
            self.finish()

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    async def request(self, rid: int, model: str, max_tokens: int,
                      prompt: str | tuple[str, tuple[dict[str, str], ...]],
                      want_text: bool = False, send_at_ns: int | None = None) -> None:
        put = self.out.put
        await self.turnstile.turn()
        text, messages = (prompt, None) if isinstance(prompt, str) else prompt
        request = GenerationRequest(rid, Prompt(rid, (), text, messages), max_tokens, model,
                                    want_text=want_text, send_at_ns=send_at_ns)
        # the output's text, kept only where wanted: it crosses the pipe once, at the end
        answer: list[str] | None = [] if want_text else None
        thought: list[str] = []
        try:
            async with contextlib.aclosing(self.backend.stream(request)) as stream:
                async for item in stream:
                    if type(item) is Arrival:
                        put((ARRIVED, rid, item.t_ns, item.tokens, item.reasoning))
                        if answer is not None:
                            (thought if item.reasoning else answer).append(item.text)
                    elif type(item) is RequestSent:
                        put((SENT, rid, item.t_ns))
                    else:  # StreamEnd: the stream is over
                        put((END, rid, item.finish_reason, item.arrival_tokens, item.server,
                             time.perf_counter_ns(), _joined(answer, thought)), soon=True)
                        return
            put((END, rid, "length", None, None, time.perf_counter_ns(),
                 _joined(answer, thought)), soon=True)
        except BackendError as exc:  # the text so far goes too: a failed request's is saved
            put((ERROR, rid, exc.error_class, str(exc), exc.refused, exc.retry_after_s,
                 _joined(answer, thought)), soon=True)
        except asyncio.CancelledError:
            raise  # the main cancelled it, and no longer waits for it
        except Exception as exc:  # a backend bug costs one request, not the worker
            put((ERROR, rid, "unexpected", f"{type(exc).__name__}: {exc}", False, None,
                 _joined(answer, thought)), soon=True)

    async def report_health(self) -> None:
        """This process's own health once a second (:mod:`soaktop.engine.metrics.client_health`):
        the main records the worst of its processes in its ClientSample."""
        probe = asyncio.ensure_future(self.health.probe())
        try:
            while True:
                await asyncio.sleep(HEALTH_S)
                self.out.put((HEALTH, asdict(self.health.take())))
        finally:
            probe.cancel()


def _joined(answer: list[str] | None, thought: list[str]) -> tuple[str, str] | None:
    """A request's ``(answer, reasoning)`` text for its END item; None where not wanted."""
    return None if answer is None else ("".join(answer), "".join(thought))


async def open_backend(setup: dict[str, Any]) -> tuple[Any, ClientHealth]:
    """The backend ``setup`` names, started, with the health that watches its reads; raises
    what its start raised (the backend closed)."""
    backend = backends.create(setup["kind"], **setup["options"])
    backend.run_id = setup["run_id"]  # one X-Request-Id prefix for the whole run
    health = ClientHealth()
    backend.watch_reads(health.read)
    try:
        await backend.start()
    except BaseException:
        await backend.close()
        raise
    return backend, health


async def serve(worker: _Worker) -> None:
    """``worker``'s life once ready: its health each second until told to stop (or its main
    is gone), then its requests cancelled, its last batch sent and its backend closed."""
    reporting = asyncio.ensure_future(worker.report_health())
    try:
        await worker.done
    finally:
        reporting.cancel()
        for task in list(worker.tasks.values()):
            task.cancel()
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        worker.out.flush()
        await worker.backend.close()


async def _serve(conn: Connection, setup: dict[str, Any]) -> None:
    try:
        backend, health = await open_backend(setup)
    except BaseException as exc:
        conn.send((FAILED, _portable(exc)))
        return
    # Everything alive now (imports, the client) out of the collector's sight for the run,
    # as the command line does for the main process (soaktop.tui.cli.collector_frozen);
    # before the word that starts the run's clock, since a collection takes milliseconds.
    gc.collect()
    gc.freeze()
    try:
        conn.send((READY, backend.describe()))
    except BaseException:
        await backend.close()
        raise
    worker = _Worker(conn.send, backend, health)
    loop = asyncio.get_running_loop()
    loop.add_reader(conn.fileno(), worker.readable, conn)
    try:
        await serve(worker)
    finally:
        loop.remove_reader(conn.fileno())


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it pickles (a SoaktopError does), else a plain one with its words."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return BackendUnavailable(f"{type(exc).__name__}: {exc}")


def main(conn: Connection) -> None:
    """The worker process's entry (``multiprocessing``, start method ``spawn``): the setup is
    the first message on ``conn``, so nothing of it (an API key) is ever on a command line.

    This process is a program of its own, so, as the command line does for the session's,
    it makes the process-wide choices here: its signals, its collector frozen, its output.
    """
    with contextlib.suppress(KeyboardInterrupt):
        # Ctrl-C and a lost terminal's SIGHUP reach the whole process group: the session
        # stops the run, then its workers, in order; a worker also ends when its pipe does
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            setup = conn.recv()
        except (EOFError, OSError):
            return
        _silence()  # the terminal may be a full-screen app's: a worker speaks through its pipe
        try:
            asyncio.run(_serve(conn, setup))
        except Exception as exc:  # a bug: said through the pipe, in the line that reports it
            with contextlib.suppress(OSError):
                conn.send([(CRASHED, f"{type(exc).__name__}: {exc}")])
            raise SystemExit(1) from None


def _silence() -> None:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)
