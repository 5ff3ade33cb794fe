"""Model shapes the embedded engine can build, by name.

The weights are random (see :mod:`soaktop.engine.local.model`): what a soak test needs from the
local engine is the *cost* of a real model, which depends only on its shape, not on what it says. So
a preset is just a shape. This module does not import torch, so the CLI can list presets and
validate ``--model`` without paying for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from soaktop.engine.errors import ConfigError

Arch = Literal["gpt2", "llama"]


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """The shape of a decoder-only Transformer.

    ``arch`` picks the family: ``"gpt2"`` (LayerNorm, learned positions, GELU MLP, biases) or
    ``"llama"`` (RMSNorm, rotary positions, grouped-query attention, SwiGLU MLP, no biases).
    ``max_positions`` bounds prompt plus output for one sequence.
    """

    arch: Arch
    vocab_size: int
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    max_positions: int
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.arch not in ("gpt2", "llama"):
            raise ValueError(f"unknown arch {self.arch!r}")
        if self.d_model % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError("d_model must divide into n_heads, and n_heads into n_kv_heads")
        if self.arch == "gpt2" and self.n_kv_heads != self.n_heads:
            raise ValueError("gpt2 has no grouped-query attention: n_kv_heads must equal n_heads")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("head_dim must be even (rotary embeddings rotate pairs)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def param_count(config: ModelConfig) -> int:
    """Number of parameters of the model :func:`soaktop.engine.local.model.build_model` makes.

    Counted from the shape alone (no torch), so ``describe()`` and the CLI can state a preset's
    size before building it; a test checks it against the built model.
    """
    d, ff, v = config.d_model, config.d_ff, config.vocab_size
    kv = config.n_kv_heads * config.head_dim
    gpt2 = config.arch == "gpt2"
    norm = 2 * d if gpt2 else d  # LayerNorm has a bias, RMSNorm does not
    bias = 1 if gpt2 else 0
    attention = d * (d + 2 * kv) + bias * (d + 2 * kv) + d * d + bias * d
    if gpt2:
        mlp = d * ff + ff + ff * d + d
    else:
        mlp = 3 * d * ff  # gate, up, down
    layer = 2 * norm + attention + mlp
    total = v * d + config.n_layers * layer + norm
    if gpt2:
        total += config.max_positions * d
    if not config.tie_embeddings:
        total += v * d
    return total


PRESETS: dict[str, ModelConfig] = {
    # Small enough that per-step cost is Python and kernel dispatch rather than arithmetic, so
    # one stream runs far above 50 tokens/s on two CPU cores and batching pays off almost
    # linearly: the point is to exercise soaktop, not the machine.
    "tiny": ModelConfig(
        arch="llama", vocab_size=4096, n_layers=4, d_model=256, n_heads=8, n_kv_heads=4,
        d_ff=704, max_positions=2048,
    ),
    # GPT-2 124M (Radford et al., 2019): 124,439,808 parameters.
    "gpt2-small": ModelConfig(
        arch="gpt2", vocab_size=50257, n_layers=12, d_model=768, n_heads=12, n_kv_heads=12,
        d_ff=3072, max_positions=1024,
    ),
    # Llama-3.2-1B: 1,235,814,400 parameters. Its RoPE frequency scaling only matters for
    # trained weights beyond 8k context, so plain RoPE at theta 500000 has the same cost.
    "llama-1b": ModelConfig(
        arch="llama", vocab_size=128256, n_layers=16, d_model=2048, n_heads=32, n_kv_heads=8,
        d_ff=8192, max_positions=8192, rope_theta=500_000.0,
    ),
}


def preset(name: str) -> ModelConfig:
    """The preset called ``name``; raises ``ConfigError`` naming the choices otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown local model {name!r}; choose one of: {', '.join(PRESETS)}"
        ) from None
