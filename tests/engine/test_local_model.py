"""The local model's cached serving path agrees with a plain full forward.

Every check compares :meth:`Transformer.prefill`/:meth:`Transformer.decode` (slots, padding,
per-sequence positions, grouped-query folding) with :func:`_reference_logits`, written here
from the textbook formulas without a cache, masks or slots, using only the model's weights.
All in float32 on the CPU with tiny shapes, so it runs in seconds.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from soaktop.engine.local.model import Transformer, build_model
from soaktop.engine.local.presets import PRESETS, ModelConfig, param_count

pytestmark = pytest.mark.timeout(60)

LLAMA = ModelConfig(arch="llama", vocab_size=97, n_layers=2, d_model=32, n_heads=4,
                    n_kv_heads=2, d_ff=48, max_positions=64, tie_embeddings=False)
GPT2 = ModelConfig(arch="gpt2", vocab_size=101, n_layers=2, d_model=32, n_heads=4,
                   n_kv_heads=4, d_ff=128, max_positions=64)
CONFIGS = pytest.mark.parametrize("config", [LLAMA, GPT2], ids=["llama", "gpt2"])

# float32 throughout: cached and full forward differ only by summation order (different matmul
# shapes), a few ulps on logits of magnitude ~0.1-1; 1e-5 leaves two orders of margin while a
# wrong mask, position or slot moves logits by ~1e-2.
ATOL = 1e-5


def _reference_logits(model: Transformer, tokens: list[int]) -> torch.Tensor:
    """Logits ``[len(tokens), vocab]`` of one sequence: full causal attention, no cache."""
    c = model.config
    n, hd = len(tokens), c.head_dim
    ids = torch.tensor(tokens)
    x = model.embed(ids)
    if c.arch == "gpt2":
        x = x + model.pos(torch.arange(n))
    else:
        inv_freq = 1.0 / c.rope_theta ** (torch.arange(0, hd, 2).float() / hd)
        angles = torch.arange(n).float()[:, None] * inv_freq[None, :]  # [n, hd/2]
        cos, sin = angles.cos(), angles.sin()

        def rope(t: torch.Tensor) -> torch.Tensor:  # t: [heads, n, hd]; rotate (i, i + hd/2)
            a, b = t[..., : hd // 2], t[..., hd // 2:]
            return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)

    causal = torch.ones(n, n).tril().bool()
    for layer in model.layers:
        h = layer.attn_norm(x)
        q, k, v = layer.qkv(h).split(
            [c.d_model, c.n_kv_heads * hd, c.n_kv_heads * hd], dim=-1)
        q = q.view(n, c.n_heads, hd).transpose(0, 1)
        k = k.view(n, c.n_kv_heads, hd).transpose(0, 1)
        v = v.view(n, c.n_kv_heads, hd).transpose(0, 1)
        if c.arch == "llama":
            q, k = rope(q), rope(k)
        rep = c.n_heads // c.n_kv_heads
        k, v = k.repeat_interleave(rep, dim=0), v.repeat_interleave(rep, dim=0)
        scores = (q @ k.transpose(1, 2)) / math.sqrt(hd)
        attn = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v  # [heads, n, hd]
        x = x + layer.out(attn.transpose(0, 1).reshape(n, c.d_model))
        h = layer.up(layer.mlp_norm(x))
        if c.arch == "gpt2":
            h = F.gelu(h, approximate="tanh")
        else:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        x = x + layer.down(h)
    x = model.norm(x)
    weight = model.embed.weight if c.tie_embeddings else model.lm_head.weight
    return x @ weight.T


def _prompt(length: int, seed: int, vocab: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (length,), generator=generator).tolist()


class _Runner:
    """Drives prefill/decode greedily for several sequences sharing one model and cache."""

    def __init__(self, model: Transformer) -> None:
        self.model = model
        self.device = model.embed.weight.device
        self.seqs: dict[int, list[int]] = {}  # slot -> tokens so far (prompt + generated)
        self.logits: dict[int, list[torch.Tensor]] = {}

    def prefill(self, prompts: list[list[int]]) -> list[int]:
        slots = [self.model.cache.acquire() for _ in prompts]
        width = max(map(len, prompts))
        padded = self._tensor([p + [0] * (width - len(p)) for p in prompts])
        logits = self.model.prefill(padded, self._tensor([len(p) for p in prompts]),
                                    self._tensor(slots)).float()
        for slot, prompt, row in zip(slots, prompts, logits, strict=True):
            self.seqs[slot] = prompt + [int(row.argmax())]
            self.logits[slot] = [row]
        return slots

    def decode(self, slots: list[int]) -> None:
        tokens = self._tensor([self.seqs[s][-1] for s in slots])
        positions = self._tensor([len(self.seqs[s]) - 1 for s in slots])
        logits = self.model.decode(tokens, positions, self._tensor(slots)).float()
        for slot, row in zip(slots, logits, strict=True):
            self.seqs[slot].append(int(row.argmax()))
            self.logits[slot].append(row)

    def _tensor(self, values: list) -> torch.Tensor:
        return torch.tensor(values, device=self.device)


def _alone(config: ModelConfig, prompt: list[int], steps: int,
           **build) -> tuple[list[int], list]:
    """Greedy generation of one sequence in a fresh model of the same seed."""
    runner = _Runner(build_model(config, seed=0, max_len=48, slots=1, **build))
    (slot,) = runner.prefill([prompt])
    for _ in range(steps):
        runner.decode([slot])
    return runner.seqs[slot], runner.logits[slot]


@CONFIGS
@torch.inference_mode()
def test_cached_decode_matches_full_forward(config: ModelConfig) -> None:
    model = build_model(config, seed=0, max_len=48, slots=2)
    runner = _Runner(model)
    prompt = _prompt(7, seed=1, vocab=config.vocab_size)
    (slot,) = runner.prefill([prompt])
    for _ in range(12):
        runner.decode([slot])
    tokens = runner.seqs[slot]
    reference = _reference_logits(model, tokens[:-1])  # logits after each fed token
    cached = torch.stack(runner.logits[slot])  # prefill's last, then one per decode
    assert cached.shape == (13, config.vocab_size)
    torch.testing.assert_close(cached, reference[len(prompt) - 1:], atol=ATOL, rtol=0)
    assert reference.abs().max() > 100 * ATOL  # the comparison is not between near-zeros


@CONFIGS
@torch.inference_mode()
def test_batched_sequences_of_different_lengths_match_each_run_alone(config) -> None:
    prompts = [_prompt(n, seed=n, vocab=config.vocab_size) for n in (3, 11, 6)]
    runner = _Runner(build_model(config, seed=0, max_len=48, slots=4))
    runner.model.cache.acquire()  # slot 0 taken: the sequences land in slots 1, 2, 3
    slots = runner.prefill(prompts)
    assert slots == [1, 2, 3]
    for _ in range(10):
        runner.decode(slots[::-1])  # batch order differs from slot order
    for slot, prompt in zip(slots, prompts, strict=True):
        tokens, logits = _alone(config, prompt, steps=10)
        assert runner.seqs[slot] == tokens
        torch.testing.assert_close(torch.stack(runner.logits[slot]), torch.stack(logits),
                                   atol=ATOL, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.inference_mode()
def test_batched_decode_on_cuda_matches_each_run_alone(dtype: torch.dtype) -> None:
    build = {"device": "cuda", "dtype": dtype}
    prompts = [_prompt(n, seed=n, vocab=LLAMA.vocab_size) for n in (3, 17, 9)]
    runner = _Runner(build_model(LLAMA, seed=0, max_len=48, slots=2, **build))
    slots = runner.prefill(prompts)  # 3 prompts, 2 slots: grows on the device too
    for _ in range(10):
        runner.decode(slots)
    # GPU kernels may pick other reduction orders per batch shape: in bf16 (8 bits of
    # mantissa) logits of ~0.5 may then differ by a few ulps, 2e-2; tokens must still agree.
    atol = ATOL if dtype == torch.float32 else 2e-2
    for slot, prompt in zip(slots, prompts, strict=True):
        tokens, logits = _alone(LLAMA, prompt, steps=10, **build)
        torch.testing.assert_close(torch.stack(runner.logits[slot]), torch.stack(logits),
                                   atol=atol, rtol=0)
        assert runner.seqs[slot] == tokens


@CONFIGS
@torch.inference_mode()
def test_slot_growth_keeps_running_sequences_intact(config: ModelConfig) -> None:
    prompts = [_prompt(n, seed=10 + n, vocab=config.vocab_size) for n in (5, 9, 4)]
    runner = _Runner(build_model(config, seed=0, max_len=48, slots=2))
    first = runner.prefill(prompts[:2])
    for _ in range(4):
        runner.decode(first)
    (third,) = runner.prefill(prompts[2:])  # no free slot: the cache doubles
    assert runner.model.cache.capacity == 4
    slots = [*first, third]
    for _ in range(6):
        runner.decode(slots)
    expected_steps = [10, 10, 6]
    for slot, prompt, steps in zip(slots, prompts, expected_steps, strict=True):
        assert runner.seqs[slot] == _alone(config, prompt, steps)[0]


def test_released_slots_are_reused_before_growing() -> None:
    cache = build_model(GPT2, max_len=8, slots=2).cache
    a = cache.acquire()
    cache.acquire()
    cache.release(a)
    assert cache.acquire() == a
    assert cache.capacity == 2 and cache.in_use == 2
    cache.acquire()
    assert cache.capacity == 4 and cache.in_use == 3


def test_growth_that_runs_out_of_memory_leaves_the_cache_intact(monkeypatch) -> None:
    cache = build_model(LLAMA, max_len=8, slots=2).cache
    cache.k[1][1, 0, 3, 0] = 7.0
    allocations = iter(range(3))
    real_zeros = cache._zeros

    def zeros_until_full(slots):
        if next(allocations, None) is None:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real_zeros(slots)

    monkeypatch.setattr(cache, "_zeros", zeros_until_full)
    slots = [cache.acquire(), cache.acquire()]
    with pytest.raises(torch.cuda.OutOfMemoryError):
        cache.acquire()
    assert cache.capacity == 2 and all(t.shape[0] == 2 for t in cache.k + cache.v)
    assert cache.k[1][1, 0, 3, 0] == 7.0
    cache.release(slots[0])
    assert cache.acquire() == slots[0]


@CONFIGS
def test_parameter_count_formula_matches_built_model(config: ModelConfig) -> None:
    model = build_model(config)
    assert sum(p.numel() for p in model.parameters()) == param_count(config)


@pytest.mark.parametrize("name", list(PRESETS))
def test_parameter_count_of_presets(name: str) -> None:
    with torch.device("meta"):  # shapes only: no memory, no time
        model = Transformer(PRESETS[name])
    built = sum(p.numel() for p in model.parameters())
    assert built == param_count(PRESETS[name])
    known = {"gpt2-small": 124_439_808, "llama-1b": 1_235_814_400}  # published sizes
    assert built == known.get(name, built)


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    a, b, c = (build_model(LLAMA, seed=s) for s in (3, 3, 4))
    assert torch.equal(a.layers[1].qkv.weight, b.layers[1].qkv.weight)
    assert not torch.equal(a.layers[1].qkv.weight, c.layers[1].qkv.weight)
    assert a.layers[0].qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
