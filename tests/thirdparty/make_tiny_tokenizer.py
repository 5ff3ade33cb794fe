"""Write the tiny GGUF's tokenizer as a Hugging Face ``tokenizer.json``, for ``--tokenizer``.

``make_tiny_gguf.py`` stores a GPT-2 style byte-level BPE vocabulary inside the model, where only
llama.cpp reads it. soaktop's ``--tokenizer`` reads a ``tokenizer.json`` with the ``tokenizers``
library, as a user would pass the one shipped beside a real model. This module builds that file
from the very same vocabulary and merges (``make_tiny_gguf.build_vocab``), so both sides split a
prompt alike: byte-level pre-tokenization with GPT-2's regex (llama.cpp's ``gpt-2`` pre-tokenizer)
and the merges in rank order. The BOS the model adds (``add_bos_token``) is a post-processor
template here too, as in a Llama tokenizer.json; soaktop counts prompts without special tokens,
so the server's ``prompt_tokens`` is soaktop's count plus that one BOS.

Run it as a script to write a file: ``python tests/thirdparty/make_tiny_tokenizer.py OUT.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from make_tiny_gguf import BOS_TEXT, EOS_TEXT, build_vocab


def tiny_tokenizer():
    """The tiny model's tokenizer as a ``tokenizers.Tokenizer``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    tokens, _types, merges, _allowed, bos_id, eos_id = build_vocab()
    special = {bos_id, eos_id}
    vocab = {text: i for i, text in enumerate(tokens) if i not in special}
    pairs = [tuple(m.split(" ")) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # Added in id order, so they take the ids the GGUF gives them (right after the merges).
    tok.add_special_tokens([AddedToken(BOS_TEXT, special=True), AddedToken(EOS_TEXT, special=True)])
    if tok.token_to_id(BOS_TEXT) != bos_id or tok.token_to_id(EOS_TEXT) != eos_id:
        raise AssertionError("special token ids differ from the GGUF's")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TEXT} $A", pair=f"{BOS_TEXT} $A {BOS_TEXT} $B",
        special_tokens=[(BOS_TEXT, bos_id)])
    return tok


def write_tiny_tokenizer(path: str | Path) -> Path:
    """Write ``tokenizer.json`` to ``path`` and return it."""
    path = Path(path)
    tiny_tokenizer().save(str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write tokenizer.json")
    args = parser.parse_args(argv)
    path = write_tiny_tokenizer(args.out)
    print(f"{path}: {path.stat().st_size} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
