"""A running session's control socket: the dashboard's keys for a run seen from elsewhere.

A run that writes a record listens on a Unix domain socket beside it, ``RECORD.sock``, from
when its clock starts until its record is closed; then the socket file is removed. That is
what lets a detached run be steered again: ``soaktop attach`` on the same machine sends the
live keys over it, ``soaktop ctl`` one command from a script. A Unix socket and not TCP: the
file's mode (0600) and, on Linux, the peer's credentials say who may steer, with no port to
open, guard or collide with; a run on another machine is out of reach on purpose.

The protocol is one JSON object a line, each way, any number of commands per connection and
any number of connections at once. A request names its command in ``cmd``::

    {"cmd": "concurrency", "value": 8}       or "step": 1 or -1 (what + and - do)
    {"cmd": "rate", "value": 12.5}           or "factor": 1.25 (open loop only)
    {"cmd": "pause"}    {"cmd": "resume"}    {"cmd": "mark", "text": "fans at 100%"}
    {"cmd": "stop"}     {"cmd": "status"}
    {"cmd": "models"}                        the models the run's backend serves ("models")
    {"cmd": "model", "name": "llama-1b"}     new requests go to that model (what m does)

and may say ``"source": "key"`` when it is a viewer's key press, so that the phase is recorded
with the reason a key in the run's own dashboard gives; otherwise the reason is the session
API's own (``command``, ``paused``, ``resumed``). Each request gets one reply line,
``{"ok": true, "done": "...", "state": {...}}`` or ``{"ok": false, "error": "..."}``: ``done``
and ``error`` say in one line what was done or why not; ``state`` is the run's load now
(``t_s``, ``model``, ``concurrency``, ``rate``, ``paused``, ``in_flight``, ``ended``). The reply
to ``stop`` comes once the run has ended and its record is closed; the reply to ``model`` once
the backend has the model ready (the local engine builds it first, seconds for a big preset,
while the old one keeps serving), and ``models`` adds the list as ``"models": [...]``.

Every change goes through the session's own methods (``set_concurrency``, ``set_rate``,
``pause``, ``resume``, ``mark``, ``load_and_switch``, ``stop``), so it is the same phase or
mark event in the record as from a key (docs/design.md, "One event stream"). A bad command
gets an error reply and the run goes on; a client that goes away leaves the run going.
Nothing of the config crosses the socket, so neither an API key nor a URL's credentials can.

``sockaddr_un`` holds at most 107 bytes of path. When the path beside the record is longer,
the socket goes into a private folder (``/tmp/soaktop-UID/``, mode 0700) under a name made
from the record's resolved path, so a client finds it from the record alone; the run says
where (:attr:`ControlServer.fallback`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import socket
import stat
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soaktop.engine.errors import ConfigError, SoaktopError
from soaktop.engine.events import EndReason, PhaseReason

if TYPE_CHECKING:
    from soaktop.engine.session import Session

SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes, the last one the NUL
MAX_LINE = 4096  # a command is small; a longer line is an error, never read into memory
MAX_MARK = 200
REPLY_TIMEOUT_S = 5.0  # a run whose loop answers nothing for this long is as good as gone
STOP_TIMEOUT_S = 60.0  # the reply to stop waits for the record to close, as `soaktop stop`
LOAD_TIMEOUT_S = 300.0  # the reply to model waits for the local engine to build a big preset
COMMANDS = ("concurrency", "rate", "pause", "resume", "mark", "model", "models", "stop",
            "status")
#: Commands answered after awaiting the backend (a model list, a model made ready).
AWAITED = ("model", "models")
MAX_MODEL = 200  # a model name is short; a longer one is refused, not sent to a server


class ControlError(SoaktopError):
    """The control socket cannot be reached or made; the message is one line for the user."""


def socket_path(record: Path) -> Path:
    """Where the run writing ``record`` listens: beside it, or, when that path is too long
    for a Unix socket, in a private folder under a name derived from the record's path."""
    resolved = Path(record).resolve()
    beside = Path(f"{resolved}.sock")
    if len(os.fsencode(beside)) <= SUN_PATH_MAX:
        return beside
    digest = hashlib.sha256(os.fsencode(resolved)).hexdigest()[:20]
    return private_folder() / f"{digest}.sock"


def private_folder() -> Path:
    """The short folder of the fallback sockets: ``/tmp`` is short wherever it exists (not
    ``$TMPDIR``, which two shells of one user may set differently)."""
    base = Path("/tmp") if os.path.isdir("/tmp") else Path(tempfile.gettempdir())
    return base / f"soaktop-{os.getuid()}"


def _make_private(folder: Path) -> None:
    """Create ``folder`` mode 0700, or check that the one there is this user's own, private,
    real folder: anyone may create names in /tmp first."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ControlError(f"{folder} is not a private folder of this user; remove it")


def _listening(path: Path) -> bool:
    """Whether something answers at the socket ``path`` (a stale file answers nothing)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _bind(path: Path) -> socket.socket:
    """A listening socket at ``path``, mode 0600; a stale socket file there is replaced."""
    if path.parent == private_folder():
        _make_private(path.parent)
    if os.path.lexists(path):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ControlError(f"{path} exists and is not a socket")
        if _listening(path):
            raise ControlError(f"another run already listens at {path}")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))
        # the umask may have left it open to the group; until this line nobody is served
        # (connections only queue), and the peer check below turns away another user anyway
        os.chmod(path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink()
        raise ControlError(f"cannot listen at {path}: {exc.strerror or exc}") from None
    return sock


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    """The connecting process's user (Linux's SO_PEERCRED), or None where it cannot be read."""
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return struct.unpack("3i", creds)[1]


def _encode(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply, separators=(",", ":")).encode() + b"\n"


def _failure(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


class _Refused(Exception):
    """A command that cannot be done; the message is the reply's one line."""


@dataclass
class ControlServer:
    """The control socket of one session, served on the session's own event loop (every
    command runs there, between its other work, as a key press does)."""

    session: Session
    path: Path
    #: The short path used because the one beside the record was too long; None otherwise.
    fallback: Path | None = None
    _sock: socket.socket | None = None
    _server: asyncio.AbstractServer | None = None
    _task: asyncio.Future | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _stoppers: list[asyncio.StreamWriter] = field(default_factory=list)
    _closed: asyncio.Event | None = None
    _marks: int = 0
    _stopping: bool = False
    _inode: tuple[int, int] | None = None

    # -- open and close: synchronous, so a session's ``while_running`` context can hold them --
    def open(self) -> None:
        """Bind the socket (mode 0600) and start serving on the running loop."""
        self._sock = _bind(self.path)
        info = self.path.stat()
        self._inode = (info.st_dev, info.st_ino)
        self._closed = asyncio.Event()
        self._task = asyncio.ensure_future(self._serve(self._sock))

    async def _serve(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_unix_server(self._client, sock=sock, limit=MAX_LINE)

    def close(self) -> None:
        """Stop listening, answer the stop commands (the record is closed by now), drop
        every connection and remove the socket file (if it is still this server's)."""
        if self._sock is None:
            return
        if self._server is not None:
            self._server.close()
        else:
            self._sock.close()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        done = _encode({"ok": True, "done": f"stopped after {self.session.now_ns() / 1e9:.1f} s;"
                                            " the record is closed", "state": self.state()})
        for writer in self._stoppers:
            with contextlib.suppress(Exception):
                writer.write(done)  # sent at once: a few bytes to an idle socket
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.close()
        self._closed.set()
        with contextlib.suppress(OSError):
            info = self.path.stat()
            if (info.st_dev, info.st_ino) == self._inode:
                self.path.unlink()
        self._sock = None

    # -- a connection ----------------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid = _peer_uid(writer)
        if uid is not None and uid != os.getuid():
            writer.write(_encode(_failure("this run belongs to another user")))
            writer.close()
            return
        self._writers.add(writer)
        try:
            while not self._closed.is_set():
                try:
                    line = await reader.readline()
                except ValueError:  # longer than MAX_LINE: where the next line starts is lost
                    writer.write(_encode(_failure(f"a command is one line of at most "
                                                  f"{MAX_LINE} bytes")))
                    await writer.drain()
                    return
                if not line:
                    return  # the client went away; the run goes on
                if not line.strip():
                    continue
                reply = self.handle(line)
                if isinstance(reply, _Awaited):
                    reply = await reply.answer()
                if reply is None:  # stop: answered by close(), once the record is closed
                    self._stoppers.append(writer)
                    await self._closed.wait()
                    return
                writer.write(_encode(reply))
                await writer.drain()
        except (ConnectionError, OSError):
            return  # a client that vanished mid-reply leaves the run going
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    # -- commands --------------------------------------------------------------------------
    def handle(self, line: bytes) -> dict[str, Any] | _Awaited | None:
        """The reply to one request line; None for a stop, which is answered when the run
        has ended; an :class:`_Awaited` for a command that waits on the backend. Never
        raises: a bad command is an error reply."""
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return _failure('not JSON: send one object a line, e.g. {"cmd": "pause"}')
        if not isinstance(request, dict):
            return _failure('not a JSON object: send e.g. {"cmd": "pause"}')
        cmd = request.get("cmd")
        if cmd not in COMMANDS:
            return _failure(f"unknown command {str(cmd)[:40]!r}; one of: {', '.join(COMMANDS)}")
        try:
            if cmd == "status":
                return {"ok": True, "done": self._describe(), "state": self.state()}
            self._check_running()
            key = request.get("source") == "key"
            if cmd == "stop":
                self._stopping = True
                self.session.stop(EndReason.INTERRUPTED)
                return None
            if cmd in AWAITED:
                return _Awaited(self, cmd, request, key)
            done = getattr(self, f"_{cmd}")(request, key)
        except _Refused as exc:
            return _failure(str(exc))
        except ConfigError as exc:  # the session's own refusal, e.g. a rate on a closed loop
            return _failure(str(exc))
        except Exception as exc:  # a bug here must cost one reply, never the soak
            return _failure(f"not done: {type(exc).__name__}: {exc}")
        return {"ok": True, "done": done, "state": self.state()}

    def _check_running(self) -> None:
        session = self.session
        if session.ended or self._closed.is_set():
            raise _Refused("the run has ended")
        if self._stopping:
            raise _Refused("the run is stopping")
        if session.current_phase is None:
            raise _Refused("the run has not started yet")

    def _concurrency(self, request: dict[str, Any], key: bool) -> str:
        session = self.session
        if session.config.trace is not None:
            raise _Refused("a trace replay keeps the trace's own times")
        if session.config.rate is not None:
            raise _Refused("this run keeps a rate, not a concurrency: set the rate")
        before = session.target_concurrency
        if "step" in request:
            target = before + _number(request, "step", int)
            if target < 1:
                raise _Refused("concurrency is at its lowest: 1")
        else:
            target = _number(request, "value", int)
            if target < 1:
                raise _Refused(f"concurrency must be at least 1 (got {target})")
        session.set_concurrency(target, reason=PhaseReason.KEY if key else PhaseReason.COMMAND)
        return self._changed("concurrency", before, target)

    def _rate(self, request: dict[str, Any], key: bool) -> str:
        session = self.session
        if session.config.trace is not None:
            raise _Refused("a trace replay keeps the trace's own times")
        if session.config.rate is None:
            raise _Refused("this run keeps a concurrency, not a rate (a run started with "
                           "--rate has one)")
        before = session.target_rate
        if "factor" in request:
            factor = _number(request, "factor", float)
            if not factor > 0:
                raise _Refused(f"a factor must be above 0 (got {factor:g})")
            rate = round((before or 1.0) * factor, 2)
        else:
            rate = _number(request, "value", float)
        if not rate > 0:
            raise _Refused(f"a rate must be above 0 requests/s (got {rate:g})")
        session.set_rate(rate, reason=PhaseReason.KEY if key else PhaseReason.COMMAND)
        return self._changed("rate", before, rate, " requests/s")

    def _changed(self, what: str, before: float, after: float, unit: str = "") -> str:
        """What a new concurrency or rate did, in one line: held for the resume while the
        load is paused, the same as before, or from one level to the other."""
        if self.session.paused:
            return f"{what} {after:g}{unit} on resume (the load is paused)"
        if after == before:
            return f"{what} stays {after:g}{unit}"
        return f"{what} {before:g} -> {after:g}{unit}"

    def _pause(self, request: dict[str, Any], key: bool) -> str:
        session = self.session
        if session.paused:
            raise _Refused("the load is already paused")
        session.pause(PhaseReason.KEY_PAUSED if key else PhaseReason.PAUSED)
        return f"paused at {session.now_ns() / 1e9:.1f} s; requests in flight finish"

    def _resume(self, request: dict[str, Any], key: bool) -> str:
        session = self.session
        if not session.paused:
            raise _Refused("the load is not paused")
        session.resume(PhaseReason.KEY_RESUMED if key else PhaseReason.RESUMED)
        return f"resumed at {self._level()}"

    def _mark(self, request: dict[str, Any], key: bool) -> str:
        text = request.get("text")
        if text is None:
            self._marks += 1
            text = f"mark {self._marks}"
        if not isinstance(text, str) or not text.strip():
            raise _Refused("a mark needs some text")
        if not text.isprintable() or len(text) > MAX_MARK:
            raise _Refused(f"a mark is one line of printable text, at most {MAX_MARK} "
                           "characters")
        self.session.mark(text)
        return f"{text!r} marked at {self.session.now_ns() / 1e9:.1f} s"

    async def _models(self, request: dict[str, Any], key: bool) -> dict[str, Any]:
        names = await self.session.backend.models()
        listed = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20
                                          else "")
        return {"done": f"{len(names)} model{'s' * (len(names) != 1)}: {listed}",
                "models": list(names)}

    async def _model(self, request: dict[str, Any], key: bool) -> dict[str, Any]:
        session = self.session
        name = request.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _Refused('a model needs a name, e.g. {"cmd": "model", "name": "llama-1b"}')
        if not name.isprintable() or len(name) > MAX_MODEL:
            raise _Refused(f"a model name is one line of printable text, at most {MAX_MODEL} "
                           "characters")
        before = session.model
        if name == before:
            return {"done": f"model stays {name}"}
        served = await session.backend.models()
        if served and name not in served:  # a server that lists none is taken at its word
            raise _Refused(f"{name!r} is not among the {len(served)} models this backend "
                           "serves (see the models command)")
        await session.load_and_switch(name, PhaseReason.KEY if key else PhaseReason.COMMAND)
        return {"done": f"model {before} -> {name}"}

    # -- what the run is doing -------------------------------------------------------------
    def _level(self) -> str:
        session = self.session
        if session.target_rate is not None:  # --rate, or a trace's mean rate
            return f"rate {session.target_rate:g} requests/s"
        return f"concurrency {session.target_concurrency}"

    def _describe(self) -> str:
        session = self.session
        if session.ended:
            return "the run has ended"
        if session.current_phase is None:
            return "the run has not started yet"
        t_s = session.now_ns() / 1e9
        if session.paused:
            return f"paused at {t_s:.1f} s; {self._level()} on resume"
        return f"running for {t_s:.1f} s at {self._level()}, {session.in_flight} in flight"

    def state(self) -> dict[str, Any]:
        """The run's load now: no config, so nothing of a URL or a key."""
        session = self.session
        started = session.current_phase is not None
        return {
            "t_s": round(session.now_ns() / 1e9, 3) if started else 0.0,
            "model": session.model,
            "concurrency": session.target_concurrency if session.target_rate is None else None,
            "rate": session.target_rate,
            "paused": session.paused,
            "in_flight": session.in_flight,
            "ended": session.ended or self._stopping,
        }


@dataclass
class _Awaited:
    """A command whose reply waits on the backend (a model list, a model loading): the
    connection awaits :meth:`answer` while the run and every other connection go on."""

    server: ControlServer
    cmd: str
    request: dict[str, Any]
    key: bool

    async def answer(self) -> dict[str, Any]:
        try:
            self.server._check_running()
            extra = await getattr(self.server, f"_{self.cmd}")(self.request, self.key)
            self.server._check_running()  # a run that ended meanwhile did not switch
        except _Refused as exc:
            return _failure(str(exc))
        except SoaktopError as exc:  # the backend's own word: unreachable, unknown preset
            return _failure(str(exc))
        except Exception as exc:  # a bug here must cost one reply, never the soak
            return _failure(f"not done: {type(exc).__name__}: {exc}")
        return {"ok": True, **extra, "state": self.server.state()}


def _number(request: dict[str, Any], name: str, kind: type) -> Any:
    """``request[name]`` as an ``int`` or a finite ``float``, or a refusal that says so."""
    value = request.get(name)
    ok = isinstance(value, int) if kind is int else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or (kind is float and not math.isfinite(value)):
        what = "a whole number" if kind is int else "a number"
        raise _Refused(f"{name} must be {what} (got {json.dumps(value)[:40]})")
    return kind(value)


def serve_while_running(session: Session, say: Callable[[str], None] = lambda text: None
                        ) -> ControlServer | None:
    """Give ``session`` a control socket beside its record, open from when it runs (inside
    its ``while_running`` context, on its loop) until its record is closed. None for a
    session without a record. A socket that cannot be made costs the run nothing: ``say``
    tells why in one line, and the run goes on unsteerable from outside."""
    if session.record_path is None:
        return None
    path = socket_path(session.record_path)
    server = ControlServer(session, path)
    if path.parent != Path(f"{Path(session.record_path).resolve()}.sock").parent:
        server.fallback = path
    inner = session.while_running

    @contextlib.contextmanager
    def running() -> Iterator[None]:
        with inner():
            try:
                server.open()
            except ControlError as exc:
                say(f"control socket: {exc}; this run cannot be steered from outside")
            except OSError as exc:  # the folder itself cannot be read or written
                say(f"control socket: cannot listen at {path}: {exc.strerror or exc}; this "
                    "run cannot be steered from outside")
            else:
                if server.fallback is not None:
                    say(f"control socket: {path} (the path beside the record is too long for "
                        "a Unix socket)")
            try:
                yield
            finally:
                server.close()

    session.while_running = running
    return server


@dataclass(frozen=True)
class Reply:
    """What the run answered: ``ok``, its one line, its load now (empty on an error), and
    for ``models`` the names the backend serves."""

    ok: bool
    text: str
    state: dict[str, Any]
    models: tuple[str, ...] = ()


async def send(record: Path, request: dict[str, Any], timeout_s: float | None = None) -> Reply:
    """Send one command to the run writing ``record`` and return its reply. A run that cannot
    be reached (no socket, a stale one, another user's) is a :class:`ControlError` in one
    line; a command the run refuses is a reply with ``ok`` false."""
    path = socket_path(record)
    if timeout_s is None:
        timeout_s = {"stop": STOP_TIMEOUT_S, "model": LOAD_TIMEOUT_S}.get(request.get("cmd"),
                                                                          REPLY_TIMEOUT_S)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(os.fspath(path), limit=MAX_LINE * 4),
            REPLY_TIMEOUT_S)
    except FileNotFoundError:
        raise ControlError(f"no control socket for {record} ({path}): the run has ended, "
                           "or runs on another machine or under a soaktop without one"
                           ) from None
    except ConnectionRefusedError:
        raise ControlError(f"stale control socket {path}: nothing listens there (the run "
                           f"writing {record} died?); see soaktop summary {record}") from None
    except PermissionError:
        raise ControlError(f"not allowed to use {path}: the run belongs to another user"
                           ) from None
    except TimeoutError:
        raise ControlError(f"the run at {path} did not answer within "
                           f"{REPLY_TIMEOUT_S:g} s") from None
    except OSError as exc:
        raise ControlError(f"cannot reach the run at {path}: {exc.strerror or exc}") from None
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout_s)
    except TimeoutError:
        raise ControlError(f"no reply from the run at {path} within {timeout_s:g} s") from None
    except (OSError, ValueError) as exc:
        raise ControlError(f"the connection to {path} broke: {exc}") from None
    finally:
        writer.close()
    if not line:
        raise ControlError(f"the run at {path} closed the connection without a reply")
    try:
        reply = json.loads(line)
        if reply.get("ok"):
            return Reply(True, str(reply["done"]), dict(reply.get("state") or {}),
                         tuple(str(name) for name in reply.get("models") or ()))
        return Reply(False, str(reply["error"]), {})
    except (ValueError, KeyError, AttributeError, TypeError):
        raise ControlError(f"{path} answered something that is not soaktop's") from None
