"""A local tokenizer (``--tokenizer PATH``): synthetic prompts of an exact token length.

PATH is a ``tokenizer.json`` (Hugging Face's format) or a folder holding one, read with the
``tokenizers`` library (``pip install 'soaktop[tokenizer]'``), imported only when asked for.
Nothing is ever downloaded. Token counts are the prompt's own tokens: special tokens a server
adds (a BOS) are not counted.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from soaktop.engine.errors import ConfigError
from soaktop.engine.load.prompts import word

#: Short words tried at the end of a prompt whose word count cannot reach the exact length.
_FILLERS = ("a", "e", "i", "o", "u", "x", "ka", "lo", "mi", "ne", ".", ",", "-", "1")


class LocalTokenizer:
    def __init__(self, path: str) -> None:
        file = Path(path)
        if file.is_dir():
            file = file / "tokenizer.json"
        if not file.is_file():
            raise ConfigError(f"--tokenizer: no tokenizer.json at {path}")
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ConfigError("--tokenizer needs the tokenizers package: "
                              "pip install 'soaktop[tokenizer]'") from None
        try:
            self._tok = Tokenizer.from_file(str(file))
        except Exception as exc:  # the library's own error type for a damaged file
            raise ConfigError(f"--tokenizer: cannot read {file}: {exc}") from None
        raw = file.read_bytes()
        self.info = {"name": file.name, "path": str(file.resolve()), "size": len(raw),
                     "sha256": hashlib.sha256(raw).hexdigest()}

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def exact(self, word_ids: tuple[int, ...], n: int) -> tuple[str, tuple[int, ...]]:
        """Text of exactly ``n`` tokens, from the pseudo-words ``word_ids`` (cycled when more
        are needed), and its token ids: words are added or dropped until the count is ``n``,
        then short fillers make up a remainder no whole word fits."""
        words = [word(i) for i in word_ids] or [word(0)]
        while len(words) < n:
            words += words
        while self.count(" ".join(words)) <= n:  # enough words to pass n tokens
            words += words
        lo, hi = 0, len(words)  # the most words whose count is at most n: in [lo, hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.count(" ".join(words[:mid])) <= n:
                lo = mid
            else:
                hi = mid
        text = " ".join(words[:lo])
        ids = self.encode(text)
        for _ in range(4 * n + 8):
            if len(ids) == n:
                break
            for filler in _FILLERS:  # the first that adds one token without overshooting
                longer = f"{text} {filler}" if text else filler
                more = self.encode(longer)
                if len(ids) < len(more) <= n:
                    text, ids = longer, more
                    break
            else:
                break  # no filler moves it: the nearest count below is kept
        return text, tuple(ids)

    def describe(self) -> dict[str, Any]:
        return dict(self.info)
