"""Owns the pure-Python BERT WordPiece tokenizer used by the static `local` embedder.

The static table is indexed by the ids of all-MiniLM-L6-v2's own tokenizer, so
this must give exactly the ids the Hugging Face fast tokenizer gives (checked
against ``tests/data/wordpiece_reference.jsonl``), without pulling in
``tokenizers``/``transformers`` at run time. It mirrors the Rust
``BertNormalizer`` + ``BertPreTokenizer`` + ``WordPiece`` pipeline, including
its quirks: control characters are dropped (not turned into spaces), accents
are stripped before lower-casing, and literal special tokens such as ``[SEP]``
in the text map to their special ids.

Known limit: character classes come from Python's ``unicodedata`` while the
Rust crate uses older tables (and a newer lower-casing table), so ~560 rare
code points added to Unicode in recent years (Python 3.11: Unicode 14) can be
split or stripped differently. None of them is in the BERT vocabulary.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

MAX_CHARS_PER_WORD = 100
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# ASCII fast path: \t \n \r become spaces, other C0 controls and DEL vanish.
_ASCII_CLEAN = {c: None for c in [*range(32), 127]} | {9: 32, 10: 32, 13: 32}
# After lower-casing, a word is a run of [a-z0-9]; every other printable ASCII
# character is BERT punctuation and stands alone (note "_" is punctuation).
_ASCII_SPLIT = re.compile(r"[a-z0-9]+|[^a-z0-9\s]")
_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")

_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B920, 0x2CEAF),  # sic: the Rust tokenizer has 0x2B920 (Python BERT: 0x2B820)
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _is_cjk(cp: int) -> bool:
    """CJK ideographs are split into single-character words, as BERT does."""
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _is_punctuation(ch: str) -> bool:
    """BERT treats all printable non-alphanumeric ASCII and Unicode P* as punctuation."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _clean_char(ch: str) -> str:
    """Rust BertNormalizer clean_text: drop NUL, U+FFFD and Cc/Cf/Co/Cs; whitespace -> space.

    Unassigned code points (Cn) are kept, as the Rust tables do.
    """
    if ch in "\t\n\r":
        return " "
    cp = ord(ch)
    category = unicodedata.category(ch)
    if cp == 0 or cp == 0xFFFD or (category[0] == "C" and category != "Cn"):
        return ""
    if ch.isspace():
        return " "
    if _is_cjk(cp):
        return f" {ch} "
    return ch


def _normalise_unicode(text: str) -> str:
    """Clean, pad CJK, strip accents (NFD minus Mn), then lower-case char by char."""
    text = "".join(_clean_char(ch) for ch in text)
    text = "".join(
        ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) != "Mn"
    )
    # Per-char lower() (not str.lower) matches Rust: no final-sigma context rule.
    return "".join(ch.lower() for ch in text)


def _split_unicode(text: str) -> list[str]:
    """Whitespace split, then every punctuation character becomes its own word."""
    words: list[str] = []
    for chunk in text.split():
        current: list[str] = []
        for ch in chunk:
            if _is_punctuation(ch):
                if current:
                    words.append("".join(current))
                    current = []
                words.append(ch)
            else:
                current.append(ch)
        if current:
            words.append("".join(current))
    return words


def basic_tokenise(text: str) -> list[str]:
    """Normalise and split text into words (no special-token handling)."""
    if text.isascii():
        return _ASCII_SPLIT.findall(text.translate(_ASCII_CLEAN).lower())
    return _split_unicode(_normalise_unicode(text))


class WordPieceTokenizer:
    """Greedy longest-match-first WordPiece over a BERT ``vocab.txt``."""

    def __init__(self, vocab: list[str], cache_size: int = 16384) -> None:
        self.vocab = {token: i for i, token in enumerate(vocab)}
        self.unk_id = self.vocab["[UNK]"]
        # A bounded per-word cache: prompts reuse a small working set of words.
        self._word_ids = lru_cache(maxsize=cache_size)(self._wordpiece)

    @classmethod
    def from_file(cls, path: str | Path) -> WordPieceTokenizer:
        """Load a vocab file with one token per line; the line number is the id."""
        # split("\n"), not splitlines(): the latter would also break on U+2028 etc.
        text = Path(path).read_text(encoding="utf-8")
        return cls(text.removesuffix("\n").split("\n"))

    def _wordpiece(self, word: str) -> tuple[int, ...]:
        """Split one word into sub-word ids; the whole word is [UNK] if any piece fails."""
        if len(word) > MAX_CHARS_PER_WORD:
            return (self.unk_id,)
        whole = self.vocab.get(word)
        if whole is not None:
            return (whole,)
        ids: list[int] = []
        start, n = 0, len(word)
        while start < n:
            end = n
            prefix = "##" if start else ""
            while end > start:
                piece_id = self.vocab.get(prefix + word[start:end])
                if piece_id is not None:
                    break
                end -= 1
            else:
                return (self.unk_id,)
            ids.append(piece_id)
            start = end
        return tuple(ids)

    def _words_to_ids(self, words: Iterable[str]) -> list[int]:
        """Concatenate the cached WordPiece ids of each word."""
        ids: list[int] = []
        word_ids = self._word_ids
        for word in words:
            ids.extend(word_ids(word))
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without [CLS]/[SEP], identical to the HF fast tokenizer."""
        if "[" not in text:
            return self._words_to_ids(basic_tokenise(text))
        ids: list[int] = []
        for part in _SPECIAL_SPLIT.split(text):
            if part in SPECIAL_TOKENS:
                ids.append(self.vocab[part])
            elif part:
                ids.extend(self._words_to_ids(basic_tokenise(part)))
        return ids
