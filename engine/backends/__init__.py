"""Backends, created by kind from one registry.

Each backend module registers its class under its ``kind``; :func:`create` imports the module
only when that kind is asked for, so ``import soaktop.engine`` does not pay for torch unless the
local engine is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from soaktop.engine.backends.base import Arrival, Backend, GenerationRequest, Prompt, StreamEnd
from soaktop.engine.errors import ConfigError

# kind -> "module:Class", imported lazily.
_REGISTRY: dict[str, str] = {
    "local": "soaktop.engine.backends.local:LocalBackend",
    "openai": "soaktop.engine.backends.openai:OpenAIBackend",
    "ollama": "soaktop.engine.backends.ollama:OllamaBackend",
    "fake": "soaktop.engine.backends.fake:FakeBackend",
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
