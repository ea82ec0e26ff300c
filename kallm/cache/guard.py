"""The hit guard: refuse a near neighbour whose wording asks a different question.

Embedders put "lock the door" and "unlock the door", "20 degrees" and "22
degrees", "Boston to Denver" and "Denver to Boston" within a hair of each other,
and no threshold separates those from true paraphrases. So after the index finds
a candidate above the threshold, the two texts are compared word by word, and
the hit is refused when they differ in something that changes the answer:

    negation   a negation on one side only (not, no, never, n't, without...)
    numbers    the numbers differ as multisets (digits, number words, %, times, dates)
    opposite   one side has one half of an opposing pair, the other the other half
    roles      the same words, but a role marker (from, to, than...) points elsewhere
    subject    each side names a specific thing the other does not (Tokyo / Osaka)

It reads text only, so it serves every embedder; data files in ``kallm/data``
(``opposites.txt``, ``entities.txt``) are plain lists anyone can extend.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources

_TOKEN = re.compile(r"\d+(?:[.,:]\d+)*(?:st|nd|rd|th)?%?|[a-z]+(?:\+\+|#|['’][a-z]+)?")
NEGATIONS = frozenset(
    (
        "not no never without nobody nothing none neither nor cannot nowhere noone unable "
        "isnt dont doesnt didnt cant wont wouldnt shouldnt couldnt arent wasnt werent "
        "havent hasnt hadnt aint"
    ).split()
)
ROLE_MARKERS = frozenset(
    (
        "from to into onto than vs versus per by against toward towards via of before "
        "after as like match matches"
    ).split()
)
# subject and object forms: "do I owe Sarah" / "does Sarah owe me" swap who owes whom
_PRONOUN_CASES = (("i", "me"), ("we", "us"), ("he", "him"), ("she", "her"), ("they", "them"))
STOPWORDS = frozenset(
    (
        "a an the my your our their his her its this that these those some any i me we "
        "you he she it they them us is are was were be been being am do does did have has "
        "had will would can could should shall may might must of in on at for with about "
        "as and or but if so please what whats what's which who whom whose where when why "
        "how there here just also very really get got go going want need like know tell "
        "show give make let s"
    ).split()
)
_UNITS = {
    w: i
    for i, w in enumerate(
        (
            "zero one two three four five six seven eight nine ten eleven twelve thirteen "
            "fourteen fifteen sixteen seventeen eighteen nineteen"
        ).split()
    )
}
_TENS = {
    w: 10 * i
    for i, w in enumerate(
        ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
    )
    if w != "_"
}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
_ORDINALS = {
    w: i + 3
    for i, w in enumerate(
        ("third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth").split()
    )
}
_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        (
            "january february march april may june july august september october november december"
        ).split()
    )
}
_AMBIGUOUS_MONTHS = frozenset({"may", "march"})  # verbs too: dates only next to a number
_PREFIXES = ("un", "dis", "non", "in", "im", "il", "ir", "de")


@dataclass(frozen=True, slots=True, eq=False)
class Wording:
    """What the guard needs to know about one text."""

    tokens: tuple[str, ...]
    negated: bool
    numbers: Counter[str]
    content: frozenset[str]
    roles: dict[str, frozenset[str]]
    labels: tuple[str, ...]
    entities: frozenset[str]
    proper: frozenset[str]


@cache
def _data_lines(name: str) -> list[str]:
    text = resources.files("kallm.data").joinpath(name).read_text(encoding="utf-8")
    return [
        line.strip().lower()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _inflections(word: str) -> set[str]:
    forms = {word, word + "s", word + "es", word + "ed", word + "ing"}
    if word.endswith("e"):
        forms |= {word + "d", word[:-1] + "ing"}
    if len(word) > 2 and word[-1] not in "aeiouwy" and word[-2] in "aeiou":
        forms |= {word + word[-1] + "ed", word + word[-1] + "ing"}
    if word.endswith("y"):
        forms |= {word[:-1] + "ies", word[:-1] + "ied"}
    return forms


@cache
def _opposites() -> tuple[dict[str, str], dict[str, frozenset[str]]]:
    """(inflected form -> base form, base form -> its opposites' base forms)."""
    base_of: dict[str, str] = {}
    opposed: dict[str, set[str]] = {}
    for line in _data_lines("opposites.txt"):
        parts = line.split()
        if len(parts) != 2:
            continue
        for word in parts:
            for form in _inflections(word):
                base_of.setdefault(form, word)
        left, right = parts
        opposed.setdefault(left, set()).add(right)
        opposed.setdefault(right, set()).add(left)
    return base_of, {word: frozenset(others) for word, others in opposed.items()}


@cache
def entity_names() -> frozenset[str]:
    return frozenset(_data_lines("entities.txt"))


def _numbers(tokens: tuple[str, ...]) -> list[str]:
    """Numbers as canonical strings; a lone 1 is dropped since "a"/"an"/"one" all mean it."""
    found: list[str] = []
    words: list[str] = []

    def flush() -> None:
        if words:
            found.append(_number_from_words(words))
            words.clear()

    for i, token in enumerate(tokens):
        if token in _UNITS or token in _TENS or token in _SCALES or token == "dozen":
            words.append(token)
            continue
        if token == "and" and words:
            continue
        flush()
        if token in ("percent", "pct") and found and not found[-1].endswith("%"):
            found[-1] += "%"  # "25 percent" is "25%"
        elif token[0].isdigit():
            found.append(_canonical_digits(token))
        elif token in _ORDINALS:
            found.append(str(_ORDINALS[token]))
        elif token in _MONTHS and (token not in _AMBIGUOUS_MONTHS or _next_to_digit(tokens, i)):
            found.append(f"month{_MONTHS[token]}")
    flush()
    return [n for n in found if n != "1"]


def _next_to_digit(tokens: tuple[str, ...], i: int) -> bool:
    return any(0 <= j < len(tokens) and tokens[j][0].isdigit() for j in (i - 1, i + 1))


def _canonical_digits(token: str) -> str:
    percent = token.endswith("%")
    core = re.sub(r"(st|nd|rd|th)$", "", token.rstrip("%"))
    if ":" not in core:
        core = core.replace(",", "")
        try:
            value = float(core)
            core = str(int(value)) if value.is_integer() else str(value)
        except ValueError:
            pass
    return core + ("%" if percent else "")


def _number_from_words(words: list[str]) -> str:
    total = current = 0
    for word in words:
        if word in _UNITS:
            current += _UNITS[word]
        elif word in _TENS:
            current += _TENS[word]
        elif word == "dozen":
            current = (current or 1) * 12
        elif word == "hundred":
            current = (current or 1) * 100
        else:
            total += (current or 1) * _SCALES[word]
            current = 0
    return str(total + current)


def _normal(word: str) -> str:
    """A light stem, so "museum's"/"museum", "hours"/"hour", "taking"/"take" match."""
    word = re.sub(r"['’]s$", "", word)
    if len(word) > 5 and word.endswith("ing"):
        word = word[:-3]
    elif len(word) > 4 and word.endswith("ed"):
        word = word[:-2]
    elif len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    return word[:-1] if len(word) > 3 and word.endswith("e") else word


_SYMMETRIC = frozenset({"and", "or", "plus", "times", "&"})


def _role_filler(tokens: tuple[str, ...], start: int) -> str | None:
    """The word a marker governs: the next one that is not a stopword or an -ly adverb.

    None when it heads a coordination ("the sum of 15 and 27"): order is no role there.
    """
    for i in range(start, len(tokens)):
        token = tokens[i]
        if token in STOPWORDS or token in ROLE_MARKERS or (len(token) > 4 and token.endswith("ly")):
            continue
        if i + 1 < len(tokens) and tokens[i + 1] in _SYMMETRIC:
            return None
        return token if token[0].isdigit() else _normal(token)
    return None


def _roles(tokens: tuple[str, ...]) -> dict[str, frozenset[str]]:
    roles: dict[str, set[str]] = {}
    for i, token in enumerate(tokens):
        if token in ROLE_MARKERS:
            filler = _role_filler(tokens, i + 1)
            if filler is not None:
                roles.setdefault(token, set()).add(filler)
    return {marker: frozenset(words) for marker, words in roles.items()}


def _roles_swapped(a: Wording, b: Wording) -> bool:
    """Same words, but a marker both share governs other words, pronouns change case
    (I/me), or one-letter labels change places (type A to type O)."""
    if a.content != b.content:
        return False
    if any(b.roles[m] != words for m, words in a.roles.items() if m in b.roles):
        return True
    if a.labels != b.labels and sorted(a.labels) == sorted(b.labels):
        return True
    ta, tb = set(a.tokens), set(b.tokens)
    if ("you" in ta) != ("you" in tb):  # "can you tell me" / "can I tell": a new point of view
        return False
    return any(
        (s in ta and o not in ta and o in tb and s not in tb)
        or (o in ta and s not in ta and s in tb and o not in tb)
        for s, o in _PRONOUN_CASES
    )


def _labels(text: str) -> tuple[str, ...]:
    """One-letter capitals that name things (blood type A, plan B), not "I" or a leading "A"."""
    return tuple(m.group(1) for m in re.finditer(r"(?<!^)\b([A-HJ-Z])\b", text.strip()))


def _entities(tokens: tuple[str, ...]) -> frozenset[str]:
    """Named things, found as written or with a plural or possessive folded ("japan's")."""
    names = entity_names()
    found = set()
    for size in (3, 2, 1):
        for i in range(len(tokens) - size + 1):
            phrase = " ".join(tokens[i : i + size])
            if phrase in names:
                found.add(phrase)
            elif len(phrase) > 2 and phrase[-1] == "s":
                folded = phrase[:-2] if phrase[-2] in "'’" else phrase[:-1]
                if folded in names:
                    found.add(folded)
    return frozenset(found)


def _proper_nouns(text: str) -> frozenset[str]:
    """Capitalised words that do not start a sentence: names the user typed as names."""
    found = set()
    for match in re.finditer(r"(?<![.!?]\s)(?<!^)\b([A-Z][a-z]+)\b", text.strip()):
        if match.group(1) != "I":
            found.add(match.group(1).lower())
    return frozenset(found)


@lru_cache(maxsize=4096)
def wording(text: str) -> Wording:
    tokens = tuple("not" if t.endswith(("n't", "n’t")) else t for t in _TOKEN.findall(text.lower()))
    content = frozenset(
        _normal(t)
        for t in tokens
        if t not in STOPWORDS and t not in NEGATIONS and not t[0].isdigit()
    )
    numbers = _numbers(tokens)
    return Wording(
        tokens=tokens,
        negated=any(t in NEGATIONS for t in tokens),
        numbers=Counter(numbers),
        content=content,
        roles=_roles(tokens),
        labels=_labels(text),
        entities=_entities(tokens),
        proper=_proper_nouns(text),
    )


def _opposed(a: Wording, b: Wording) -> bool:
    """One side has one half of an opposing pair, the other side the other half.

    Words are compared as base forms and as multisets, so "unlocked"/"unlock" is the
    same word, and "check-in ... in Rome" / "check-out ... in Rome" differ by one "in".
    """
    base_of, opposed = _opposites()
    counts_a = Counter(base_of.get(t, t) for t in a.tokens)
    counts_b = Counter(base_of.get(t, t) for t in b.tokens)
    only_a, only_b = set(counts_a - counts_b), set(counts_b - counts_a)
    if not only_a or not only_b:
        return False
    for word in only_a:
        opposites = opposed.get(word)
        if opposites and not opposites.isdisjoint(only_b):
            return True
        for other in only_b:
            longer, shorter = (word, other) if len(word) > len(other) else (other, word)
            if len(shorter) >= 4 and any(longer == p + shorter for p in _PREFIXES):
                return True
    return False


def _distinct_on_both_sides(a: frozenset[str], b: frozenset[str]) -> bool:
    return bool(a - b) and bool(b - a)


def refusal_reason(query: str, candidate: str) -> str | None:
    """Why ``candidate``'s answer must not serve ``query``, or None when it may."""
    a, b = wording(query), wording(candidate)
    opposed = _opposed(a, b)
    if a.negated != b.negated and not opposed:  # "not correct" / "wrong" say the same
        return "negation"
    if a.numbers != b.numbers:
        return "numbers"
    if opposed and a.negated == b.negated:
        return "opposite"
    if _roles_swapped(a, b):
        return "roles"
    if _distinct_on_both_sides(a.entities, b.entities) or _distinct_on_both_sides(
        a.proper - b.content, b.proper - a.content
    ):
        return "subject"
    return None


hit_guard = refusal_reason
