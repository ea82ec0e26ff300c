"""The pure-Python WordPiece tokenizer must reproduce the model's own tokenizer id for id.

The reference ids were produced by the Hugging Face (Rust) tokenizer shipped
with all-MiniLM-L6-v2 (scripts/build_embedding_table.py --reference-only), so
this runs without torch/transformers/tokenizers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kallm.embed.static import VOCAB_FILE, _default_data_dir
from kallm.embed.wordpiece import WordPieceTokenizer, basic_tokenise

REFERENCE = Path(__file__).parent / "data" / "wordpiece_reference.jsonl"


@pytest.fixture(scope="module")
def tokenizer() -> WordPieceTokenizer:
    return WordPieceTokenizer.from_file(_default_data_dir() / VOCAB_FILE)


def load_reference() -> list[dict]:
    return [json.loads(line) for line in REFERENCE.read_text(encoding="utf-8").splitlines()]


def test_reference_file_is_substantial() -> None:
    rows = load_reference()
    assert len(rows) >= 250
    assert any(row["text"] == "" for row in rows)
    assert any(not row["text"].isascii() for row in rows)


def test_ids_equal_reference_tokenizer(tokenizer: WordPieceTokenizer) -> None:
    mismatches = [
        (row["text"], row["ids"], tokenizer.encode(row["text"]))
        for row in load_reference()
        if tokenizer.encode(row["text"]) != row["ids"]
    ]
    assert mismatches == []


def test_second_pass_uses_cache_and_agrees(tokenizer: WordPieceTokenizer) -> None:
    rows = load_reference()
    assert [tokenizer.encode(r["text"]) for r in rows] == [r["ids"] for r in rows]


def test_vocab_is_bert_uncased(tokenizer: WordPieceTokenizer) -> None:
    assert len(tokenizer.vocab) == 30522
    assert tokenizer.vocab["[UNK]"] == 100
    assert tokenizer.vocab["[CLS]"] == 101


def test_word_over_100_chars_is_unknown(tokenizer: WordPieceTokenizer) -> None:
    assert tokenizer.encode("a" * 101) == [tokenizer.unk_id]
    assert tokenizer.unk_id not in tokenizer.encode("a" * 100)


def test_continuation_pieces_and_unknown_chars(tokenizer: WordPieceTokenizer) -> None:
    ids = tokenizer.encode("unaffable")
    inverse = {i: t for t, i in tokenizer.vocab.items()}
    pieces = [inverse[i] for i in ids]
    assert "".join(p.removeprefix("##") for p in pieces) == "unaffable"
    assert all(p.startswith("##") for p in pieces[1:])
    assert tokenizer.encode("\U00013000") == [tokenizer.unk_id]  # Egyptian hieroglyph


def test_basic_tokenise_rules() -> None:
    assert basic_tokenise("Héllo, WORLD!") == ["hello", ",", "world", "!"]
    assert basic_tokenise("snake_case") == ["snake", "_", "case"]
    assert basic_tokenise("我的卡") == ["我", "的", "卡"]
    assert basic_tokenise("a\x0bb") == ["ab"]  # control chars vanish, like the Rust normaliser
    assert basic_tokenise("") == []


def test_literal_special_tokens_map_to_special_ids(tokenizer: WordPieceTokenizer) -> None:
    assert tokenizer.encode("a [SEP] b") == [
        tokenizer.vocab["a"],
        tokenizer.vocab["[SEP]"],
        tokenizer.vocab["b"],
    ]
    assert tokenizer.vocab["[SEP]"] not in tokenizer.encode("[sep]")
