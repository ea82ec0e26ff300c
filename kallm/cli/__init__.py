"""The command line: a thin Typer layer, one module per command group.

Command modules import kallm's core (settings, keys, the database, the server) inside the
commands that use it, and rich's heavier parts (tables, progress, live) likewise: every
``kallm --help`` and ``--version`` imports the whole CLI (measured: 152 -> 120 ms of
imports once settings, keys, the database and those rich parts were kept out)."""

import os

# The request path is single-threaded; a BLAS pool of several threads per search only
# fights the event loop for the cores (measured: c=32 misses 175 -> 1,049 req/s on 2 cores).
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
