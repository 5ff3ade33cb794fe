"""From a :class:`~soaktop.engine.config.RunConfig` to a session ready to run: the backend, its
telemetry sources and the record's file.

What the user asked for becomes what runs here, in the engine, so every way of starting a run
(the command line, the dashboard, a rerun from a record) makes the same choices: the URL a
backend talks to (Ollama's own when none is given), the API key (``$OPENAI_API_KEY`` when none
is given), the model a server serves first when none is named, the record's file name in a
folder.

Credentials stay with what needs them. The backend gets the URL and the API key as given, the
telemetry sources their ``prom=`` URLs as given; the session's config, which its record and
every screen show, holds each URL without user, password or query, and never the API key.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from soaktop.engine import backends, control
from soaktop.engine.backends.http import Timeouts, strip_credentials
from soaktop.engine.backends.ollama import DEFAULT_URL as OLLAMA_URL
from soaktop.engine.config import RunConfig
from soaktop.engine.errors import ConfigError
from soaktop.engine.load.workers import WorkerPool, resolve_workers
from soaktop.engine.records.format import default_path
from soaktop.engine.session import Listener, Session
from soaktop.engine.telemetry import build_sources

RECORD_SUFFIXES = (".jsonl", ".jsonl.gz")


def make_backend(config: RunConfig, api_key: str | None = None) -> backends.Backend:
    """The backend ``config`` names, in this process; ``api_key`` (openai) goes to it and
    nowhere else."""
    return backends.create(config.backend, **backend_options(config, api_key))


def backend_options(config: RunConfig, api_key: str | None = None) -> dict[str, Any]:
    """The options :func:`soaktop.engine.backends.create` takes for the backend ``config``
    names (a backend of worker processes gets them through their pipes)."""
    if config.backend not in backends.USER_KINDS:
        raise ConfigError(f"backend {config.backend!r} cannot be run against; choose one of: "
                          f"{', '.join(backends.USER_KINDS)}")
    if config.backend == "local":
        if config.url:
            raise ConfigError("--url is for --backend openai or ollama, not local")
        return {"model": config.model, "device": config.device, "seed": config.seed}
    url = config.url or (OLLAMA_URL if config.backend == "ollama" else None)
    if not url:
        raise ConfigError(f"--backend {config.backend} needs --url (the server's base URL)")
    timeouts = Timeouts(connect_s=config.connect_timeout_s,
                        first_token_s=config.first_token_timeout_s,
                        between_tokens_s=config.token_timeout_s)
    options: dict = {"url": url, "model": config.model, "timeouts": timeouts}
    if config.api:
        options["api"] = config.api
    if config.backend == "openai":
        options["api_key"] = api_key or os.environ.get("OPENAI_API_KEY") or None
    return options


def record_file(target: Path | None, model: str) -> Path | None:
    """The record's file: ``target`` itself when it names one (``.jsonl.gz`` compressed,
    ``.jsonl`` plain), else a new name for ``model`` in the folder ``target``; None: no
    record."""
    if target is None:
        return None
    if names_a_file(target):
        return target
    return default_path(target, datetime.now(), socket.gethostname(), model)


def names_a_file(target: Path) -> bool:
    """Whether ``--record`` names the record itself (else a folder to name one in); a name
    that is neither raises, so the command line can say so before a model loads."""
    if target.is_dir():
        return False
    if target.name.endswith(RECORD_SUFFIXES):
        return True
    if target.suffix:
        raise ConfigError(f"--record {target}: a record ends in .jsonl.gz (compressed) or .jsonl "
                          "(plain); give one of those, or a folder")
    return False


def _without_credentials(source: str) -> str:
    return f"prom={strip_credentials(source[5:])}" if source.startswith("prom=") else source


async def build_session(config: RunConfig, *, api_key: str | None = None,
                        record: Path | None = None, listeners: tuple[Listener, ...] = (),
                        say: Callable[[str], None] = lambda text: None,
                        while_running: Callable[[], AbstractContextManager[Any]] = nullcontext,
                        steerable: bool = True) -> Session:
    """The session ``config`` asks for, not yet started. A server is asked which models it
    serves when ``config`` names none (hence async); ``say`` tells the user what was chosen
    for them. ``record``: the record's file, or a folder to name one in; None: no record.
    ``while_running``: see :class:`~soaktop.engine.session.Session` (the command line freezes
    the garbage collector's survivors there; a library leaves process state alone).
    ``steerable``: a session with a record listens on a control socket beside it while it
    runs (soaktop.engine.control), so that another process can steer it."""
    if config.ray is not None:  # the workers as Ray actors (soaktop.engine.load.ray_workers)
        from soaktop.engine.load import ray_workers  # Ray is optional: imported only for this

        ray, owns_ray = ray_workers.connect(config.ray)
        workers = config.workers or max(1, len(ray_workers.nodes(ray)))
        backend = ray_workers.RayPool(config.backend, backend_options(config, api_key),
                                      workers, config.ray, owns_ray=owns_ray)
        say(f"{workers} Ray workers on the cluster at {config.ray}")
    else:
        workers, why_not = resolve_workers(config)
        if why_not:
            say(why_not)
        if workers > 1:  # the streams read in worker processes (soaktop.engine.load.workers)
            backend = WorkerPool(config.backend, backend_options(config, api_key), workers)
        else:
            backend = make_backend(config, api_key)
    model = config.model
    if model is None:
        served = await backend.models()
        if not served:
            raise ConfigError(f"{strip_credentials(backend.url)} serves no model")
        model = backend.model = served[0]  # the header then describes this one
        say(f"model {model} (the first the server lists)")
    local = config.backend == "local"
    recorded = replace(
        config, model=model, url=None if local else strip_credentials(backend.url),
        api=getattr(backend, "api", None), workers=workers,
        telemetry=tuple(_without_credentials(source) for source in config.telemetry))
    sources = build_sources(config.telemetry, config.watch_pid, local_engine=local)
    session = Session(recorded, backend, record_file(record, model), listeners=listeners,
                      sources=sources, while_running=while_running)
    session.say = say
    if steerable:
        control.serve_while_running(session, say)
    return session
