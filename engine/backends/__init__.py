"""Backends, created by kind from one registry.

Each backend module registers its class under its ``kind``; :func:`create` imports the module
only when that kind is asked for, so ``import engine`` does not pay for torch unless the local
engine is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from engine.backends.base import Arrival, Backend, GenerationRequest, Prompt, StreamEnd
from engine.errors import ConfigError

# kind -> "module:Class", imported lazily.
_REGISTRY: dict[str, str] = {
    "local": "engine.backends.local:LocalBackend",
    "openai": "engine.backends.openai:OpenAIBackend",
    "ollama": "engine.backends.ollama:OllamaBackend",
    "fake": "engine.backends.fake:FakeBackend",
}

#: Kinds a user may pick on the command line ("fake" is for tests and dry runs of the UI).
USER_KINDS = ("local", "openai", "ollama")


def create(kind: str, **options: Any) -> Backend:
    """Instantiate the backend registered as ``kind`` with its keyword options."""
    try:
        target = _REGISTRY[kind]
    except KeyError:
        raise ConfigError(
            f"unknown backend {kind!r}; choose one of: {', '.join(sorted(_REGISTRY))}"
        ) from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**options)


__all__ = ["Arrival", "Backend", "GenerationRequest", "Prompt", "StreamEnd", "create"]
