"""What a server says about itself, asked once at start-up for the record header.

A soak record is read long after the run, beside other runs: "vLLM 0.6.3, max_model_len 32768"
explains a difference the numbers alone cannot. Servers say it in different places (the
``Server`` response header, vLLM's and SGLang's ``GET /version``, Ollama's ``GET /api/version``
and ``POST /api/show``, the model list's entry) and many say nothing, so every item is optional
and asking never fails a run: an error status, a body that is not JSON, a broken connection or
no answer within the time allowed just leaves the item out.

What comes back is untrusted text bound for a record: only strings, numbers and booleans are
kept (one level of object at most), strings cut to :data:`TEXT_LIMIT` characters, at most
:data:`FIELD_LIMIT` fields per object; a string that holds one of the run's secrets (the API
key, the URL's user or password, what the client sends as ``Authorization``) is dropped, in
case a server or a proxy echoes the request back.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx

TIMEOUT_S = 3.0  # per call, and at most the connect timeout: identity must not slow start-up
TEXT_LIMIT = 200
FIELD_LIMIT = 32
BODY_LIMIT = 1 << 20  # Ollama's /api/show, licence and template included, is far less

Scalar = str | int | float | bool


def secrets_of(url: str, api_key: str | None) -> tuple[str, ...]:
    """The strings of this run that must never reach a record, as a server might echo them."""
    parts = urlsplit(url)
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    found = [api_key, parts.username, parts.password, user, password]
    found += [value for _, value in parse_qsl(parts.query)]
    if user or password:  # httpx sends them as Basic authorization
        found.append(base64.b64encode(f"{user}:{password}".encode()).decode())
    return tuple(s for s in found if s)


def scalar(value: Any, secrets: tuple[str, ...] = ()) -> Scalar | None:
    """``value`` if it is a number, a boolean or a string (cut to :data:`TEXT_LIMIT`);
    ``None`` for anything else: null, objects, lists, non-finite or huge numbers, and text
    that holds a secret (looked for before cutting, so no part of one survives)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return None if any(s in value for s in secrets) else value[:TEXT_LIMIT]
    return None


def fields(value: Any, secrets: tuple[str, ...] = ()) -> dict[str, Scalar]:
    """The scalar fields of a JSON object, each kept as :func:`scalar` keeps it; ``{}`` for
    anything that is not an object."""
    if not isinstance(value, dict):
        return {}
    kept: dict[str, Scalar] = {}
    for key, item in value.items():
        name, item = scalar(key, secrets), scalar(item, secrets)
        if isinstance(name, str) and item is not None:
            kept[name] = item
            if len(kept) == FIELD_LIMIT:
                break
    return kept


def clean(found: dict[str, Any], secrets: tuple[str, ...]) -> dict[str, Any]:
    """``found`` with each value kept as a scalar or an object of scalars; empty ones left out."""
    kept: dict[str, Any] = {}
    for key, value in found.items():
        value = fields(value, secrets) if isinstance(value, dict) else scalar(value, secrets)
        if value is not None and value != {}:
            kept[key] = value
    return kept


def version_of(answer: Any) -> Any:
    """The ``version`` of a ``{"version": "0.6.3"}`` answer (vLLM, SGLang, Ollama), or
    ``None``: a version is one value, so a record's readers can rely on its shape."""
    version = answer.get("version") if isinstance(answer, dict) else None
    return None if isinstance(version, (dict, list)) else version


def json_of(response: httpx.Response) -> Any:
    """The JSON body of a response already read, or ``None`` (an error status, not JSON)."""
    if response.status_code >= 400:
        return None
    try:
        return response.json()
    except ValueError:  # not JSON, or not text (UnicodeDecodeError is a ValueError)
        return None


async def ask_json(
    client: httpx.AsyncClient, method: str, path: str, timeout_s: float,
    body: dict[str, Any] | None = None,
) -> Any:
    """The JSON answer to one identity call, or ``None`` when there is none to keep: an error
    status, a body that is not JSON or is over :data:`BODY_LIMIT`, a transport failure, or
    no whole answer within ``timeout_s``."""
    try:
        return await asyncio.wait_for(_ask(client, method, path, body), timeout_s)
    except (httpx.HTTPError, asyncio.TimeoutError, ValueError):
        return None


async def _ask(
    client: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None
) -> Any:
    async with client.stream(method, path, json=body) as response:
        if response.status_code >= 400:
            return None
        data = b""
        async for chunk in response.aiter_bytes():
            data += chunk
            if len(data) > BODY_LIMIT:
                return None
    return json.loads(data)  # bytes: UTF-8, -16 or -32, as JSON allows
