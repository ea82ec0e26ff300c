"""The built-in embedders: shape, norm, determinism, stability across processes, semantics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kallm.embed.base import Embedder
from kallm.embed.hashing import HashEmbedder
from kallm.embed.static import StaticEmbedder

REPO = Path(__file__).resolve().parent.parent

PARAPHRASE = (
    "How do I reset my PIN?",
    "I forgot my PIN, how can I change it?",
)
UNRELATED = "Why was my card payment declined at the supermarket?"


@pytest.fixture(scope="module", params=["local", "hash"])
def embedder(request: pytest.FixtureRequest) -> StaticEmbedder | HashEmbedder:
    return StaticEmbedder() if request.param == "local" else HashEmbedder()


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)


def test_satisfies_protocol(embedder: StaticEmbedder | HashEmbedder) -> None:
    assert isinstance(embedder, Embedder)
    assert embedder.name and isinstance(embedder.name, str)
    assert 0.5 < embedder.default_threshold < 1.0


def test_vector_shape_dtype_and_unit_norm(embedder: StaticEmbedder | HashEmbedder) -> None:
    for text in [*PARAPHRASE, UNRELATED, "x", "Café ☕ 中文 " * 30]:
        vec = embedder.encode(text)
        assert vec.shape == (embedder.dim,)
        assert vec.dtype == np.float32
        assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5


def test_deterministic(embedder: StaticEmbedder | HashEmbedder) -> None:
    first = embedder.encode(PARAPHRASE[0])
    assert np.array_equal(first, embedder.encode(PARAPHRASE[0]))
    fresh = type(embedder)()
    assert np.array_equal(first, fresh.encode(PARAPHRASE[0]))


def test_empty_and_symbol_only_text_gives_zero_vector(
    embedder: StaticEmbedder | HashEmbedder,
) -> None:
    for text in ["", "   "]:
        vec = embedder.encode(text)
        assert vec.shape == (embedder.dim,)
        assert not vec.any()


def test_batch_matches_single(embedder: StaticEmbedder | HashEmbedder) -> None:
    texts = [*PARAPHRASE, "", UNRELATED]
    batch = embedder.encode_batch(texts)
    assert batch.shape == (len(texts), embedder.dim)
    for row, text in zip(batch, texts, strict=True):
        np.testing.assert_allclose(row, embedder.encode(text), atol=1e-6)
    assert embedder.encode_batch([]).shape == (0, embedder.dim)


async def test_async_embed_equals_encode(embedder: StaticEmbedder | HashEmbedder) -> None:
    vec = await embedder.embed(PARAPHRASE[1])
    assert np.array_equal(vec, embedder.encode(PARAPHRASE[1]))


def test_paraphrase_scores_higher_than_unrelated(
    embedder: StaticEmbedder | HashEmbedder,
) -> None:
    a, b = (embedder.encode(t) for t in PARAPHRASE)
    other = embedder.encode(UNRELATED)
    assert cos(a, b) > cos(a, other) + 0.05


def test_identical_text_scores_one(embedder: StaticEmbedder | HashEmbedder) -> None:
    vec = embedder.encode(UNRELATED)
    assert cos(vec, embedder.encode(UNRELATED)) == pytest.approx(1.0, abs=1e-5)


# --- local (static table) ---------------------------------------------------------------


def test_static_semantics_beyond_shared_words() -> None:
    """The distilled table knows synonyms that share no characters."""
    emb = StaticEmbedder()
    base = emb.encode("my card has not arrived yet")
    synonym = emb.encode("my card has not come yet")
    unrelated = emb.encode("what is the exchange rate for euros")
    assert cos(base, synonym) > 0.9
    assert cos(base, synonym) > cos(base, unrelated) + 0.2


def test_static_table_shape_and_name() -> None:
    emb = StaticEmbedder()
    assert emb.dim == 256
    assert emb.name == "local-minilm-static-v1"
    assert len(emb.token_ids("hello world")) == 2


def test_static_missing_data_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="static embedding table missing"):
        StaticEmbedder(tmp_path)


def test_static_notice_names_the_model() -> None:
    notice = (REPO / "kallm" / "embed" / "data" / "NOTICE").read_text(encoding="utf-8")
    assert "sentence-transformers/all-MiniLM-L6-v2" in notice
    assert "Apache License" in notice


# --- hash ---------------------------------------------------------------------------------

# Computed once with HashEmbedder(); any change here means cached vectors from
# earlier versions would silently stop matching: bump the embedder's name instead.
HI_THERE = {
    42: 0.2357, 52: -0.2357, 122: -0.2357, 123: -0.2357, 125: 0.2357, 150: 0.2357,
    158: 0.2357, 168: 0.2357, 178: -0.2357, 248: -0.2357, 344: 0.2357, 360: 0.2357,
    406: -0.2357, 407: 0.2357, 419: -0.2357, 461: 0.2357, 477: -0.2357, 505: -0.2357,
}  # fmt: skip


def test_hash_matches_fixed_value() -> None:
    vec = HashEmbedder().encode("Hi there")
    got = {int(i): round(float(vec[i]), 4) for i in np.nonzero(vec)[0]}
    assert got == HI_THERE


def test_hash_stable_across_processes() -> None:
    """Python's own hash() is salted per process; ours must not be."""
    code = (
        "import json; from kallm.embed.hashing import HashEmbedder; "
        "print(json.dumps(HashEmbedder().encode('Where is my refund?').tolist()))"
    )
    results = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(out.stdout))
    assert results[0] == results[1]
    np.testing.assert_allclose(results[0], HashEmbedder().encode("Where is my refund?"), atol=1e-7)


def test_hash_dim_is_configurable_and_named() -> None:
    emb = HashEmbedder(dim=64)
    assert emb.encode("hello world").shape == (64,)
    assert emb.name != HashEmbedder().name


def test_hash_is_case_insensitive_and_typo_tolerant() -> None:
    emb = HashEmbedder()
    assert np.array_equal(emb.encode("Reset My PIN"), emb.encode("reset my pin"))
    assert cos(emb.encode("cancel my transfer"), emb.encode("cancel my transfre")) > 0.6
