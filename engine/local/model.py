"""One decoder-only Transformer for both families (GPT-2 and Llama), with a slot-based KV cache.

The weights are random but seeded: a soak test measures what a model costs, and that depends on
its shape and on how it is served (batching, cache, attention), not on what it has learned. So
the engine needs no download and gives the same model for the same seed.

Serving is split in two entry points, as in real engines:

* :meth:`Transformer.prefill` runs whole prompts (right-padded to one length) and writes their
  keys and values into cache *slots*;
* :meth:`Transformer.decode` runs one new token for each of a set of sequences, each at its own
  position in its own slot, attending only over that slot's filled prefix.

Grouped-query attention is computed without copying K/V to every query head: the query heads
that share a KV head are laid out as extra query rows of that KV head, which is the same
arithmetic and works with every ``scaled_dot_product_attention`` backend and torch version.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from soaktop.engine.local.presets import ModelConfig

INIT_STD = 0.02

# Not cuDNN: it builds an execution plan for every new shape (~40 ms each on an H100, measured
# with torch 2.11), and decode's key span grows by one every step. These take any shape as is.
_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the hardware runs it fast (CUDA), float32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class KVCache:
    """Keys and values of every layer, ``[slots, n_kv_heads, max_len, head_dim]`` each.

    A sequence owns one slot from admission to its last token. Freed slots are reused lowest
    first, keeping the live ones packed; when every slot is taken, capacity doubles (new zeroed
    tensors, old contents copied), so concurrency is not fixed in advance. Zeros, not
    uninitialised memory: masked-out positions still enter the attention arithmetic
    (weight 0 times value), and a NaN there would poison the result.
    """

    def __init__(self, config: ModelConfig, max_len: int, slots: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        if not 1 <= max_len <= config.max_positions:
            raise ValueError(f"max_len must be in [1, {config.max_positions}], got {max_len}")
        self.max_len = max_len
        self._shape = (config.n_kv_heads, max_len, config.head_dim)
        self._device, self._dtype = device, dtype
        self.k = [self._zeros(slots) for _ in range(config.n_layers)]
        self.v = [self._zeros(slots) for _ in range(config.n_layers)]
        self._free = list(range(slots))

    @property
    def capacity(self) -> int:
        return self.k[0].shape[0]

    @property
    def in_use(self) -> int:
        return self.capacity - len(self._free)

    def acquire(self) -> int:
        """A free slot, growing the cache if there is none."""
        if not self._free:
            self._grow()
        return heapq.heappop(self._free)

    def release(self, slot: int) -> None:
        heapq.heappush(self._free, slot)

    def _zeros(self, slots: int) -> Tensor:
        return torch.zeros((slots, *self._shape), device=self._device, dtype=self._dtype)

    def _grow(self) -> None:
        """Double the slots. Everything is allocated before anything is replaced, so running
        out of memory here leaves the cache as it was and only the new request fails."""
        old = self.capacity
        new = max(1, 2 * old)
        grown_k = [self._zeros(new) for _ in self.k]
        grown_v = [self._zeros(new) for _ in self.v]
        for grown, current in zip(grown_k + grown_v, self.k + self.v, strict=True):
            grown[:old] = current
        self.k, self.v = grown_k, grown_v
        for slot in range(old, new):
            heapq.heappush(self._free, slot)


class _Block(nn.Module):
    """Pre-norm attention + MLP. ``qkv`` and, for Llama, gate/up are fused: fewer kernels."""

    def __init__(self, c: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        gpt2 = c.arch == "gpt2"
        kv = c.n_kv_heads * c.head_dim
        norm = nn.LayerNorm if gpt2 else nn.RMSNorm
        self.attn_norm = norm(c.d_model, eps=c.norm_eps, dtype=dtype)
        self.qkv = nn.Linear(c.d_model, c.d_model + 2 * kv, bias=gpt2, dtype=dtype)
        self.out = nn.Linear(c.d_model, c.d_model, bias=gpt2, dtype=dtype)
        self.mlp_norm = norm(c.d_model, eps=c.norm_eps, dtype=dtype)
        # Llama: [gate; up] in one matrix for SwiGLU. GPT-2: the single up-projection.
        self.up = nn.Linear(c.d_model, c.d_ff * (1 if gpt2 else 2), bias=gpt2, dtype=dtype)
        self.down = nn.Linear(c.d_ff, c.d_model, bias=gpt2, dtype=dtype)
        self._gpt2 = gpt2

    def mlp(self, x: Tensor) -> Tensor:
        h = self.up(x)
        if self._gpt2:
            return self.down(F.gelu(h, approximate="tanh"))
        gate, up = h.chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Transformer(nn.Module):
    """The model plus its :class:`KVCache` (``self.cache``, set by :func:`build_model`)."""

    cache: KVCache

    def __init__(self, config: ModelConfig, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        c = self.config = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model, dtype=dtype)
        gpt2 = c.arch == "gpt2"
        self.pos = nn.Embedding(c.max_positions, c.d_model, dtype=dtype) if gpt2 else None
        self.layers = nn.ModuleList(_Block(c, dtype) for _ in range(c.n_layers))
        self.norm = (nn.LayerNorm if gpt2 else nn.RMSNorm)(c.d_model, eps=c.norm_eps, dtype=dtype)
        self.lm_head = (None if c.tie_embeddings
                        else nn.Linear(c.d_model, c.vocab_size, bias=False, dtype=dtype))
        # RoPE tables, [max_positions, head_dim], filled by init_weights; None for GPT-2.
        rope = torch.empty(c.max_positions, c.head_dim, dtype=dtype) if self.pos is None else None
        self.register_buffer("rope_cos", rope, persistent=False)
        self.register_buffer("rope_sin", None if rope is None else torch.empty_like(rope),
                             persistent=False)

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Normal(0, 0.02) matrices, unit norms, zero biases, from one seeded generator.

        The same seed gives the same weights on the same kind of device (CPU and CUDA random
        streams differ).
        """
        device = self.embed.weight.device
        gen = torch.Generator(device=device).manual_seed(seed)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, INIT_STD, generator=gen)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                module.weight.fill_(1.0)
            bias = getattr(module, "bias", None)
            if isinstance(bias, Tensor):
                bias.zero_()
        if self.rope_cos is not None:
            c = self.config
            half = torch.arange(0, c.head_dim, 2, device=device, dtype=torch.float32)
            inv_freq = c.rope_theta ** (-half / c.head_dim)
            angles = torch.outer(torch.arange(c.max_positions, device=device).float(), inv_freq)
            angles = torch.cat((angles, angles), dim=-1)
            self.rope_cos.copy_(angles.cos())
            self.rope_sin.copy_(angles.sin())

    def prefill(self, token_ids: Tensor, lengths: Tensor, slots: Tensor) -> Tensor:
        """Run right-padded prompts ``[B, Lpad]`` of ``lengths`` into cache ``slots``.

        The causal mask is also the padding mask: padding sits to the right of every real
        token, so no real query can see it, and the outputs of padding queries are dropped.
        Keys and values of positions ``[0, Lpad)`` are written to each slot; the padding ones
        are never read either, because decode overwrites position ``L`` before attending to it.
        Returns the logits at each prompt's last real token, ``[B, vocab]``.
        """
        b, length = token_ids.shape
        pos = torch.arange(length, device=token_ids.device)
        causal = (pos[None, :] <= pos[:, None]).expand(b, 1, length, length)
        mask = self._group_mask(causal)

        def attend(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, kv_heads, L, head_dim]
            self.cache.k[i][slots, :, :length] = k
            self.cache.v[i][slots, :, :length] = v
            return _grouped_attention(q, k, v, mask)

        x = self._run(token_ids, pos[None, :], attend)
        last = x[torch.arange(b, device=x.device), lengths - 1]
        return self._logits(last)

    def decode(self, token_ids: Tensor, positions: Tensor, slots: Tensor) -> Tensor:
        """Run one token for each of ``B`` sequences, at ``positions`` in ``slots``.

        Only the active slots are gathered, and only up to the longest active sequence; each
        one attends over its own keys ``[0, position]``. Returns ``[B, vocab]`` logits.
        """
        # One number read back from the device (a sync, but at the start of a step, when
        # nothing is queued): the gathered key span must be a Python int.
        span = int(positions.max()) + 1
        keys = torch.arange(span, device=token_ids.device)
        mask = self._group_mask((keys[None, :] <= positions[:, None])[:, None, None, :])

        def attend(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            k_cache, v_cache = self.cache.k[i], self.cache.v[i]
            k_cache[slots, :, positions] = k[:, 0]
            v_cache[slots, :, positions] = v[:, 0]
            return _grouped_attention(q, k_cache[slots, :, :span], v_cache[slots, :, :span], mask)

        x = self._run(token_ids[:, None], positions[:, None], attend)
        return self._logits(x[:, 0])

    def _run(self, token_ids: Tensor, positions: Tensor,
             attend: Callable[[int, Tensor, Tensor, Tensor], Tensor]) -> Tensor:
        """The layer stack; ``attend(layer, q, k, v)`` decides where keys come from."""
        c = self.config
        b, length = token_ids.shape
        x = self.embed(token_ids)
        if self.pos is not None:
            x = x + self.pos(positions)
            cos = sin = None
        else:  # [B or 1, L, 1, head_dim]
            cos, sin = self.rope_cos[positions][:, :, None], self.rope_sin[positions][:, :, None]
        with sdpa_kernel(_ATTENTION):
            for i, layer in enumerate(self.layers):
                qkv = layer.qkv(layer.attn_norm(x)).view(b, length, -1, c.head_dim)
                q, k, v = qkv.split([c.n_heads, c.n_kv_heads, c.n_kv_heads], dim=2)
                if cos is not None:
                    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
                x = x + layer.out(attend(i, q, k, v))
                x = x + layer.mlp(layer.mlp_norm(x))
        return x

    def _group_mask(self, mask: Tensor) -> Tensor:
        """``[B, 1, L, T]`` visibility, repeated for the query heads sharing a KV head."""
        rep = self.config.n_heads // self.config.n_kv_heads
        b, _, length, span = mask.shape
        return mask[:, :, None].expand(b, 1, rep, length, span).reshape(b, 1, rep * length, span)

    def _logits(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        if self.lm_head is None:
            return F.linear(x, self.embed.weight)
        return self.lm_head(x)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding, half-split convention (as in Hugging Face Llama)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def _grouped_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Attention of ``q [B, L, H, D]`` over ``k, v [B, KV, T, D]``; returns ``[B, L, H*D]``.

    Query heads ``g*rep .. g*rep+rep-1`` share KV head ``g`` (the usual GQA grouping); they are
    folded into the query-row axis of that KV head, so K/V are never repeated in memory.
    """
    b, length, heads, dim = q.shape
    kv = k.shape[1]
    rep = heads // kv
    q = q.reshape(b, length, kv, rep, dim).permute(0, 2, 3, 1, 4).reshape(b, kv, rep * length, dim)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.view(b, kv, rep, length, dim).permute(0, 3, 1, 2, 4).reshape(b, length, heads * dim)


def build_model(config: ModelConfig, *, device: torch.device | str = "cpu",
                dtype: torch.dtype | None = None, seed: int = 0, max_len: int | None = None,
                slots: int = 4) -> Transformer:
    """A ready-to-serve model in eval mode with a ``slots``-slot cache of ``max_len`` tokens.

    Built on the "meta" device and then materialised on ``device``: the weights are allocated
    once, where they will live, and initialised once (torch's default init would be thrown
    away, and for llama-1b on a CPU it takes seconds).
    """
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    with torch.device("meta"):
        model = Transformer(config, dtype=dtype)
    model.to_empty(device=device)
    model.init_weights(seed)
    model.eval()
    model.cache = KVCache(config, max_len or config.max_positions, slots, device, dtype)
    return model
