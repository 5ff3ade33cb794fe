"""Write a tiny Llama-architecture GGUF with random weights, for testing against llama.cpp.

The third-party tier needs a real model file that llama.cpp loads and serves, yet nothing may be
downloaded at test time, so the model is made here from a seed with the ``gguf`` package. It is
not meant to say anything sensible; it is shaped so that a load test against it is exact:

* The tokenizer is GPT-2 style byte-level BPE: all 256 byte tokens (so any prompt text can be
  tokenized; llama.cpp aborts on a byte it has no token for), plus merges for the syllables of
  soaktop's synthetic prompts (``engine/prompts.py``), so a 128-word prompt is about 3 tokens a
  word and fits a small context.
* Generation can only ever pick printable ASCII tokens. The residual stream carries a constant
  in dimension 0 that no layer writes to (row 0 of every output projection is zero), and every
  token that must never be generated (control tokens, non-printable or non-ASCII bytes, and
  ``<``, the first character of the end-of-sequence text that the chat handler uses as a stop
  string) has a large negative weight on that dimension in the output head. So each generated
  token is exactly one chunk of non-empty, valid UTF-8 text, no stop string ever matches and
  nothing is held back, and a request always runs to ``max_tokens``: the server's stream is then
  one content chunk per token, which is what the acceptance test counts on.
* A chat template is stored so ``/v1/chat/completions`` works without a ``--chat_format``.

Run it as a script to write a file: ``python tests/thirdparty/make_tiny_gguf.py OUT.gguf``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

# Shape: small enough that a token costs well under a millisecond on one CPU core and the file
# stays under a megabyte, big enough to be a real multi-layer, multi-head, GQA Llama.
N_LAYERS = 2
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 128
CONTEXT_LENGTH = 4096
RMS_EPS = 1e-5
MODEL_NAME = "soaktop-tiny-llama"

BOS_TEXT = "<|bos|>"
EOS_TEXT = "<|eos|>"

# Syllables of soaktop's synthetic prompt words (engine/prompts.py). Merged into tokens so a
# prompt costs about three tokens a word; a mismatch only makes prompts longer, never wrong.
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "fe", "gu", "hi",
              "jo", "bu")

# A plain-text template: role names as text, so it needs no special tokens beyond bos/eos.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)

# Constant carried in residual dimension 0, and the output-head weight on it that keeps a
# banned token's logit far below every allowed one (about -15 * 7 against a spread of ~2).
_RESIDUAL_CONSTANT = 16.0
_BANNED_WEIGHT = -15.0


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, as llama.cpp's BPE expects."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def build_vocab() -> tuple[list[str], list[int], list[str], list[bool], int, int]:
    """The token list, token types, merges, which tokens may be generated, and bos/eos ids.

    Token types follow gguf's ``TokenType``: 1 normal, 3 control.
    """
    byte_char = _bytes_to_unicode()
    tokens: list[str] = []
    types: list[int] = []
    allowed: list[bool] = []

    for b in range(256):
        tokens.append(byte_char[b])
        types.append(1)
        # Printable ASCII only, and never '<' (a stop-string prefix would be held back).
        allowed.append(0x20 <= b <= 0x7E and b != ord("<"))

    merges: list[str] = []
    space = byte_char[ord(" ")]
    for syllable in _SYLLABLES:
        merges.append(f"{syllable[0]} {syllable[1]}")
        tokens.append(syllable)
        types.append(1)
        allowed.append(True)
    for syllable in _SYLLABLES:
        merges.append(f"{space} {syllable}")
        tokens.append(space + syllable)
        types.append(1)
        allowed.append(True)

    bos_id = len(tokens)
    tokens.append(BOS_TEXT)
    types.append(3)
    allowed.append(False)
    eos_id = len(tokens)
    tokens.append(EOS_TEXT)
    types.append(3)
    allowed.append(False)
    return tokens, types, merges, allowed, bos_id, eos_id


def _weights(rng: np.random.Generator, n_vocab: int, allowed: list[bool]) -> dict[str, np.ndarray]:
    """Random float32 tensors by GGUF name, numpy shape (out, in) as gguf-py expects."""
    head_dim = N_EMBD // N_HEAD
    n_embd_kv = head_dim * N_HEAD_KV

    def normal(*shape: int, scale: float) -> np.ndarray:
        return rng.normal(0.0, scale, size=shape).astype(np.float32)

    def projection_into_residual(*shape: int, scale: float) -> np.ndarray:
        w = normal(*shape, scale=scale)
        w[0, :] = 0.0  # no layer may move the constant in dimension 0
        return w

    tensors: dict[str, np.ndarray] = {}
    embd = normal(n_vocab, N_EMBD, scale=1.0)
    embd[:, 0] = _RESIDUAL_CONSTANT
    tensors["token_embd.weight"] = embd
    for i in range(N_LAYERS):
        p = f"blk.{i}."
        tensors[p + "attn_norm.weight"] = np.ones(N_EMBD, dtype=np.float32)
        tensors[p + "attn_q.weight"] = normal(N_EMBD, N_EMBD, scale=N_EMBD ** -0.5)
        tensors[p + "attn_k.weight"] = normal(n_embd_kv, N_EMBD, scale=N_EMBD ** -0.5)
        tensors[p + "attn_v.weight"] = normal(n_embd_kv, N_EMBD, scale=N_EMBD ** -0.5)
        tensors[p + "attn_output.weight"] = projection_into_residual(N_EMBD, N_EMBD, scale=0.1)
        tensors[p + "ffn_norm.weight"] = np.ones(N_EMBD, dtype=np.float32)
        tensors[p + "ffn_gate.weight"] = normal(N_FF, N_EMBD, scale=N_EMBD ** -0.5)
        tensors[p + "ffn_up.weight"] = normal(N_FF, N_EMBD, scale=N_EMBD ** -0.5)
        tensors[p + "ffn_down.weight"] = projection_into_residual(N_EMBD, N_FF, scale=0.1)
    tensors["output_norm.weight"] = np.ones(N_EMBD, dtype=np.float32)
    head = normal(n_vocab, N_EMBD, scale=0.5)
    head[:, 0] = np.where(np.asarray(allowed), 0.0, _BANNED_WEIGHT).astype(np.float32)
    tensors["output.weight"] = head
    return tensors


def write_tiny_gguf(path: str | Path, seed: int = 0) -> Path:
    """Write the tiny model to ``path`` and return it; the same seed gives the same bytes."""
    import gguf  # imported here so this module can be imported to read its constants without it

    path = Path(path)
    tokens, types, merges, allowed, bos_id, eos_id = build_vocab()
    tensors = _weights(np.random.default_rng(seed), len(tokens), allowed)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(MODEL_NAME)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(len(tokens))
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYERS)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(RMS_EPS)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(bos_id)
    writer.add_eos_token_id(eos_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    for name, array in tensors.items():
        writer.add_tensor(name, array)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the .gguf file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_tiny_gguf(args.out, seed=args.seed)
    print(f"{path}: {path.stat().st_size} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
