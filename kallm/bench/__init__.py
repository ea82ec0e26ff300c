"""``kallm bench``: measure the proxy the way users care about.

``run`` loads kallm and the upstream behind it (a simulated one that ships here,
or a real one) with misses, exact hits and paraphrase hits at several
concurrency levels and compares each with a direct call; ``quality`` runs
labelled prompt pairs through kallm's own cache to choose a similarity
threshold. The pieces (prompts, pre-fill, load generator, statistics) are
reusable by scripts such as ``scripts/bench_core.py``.
"""

MODEL = "gpt-4o-mini"  # the model every benchmark request names unless told otherwise
