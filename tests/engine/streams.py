"""Shared by the HTTP backend tests: one request through a backend, from start to close."""

from soaktop.engine.backends.base import GenerationRequest


async def collect(backend, request: GenerationRequest) -> list:
    """Everything ``backend.stream(request)`` yields, with the backend started and closed."""
    await backend.start()
    try:
        return [item async for item in backend.stream(request)]
    finally:
        await backend.close()
