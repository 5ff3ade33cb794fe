"""The embedded engine as a backend: a random-weight preset served by a continuous batcher.

It needs no server and no download, so ``soaktop`` works out of the box on any machine with
torch, and on a GPU it loads the card the way a serving engine does (batched decode over a KV
cache). Token times are taken by the batcher once the device has produced each token.
"""

from __future__ import annotations

import asyncio
import platform
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import torch

from soaktop.engine.backends.base import Arrival, Backend, GenerationRequest, StreamEnd
from soaktop.engine.errors import ConfigError, DeviceError
from soaktop.engine.load.prompts import word
from soaktop.engine.local.batcher import ContinuousBatcher, StepOutput, is_out_of_memory
from soaktop.engine.local.model import Transformer, build_model, default_dtype
from soaktop.engine.local.presets import PRESETS, ModelConfig, param_count, preset


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is CUDA when torch sees a GPU, else the CPU; a missing CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"
            raise DeviceError("CUDA was asked for but torch sees no CUDA device "
                              f"(torch {torch.__version__}, {build})")
        if (resolved.index or 0) >= torch.cuda.device_count():
            raise DeviceError(f"{resolved} was asked for but torch sees "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    elif resolved.type != "cpu":
        raise ConfigError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    return resolved


class LocalBackend(Backend):
    """Serves one preset (``models()`` lists them) on ``device``; weights seeded by ``seed``.

    ``max_len`` caps prompt plus output per sequence (default: the preset's ``max_positions``)
    and sets the KV cache's size per slot. :meth:`prepare` loads another preset beside the
    one serving (off the event loop); a request then goes to the preset it names, so a switch
    mid-run is real: new requests run on the new model while in-flight ones finish on the old,
    whose memory is released once its last request ends.
    """

    kind: ClassVar[str] = "local"

    def __init__(self, model: str = "tiny", device: str = "auto", seed: int = 0,
                 max_len: int | None = None) -> None:
        self._preset = model
        self._config = preset(model)
        self._device = resolve_device(device)
        self._seed = seed
        limit = self._config.max_positions
        if max_len is not None and not 1 <= max_len <= limit:
            raise ConfigError(f"max_len for {model} must be between 1 and {limit}, got {max_len}")
        self._max_len = max_len or limit
        self._max_len_asked = max_len
        self._model: Transformer | None = None
        self._batcher: ContinuousBatcher | None = None
        #: Presets loaded beside the current one: (config, batcher), kept while requests use them.
        self._others: dict[str, tuple[ModelConfig, ContinuousBatcher]] = {}
        self._in_flight: dict[str, int] = {}

    async def start(self) -> None:
        """Build the model off the event loop (seconds for the larger presets), then serve."""
        if self._batcher is not None:
            return
        try:
            self._model = await asyncio.to_thread(
                build_model, self._config, device=self._device, seed=self._seed,
                max_len=self._max_len)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            raise DeviceError(f"not enough memory on {self._device} for the {self._preset} "
                              "model and its cache; try a smaller preset or max_len") from None
        self._batcher = ContinuousBatcher(self._model)

    async def prepare(self, model: str) -> None:
        """Load preset ``model`` (if it is not the one serving) and make it the current one:
        what a model switch asks of the local engine. Raises ConfigError for an unknown
        preset and DeviceError when it does not fit beside the one serving."""
        config = preset(model)
        if model == self._preset or self._batcher is None:
            return
        old = (self._preset, self._config, self._batcher)
        if model in self._others:
            self._config, self._batcher = self._others.pop(model)
        else:
            limit = config.max_positions
            max_len = min(self._max_len_asked or limit, limit)
            try:
                built = await asyncio.to_thread(build_model, config, device=self._device,
                                                seed=self._seed, max_len=max_len)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                raise DeviceError(f"not enough memory on {self._device} for the {model} model "
                                  f"beside {self._preset}") from None
            self._config, self._batcher, self._model = config, ContinuousBatcher(built), built
        self._preset = model
        self._others[old[0]] = (old[1], old[2])
        self._retire_idle()

    def _retire_idle(self) -> None:
        """Close the presets no longer current once no request runs on them."""
        for name in [n for n in self._others if not self._in_flight.get(n)]:
            _, batcher = self._others.pop(name)
            asyncio.get_running_loop().run_in_executor(None, batcher.close)

    async def close(self) -> None:
        batcher, self._batcher, self._model = self._batcher, None, None
        others, self._others = list(self._others.values()), {}
        for _, other in others:
            await asyncio.to_thread(other.close)
        if batcher is not None:
            await asyncio.to_thread(batcher.close)
        if self._device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def batcher(self) -> ContinuousBatcher:
        """The running batcher (its ``stats()`` show how requests were batched)."""
        if self._batcher is None:
            raise RuntimeError("LocalBackend.start() has not been awaited")
        return self._batcher

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Arrival | StreamEnd]:
        """Submit the prompt's ids (modulo the vocabulary) and yield each token as it comes.

        Every token is one ``Arrival`` whose text is the pseudo-word of its id (where the
        request wants text; else empty); the stream then ends with ``StreamEnd("length")``,
        since generation never stops early. Closing or cancelling the iteration cancels the
        request, which frees its cache slot.
        """
        outputs: asyncio.Queue[StepOutput] = asyncio.Queue()
        name = request.model if request.model in self._others else self._preset
        config, batcher = self._others.get(name) or (self._config, self.batcher)
        vocab = config.vocab_size
        handle = batcher.submit([t % vocab for t in request.prompt.token_ids],
                                request.max_tokens, outputs.put_nowait)
        self._in_flight[name] = self._in_flight.get(name, 0) + 1
        want_text = request.want_text
        try:
            while True:
                out = await outputs.get()
                if out.error is not None:
                    raise out.error
                # the word is made only for a request that wants text (a string a token)
                yield Arrival(t_ns=out.t_ns, tokens=1,
                              text=word(out.token_id) + " " if want_text else "")
                if out.finished:
                    break
        finally:
            handle.cancel()  # a no-op once finished; frees the slot if we were interrupted
            self._in_flight[name] -= 1
            if name in self._others and not self._in_flight[name]:
                self._retire_idle()
        # the engine's own word on the request, recorded like a server's: an output cut short
        # because prompt + output would not fit the context
        capped = handle.output_tokens < request.max_tokens
        yield StreamEnd(finish_reason="length",
                        server={"capped_to_tokens": handle.output_tokens} if capped else None)

    async def models(self) -> list[str]:
        return list(PRESETS)

    def describe(self) -> dict[str, Any]:
        if self._device.type == "cuda":
            device_name = torch.cuda.get_device_name(self._device)
        else:
            device_name = f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads"
        return {
            "kind": self.kind,
            "model": self._preset,
            "arch": self._config.arch,
            "parameters": param_count(self._config),
            "device": str(self._device),
            "device_name": device_name,
            "dtype": str(default_dtype(self._device)).removeprefix("torch."),
            "max_len": self._max_len,
            "seed": self._seed,
            "torch": torch.__version__,
        }
