"""Owns the built-in `local` embedder: a static token table distilled from all-MiniLM-L6-v2.

Following model2vec, every WordPiece token was run through the transformer once
at build time (``scripts/build_embedding_table.py``), reduced by PCA, weighted
down by frequency rank and quantised to int8. At run time a prompt is just
tokenised and its rows averaged: ~0.1 ms, numpy only, no model runtime. The
data ships in ``kallm/embed/data/`` and is read through ``importlib.resources``
so the same code works from a wheel, a checkout or a PyInstaller bundle.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from kallm.embed.base import l2_normalise
from kallm.embed.wordpiece import WordPieceTokenizer

TABLE_FILE = "minilm_static_int8.npy"
SCALES_FILE = "minilm_static_scales.npy"
VOCAB_FILE = "vocab.txt"
DATA_FILES = (TABLE_FILE, SCALES_FILE, VOCAB_FILE)


@dataclass(frozen=True)
class _Table:
    """The loaded data: int8 rows, their per-dimension scales and the tokenizer."""

    rows: np.ndarray  # (vocab, dim) int8
    scales: np.ndarray  # (dim,) float32
    tokenizer: WordPieceTokenizer


_tables: dict[str, _Table] = {}
_tables_lock = threading.Lock()
_KEEP_OPEN = ExitStack()


def _default_data_dir() -> Path:
    """The packaged data directory, materialised as a real path for np.load.

    ``as_file`` is a no-op for ordinary installs and PyInstaller bundles (the
    files are already on disk); the ExitStack is kept open for the process so a
    zip-imported package would also keep its extracted copy.
    """
    ref = resources.files("kallm.embed").joinpath("data")
    return Path(_KEEP_OPEN.enter_context(resources.as_file(ref)))


def _missing_files(data_dir: Path) -> list[str]:
    """Names of required data files absent from ``data_dir``."""
    return [name for name in DATA_FILES if not (data_dir / name).is_file()]


def _load_table(data_dir: Path) -> _Table:
    """Read the table once per directory; later embedders share the same arrays."""
    key = str(data_dir)
    with _tables_lock:
        table = _tables.get(key)
        if table is None:
            rows = np.load(data_dir / TABLE_FILE, allow_pickle=False)
            scales = np.load(data_dir / SCALES_FILE, allow_pickle=False).astype(np.float32)
            tokenizer = WordPieceTokenizer.from_file(data_dir / VOCAB_FILE)
            if rows.dtype != np.int8 or rows.shape != (len(tokenizer.vocab), scales.shape[0]):
                raise ValueError(f"embedding table in {data_dir} does not match its vocab/scales")
            table = _Table(rows=rows, scales=scales, tokenizer=tokenizer)
            _tables[key] = table
    return table


class StaticEmbedder:
    """Mean of dequantised token rows, L2-normalised; text without known tokens gives zeros."""

    name = "local-minilm-static-v1"
    # Chosen by cross-fitting with the hit guard on (README, "Cache quality, measured"): the
    # highest hit rate with Banking77 precision of hits >= 97% and false hits on novel traffic
    # <= 1%, where SNIPS serves more than at 0.96. The detail checks let it come down from
    # 0.96; with the guard's swap margin (0.02 above it) SNIPS's detail precision is 96.7%
    # (99.2% with spelling folded), and 0.94 fails Banking77's novel traffic at any margin.
    default_threshold = 0.95

    def __init__(self, data_dir: str | Path | None = None) -> None:
        """Check the data files exist now (so callers can fall back); load them on first use.

        Raises ``FileNotFoundError`` when the table, scales or vocab are missing.
        """
        self._data_dir = Path(data_dir) if data_dir is not None else _default_data_dir()
        missing = _missing_files(self._data_dir)
        if missing:
            raise FileNotFoundError(
                f"static embedding table missing in {self._data_dir}: {', '.join(missing)} "
                "(rebuild with scripts/build_embedding_table.py)"
            )
        self.dim = int(np.load(self._data_dir / SCALES_FILE, mmap_mode="r").shape[0])
        self._table: _Table | None = None

    def load(self) -> None:
        """Load the table now instead of on the first request (~10 ms)."""
        self._get_table()

    def _get_table(self) -> _Table:
        """The shared table, loaded lazily exactly once."""
        if self._table is None:
            self._table = _load_table(self._data_dir)
        return self._table

    def token_ids(self, text: str) -> list[int]:
        """WordPiece ids of ``text`` without [CLS]/[SEP] (exposed for diagnostics)."""
        return self._get_table().tokenizer.encode(text)

    def _raw(self, table: _Table, text: str) -> np.ndarray:
        """Unnormalised sum of the text's dequantised rows (the mean up to a scale)."""
        ids = table.tokenizer.encode(text)
        if not ids:
            return np.zeros(self.dim, dtype=np.float32)
        return table.rows[ids].sum(axis=0, dtype=np.float32) * table.scales

    def encode(self, text: str) -> np.ndarray:
        """Unit-length float32 vector of shape (dim,)."""
        return l2_normalise(self._raw(self._get_table(), text))

    def encode_batch(self, texts: list[str]) -> np.ndarray:
        """Row-wise ``encode`` for batch scripts (n x dim)."""
        table = self._get_table()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalise(np.stack([self._raw(table, t) for t in texts]))

    async def embed(self, text: str) -> np.ndarray:
        """The async Embedder entry point; ~0.1 ms of CPU, so it runs inline."""
        return self.encode(text)
