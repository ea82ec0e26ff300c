"""Details: the words that say *which* thing a request is about, for the hit guard.

"Play Madonna" and "play Beyoncé", "play fourties music" and "play nineties music",
"turn off the living room speakers" and "turn off the speakers" sit within a hair of
each other for any embedder. What tells them apart is a detail one side names and the
other does not. Two rules find them without a list of every artist and venue:

    qualifiers  a word from ``kallm/data/qualifiers.txt`` (a room, a time of day, a
                relative date or period, a relation such as mom/boss, a genre) on
                one side only: it narrows the request, so even a one-sided one counts.
    rare words  a content word that is rare in English, judged by its rank in the
                embedding table's WordPiece vocabulary (roughly a frequency rank) or
                by not being one token of it at all (most names and titles), with no
                close counterpart on the other side. Common words may differ freely,
                which is what lets synonym swaps ("cost"/"price") through.

A counterpart is the same word once normalised (plural, possessive, contraction),
the same word split or joined ("groove shark"/"grooveshark"), or a word whose own
embedding is very close (a spelling variant, "doctor"/"physician").

Numbers (including number words and decades) are compared by the numbers check in
``guard.py``, so they are left out here.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterable
from functools import cache, lru_cache

import numpy as np

log = logging.getLogger("kallm.cache")

# A content word ranked past this in the vocabulary (or not in it) names a specific
# thing. Measured on Banking77 and SNIPS (README, "Cache quality, measured").
RARE_RANK = 9000
# Word embeddings at least this close make a counterpart (spelling variants, synonyms).
COUNTERPART_COSINE = 0.8
_FIRST_WORD_ID = 1996  # BERT's vocabulary: whole words roughly by frequency from "the" on
_CONTRACTIONS = {"re": "are", "ve": "have", "ll": "will", "d": "would", "m": "am"}


@cache
def _table() -> object | None:
    """The local embedder's table, for word ranks and word vectors; None if missing."""
    try:
        from kallm.embed.static import StaticEmbedder

        embedder = StaticEmbedder()
        embedder.load()
        return embedder
    except (OSError, ValueError) as exc:  # no table: the rare-word rule stays off
        log.warning("hit guard: no embedding table, rare-word details not checked: %s", exc)
        return None


@lru_cache(maxsize=16384)
def word_rank(word: str) -> int:
    """How common ``word`` is: its vocabulary rank, or a large number when it is not
    one token of the vocabulary (split into pieces: names, titles, rare words)."""
    table = _table()
    if table is None:
        return 0
    ids = table.token_ids(word)  # type: ignore[attr-defined]
    if len(ids) != 1:
        return 10**6
    return max(ids[0] - _FIRST_WORD_ID, 0)


@lru_cache(maxsize=16384)
def _word_vector(word: str) -> np.ndarray | None:
    table = _table()
    return None if table is None else table.encode(word)  # type: ignore[attr-defined]


def close_words(a: str, b: str) -> bool:
    """Embeddings of the two words alone are nearly the same: a spelling variant or a
    synonym (neighbourhood/neighborhood, physician/doctor, inexpensive/cheap)."""
    va, vb = _word_vector(a), _word_vector(b)
    return va is not None and vb is not None and float(va @ vb) >= COUNTERPART_COSINE


# British spellings, written the American way: "neighbourhood"/"neighborhood" is one word.
# Endings only, and only after a stem long enough that the fold cannot meet another word
# ("hour", "flour", "rogue" keep theirs); a fold that makes a non-word ("detour" -> "detor")
# is harmless, since the same fold is applied to both sides.
_BRITISH_ENDINGS = (
    (
        re.compile(r"^([a-z]{3,})our(s|ed|ing|hood|hoods|ite|ites|able|al|er|ers|ful|less)?$"),
        r"\1or\2",
    ),  # colour, neighbourhood, favourite, behaviour
    (re.compile(r"^([a-z]{2,}[bt])re(s?)$"), r"\1er\2"),  # theatre, centre, fibre, metre
    (re.compile(r"^([a-z]{2,}[bt])red$"), r"\1ered"),  # centred
    (re.compile(r"^([a-z]{3,})ogue(s)?$"), r"\1og\2"),  # catalogue, dialogue
    (re.compile(r"^([a-z]{4,})is(e|es|ed|ing|ation|ations)$"), r"\1iz\2"),  # organise
    (re.compile(r"^([a-z]{2,}e)ll(ed|ing|er|ers)$"), r"\1l\2"),  # travelled, cancelling
)
_BRITISH_WORDS = {
    "grey": "gray",
    "greys": "grays",
    "programme": "program",
    "programmes": "programs",
    "cheque": "check",
    "cheques": "checks",
    "tyre": "tire",
    "tyres": "tires",
    "jewellery": "jewelry",
    "pyjamas": "pajamas",
    "mould": "mold",
    "timbre": "timbre",  # not "timber"
}


@lru_cache(maxsize=16384)
def american(word: str) -> str:
    """``word`` in American spelling where it is a British spelling of the same word
    ("neighbourhood" -> "neighborhood", "theatres" -> "theaters", "organised" ->
    "organized"); every other word unchanged. A spelling, never a synonym."""
    known = _BRITISH_WORDS.get(word)
    if known is not None:
        return known
    for pattern, replacement in _BRITISH_ENDINGS:
        if pattern.match(word):
            return pattern.sub(replacement, word)
    return word


@lru_cache(maxsize=16384)
def canonical(word: str) -> str:
    """One spelling per word: contraction and possessive tails off, plurals folded.

    "what's" -> "what", "museum's" -> "museum", "stories" -> "story", "boxes" -> "box",
    "speakers" -> "speaker"; words ending in -ss, -us, -is keep their s; a final "ie" is
    written "y" so "movie" and "movies" (-> "movy") meet as "story" and "stories" do.
    """
    word = word.replace("’", "'")
    if "'" in word:
        word = word.split("'", 1)[0]
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    if len(word) > 3 and word.endswith("ie"):  # "stories"/"story", "movies"/"movie" alike
        return word[:-2] + "y"
    return word


def contraction_words(token: str) -> tuple[str, ...]:
    """A token with its contraction spelt out: "i'd" -> ("i", "would"), "it's" -> ("it",)."""
    if "'" not in token and "’" not in token:
        return (token,)
    head, _, tail = token.replace("’", "'").partition("'")
    expanded = _CONTRACTIONS.get(tail)
    return (head, expanded) if expanded else (head,)


@cache
def qualifier_phrases() -> dict[str, str]:
    """Qualifier phrase (canonical words) -> the qualifier it names (its first alias),
    from qualifiers.txt."""
    from importlib import resources

    text = resources.files("kallm.data").joinpath("qualifiers.txt").read_text(encoding="utf-8")
    found: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip().lower()
        if line and not line.startswith("#"):
            aliases = [" ".join(canonical(w) for w in alias.split()) for alias in line.split("|")]
            for alias in aliases:
                found[alias] = aliases[0]
    return found


@cache
def _qualifier_starts() -> frozenset[str]:
    return frozenset(p.split(" ", 1)[0] for p in qualifier_phrases() if " " in p)


def qualifiers(words: tuple[str, ...]) -> frozenset[str]:
    """Qualifier phrases in canonical ``words`` (longest first, so "living room" wins
    over a lone "room" and "day after tomorrow" over "tomorrow")."""
    phrases, starts = qualifier_phrases(), _qualifier_starts()
    if starts.isdisjoint(words):
        return frozenset(phrases[w] for w in phrases.keys() & set(words))
    found: set[str] = set()
    taken: set[int] = set()
    for size in (3, 2, 1):
        for i in range(len(words) - size + 1):
            if size > 1 and words[i] not in starts:
                continue
            span = range(i, i + size)
            phrase = " ".join(words[i : i + size])
            if phrase in phrases and taken.isdisjoint(span):
                found.add(phrases[phrase])
                taken.update(span)
    return frozenset(found)


def joined_pairs(words: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Each two neighbouring words written as one ("groove", "shark" -> "grooveshark")."""
    return {x + y: (x, y) for x, y in itertools.pairwise(words)}


def _specific(word: str, raw: str, proper: frozenset[str]) -> bool:
    """A name rather than a word: written as a name mid-sentence, or rare in English."""
    return raw in proper or word in proper or commonest_rank(raw, word) > RARE_RANK


@lru_cache(maxsize=16384)
def commonest_rank(raw: str, word: str) -> int:
    """The rank of the most common form of a word: "hotter" is as common as "hot",
    "quickest" as "quick", "safely" as "safe" (the vocabulary lists few inflections)."""
    forms = {raw, word}
    for suffix in ("est", "er", "ly", "ed", "ing"):
        if raw.endswith(suffix) and len(raw) - len(suffix) >= 3:
            stem = raw[: -len(suffix)]
            forms |= {stem, stem + "e"}
            if len(stem) > 3 and stem[-1] == stem[-2]:  # hotter -> hot, planned -> plan
                forms.add(stem[:-1])
            if stem.endswith("i"):  # happier -> happy, easily -> easy
                forms.add(stem[:-1] + "y")
    return min(word_rank(form) for form in forms)


def unmatched(mine: dict[str, str], theirs: dict[str, str]) -> dict[str, str]:
    """The words of ``mine`` that ``theirs`` lacks, written together or apart
    ("grooveshark" / "groove shark" match both ways)."""
    their_joined, my_joined = joined_pairs(theirs), joined_pairs(mine)
    split_up = {part for joined, parts in my_joined.items() if joined in theirs for part in parts}
    return {
        w: raw
        for w, raw in mine.items()
        if w not in theirs and w not in their_joined and w not in split_up
    }


def _without_counterparts(side: dict[str, str], other: dict[str, str]) -> dict[str, str]:
    return {
        w: raw for w, raw in side.items() if not any(close_words(raw, o) for o in other.values())
    }


def detail_differs(
    a_words: dict[str, str],
    b_words: dict[str, str],
    a_qualifiers: frozenset[str],
    b_qualifiers: frozenset[str],
    proper: frozenset[str] = frozenset(),
) -> bool:
    """Whether one side names a detail the other lacks.

    ``*_words`` map each canonical content word to how it was written (ranks and word
    vectors are looked up for both, since "theatres" is rarer than "theatre");
    ``proper`` holds the words either side capitalised mid-sentence.

    A specific word alone on one side ("play music by Madonna" / "play music") is a
    detail. When both sides have words the other lacks, it is a swap, and a swap is a
    detail only when each side's word is specific ("Madonna" / "Beyonce"): a common word
    on either side is far more often a synonym ("delete" / "remove") than a new detail.
    """
    if a_qualifiers != b_qualifiers:
        return True
    only_a, only_b = unmatched(a_words, b_words), unmatched(b_words, a_words)
    only_a, only_b = (
        _without_counterparts(only_a, only_b),
        _without_counterparts(only_b, only_a),
    )
    specific_a = [w for w, raw in only_a.items() if _specific(w, raw, proper)]
    specific_b = [w for w, raw in only_b.items() if _specific(w, raw, proper)]
    if only_a and only_b:
        return bool(specific_a) and bool(specific_b)
    return bool(specific_a or specific_b)
