"""Identifiers kallm makes up: request ids, answer ids, hold ids.

None of them is a secret (they travel in response headers and bodies), so they come from
a fast pseudo-random generator rather than the operating system's: ``secrets`` costs a
system call per id, about 6% of a cache hit. Keys and the admin key still come from
``secrets`` (see ``kallm.accounts``). Where two ids must never collide (a budget hold is
released by its id) :func:`unique_id` is unique by construction, not by chance.
"""

from __future__ import annotations

import itertools
import random
import secrets

_random = random.Random(secrets.randbits(128))
_PROCESS = secrets.token_hex(6)  # other replicas share the ledger: ids differ by process
_sequence = itertools.count(1)


def random_hex(digits: int) -> str:
    """``digits`` lowercase hex digits, unpredictable enough for an id, not for a secret."""
    return f"{_random.getrandbits(digits * 4):0{digits}x}"


def unique_id() -> str:
    """An id no other call in any kallm process returns: a process tag and a counter."""
    return f"{_PROCESS}{next(_sequence):x}"
