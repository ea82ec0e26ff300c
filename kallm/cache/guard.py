"""The hit guard: refuse a near neighbour whose wording asks a different question.

Embedders put "lock the door" and "unlock the door", "20 degrees" and "22
degrees", "Boston to Denver" and "Denver to Boston" within a hair of each other,
and no threshold separates those from true paraphrases. So after the index finds
a candidate above the threshold, the two texts are compared word by word, and
the hit is refused when they differ in something that changes the answer:

    negation   a negation on one side only (not, no, never, n't, without...)
    numbers    the numbers differ as multisets (digits, number words, %, times, dates)
    opposite   one side has one half of an opposing pair, the other the other half,
               or a particle changes the action (turn up / turn off, switch / switch off)
    roles      the same words, but a role marker (from, to, than, for...) governs other
               words (buy a case for the phone charger / a charger for the phone case)
    subject    each side names a specific thing the other does not (Tokyo / Osaka)
    question   one side asks why, the other does not (why do you need my ID / what do
               you need to verify my ID): a reason is another answer than a procedure
    detail     one side names a detail the other lacks: a qualifier such as a room,
               a time of day, a date or period, a relation (living room speakers /
               speakers), or a rare word such as a name or title with no close
               counterpart (play Madonna / play Beyonce); see ``details.py``
    swap       only near the threshold (less than ``SWAP_MARGIN`` above it): each side
               has a content word the other lacks, common words included (a quiet bar /
               a busy bar, the nearest cinema / the closest cinema)

The last rule is the only one that reads the similarity. A swap of two common words is
either a synonym ("delete"/"remove", "nearest"/"closest") or another detail of the same
kind ("a quiet bar"/"a busy bar"), and the words alone cannot tell which; the rare-word
rule lets such swaps through, since most are synonyms. Where the embedder is least sure,
just above the threshold, the swap rule refuses them all: a candidate whose content
words differ on both sides must clear the threshold by ``SWAP_MARGIN``, one with the same
content words needs only the threshold. It refuses synonyms there too; the README
("Cache quality, measured") counts what that costs.

Before comparing, the wording is normalised so that spelling alone never refuses:
number words and digits ("four" = "4"), plurals, articles and contractions.

It reads text only, so it serves every embedder; data files in ``kallm/data``
(``opposites.txt``, ``entities.txt``, ``qualifiers.txt``) are plain lists anyone can
extend.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources

from kallm.cache import details

# every reason refusal_reason can give, in the order it checks them
REASONS = ("negation", "numbers", "opposite", "roles", "subject", "question", "detail", "swap")
# How far above the threshold a candidate must score when its content words differ on both
# sides. Chosen by cross-fitting on Banking77 and SNIPS (README, "Cache quality, measured").
SWAP_MARGIN = 0.02
_TOKEN = re.compile(
    r"\d+(?:[.,:]\d+)*(?:st|nd|rd|th)?%?|[a-z]+&[a-z]+|[a-z]+(?:\+\+|#|['’][a-z]+)?"
)
NEGATIONS = frozenset(
    (
        "not no non never without nobody nothing none neither nor cannot nowhere noone unable "
        "isnt dont doesnt didnt cant wont wouldnt shouldnt couldnt arent wasnt werent "
        "havent hasnt hadnt aint"
    ).split()
)
ROLE_MARKERS = frozenset(
    (
        "from to into onto than vs versus per by against toward towards via of before "
        "after as like match matches for"
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
_DIGIT = re.compile(r"\d")
_MONEY_ONE = re.compile(r"([$£€¥])\s?1(?![\d.,])")
_AMBIGUOUS_MONTHS = frozenset({"may", "march"})  # verbs too: dates only next to a number
_PREFIXES = ("un", "dis", "non", "in", "im", "il", "ir", "de")
# a negating prefix before a word of four letters or more ("non" is also tried as "no"+"n...")
_PREFIXED = re.compile(r"(un|dis|non|in|im|il|ir|de)([a-z']{4,})$")
# "the nineties" is "the 90s": a decade is a number (misspelt "fourties" included)
_DECADES = {
    w: str(10 * (i + 2))
    for i, w in enumerate(
        "twenties thirties forties fifties sixties seventies eighties nineties".split()
    )
} | {"fourties": "40", "ninties": "90"}
# "want to send" / "how to convert": here "to" starts a verb, it marks no role
_INFINITIVE_BEFORE = frozenset(
    (
        "want wants wanted wanna need needs needed like likes liked love would going trying "
        "try tried able unable how where what when which whether ought supposed used decided "
        "plan planning hope hoping wish order forgot remember have has had got time way easy "
        "hard possible safe best"
    ).split()
)
# verbs whose particle is the action: turn up / turn off, switch / switch off
_WH = frozenset({"what", "whats", "what's", "when", "where", "which", "who", "whom", "whose"})
_ASKING = _WH | {"how"}
_PHRASAL_VERBS = frozenset("turn switch power shut crank dial dim".split())
_PHRASAL_FORMS = frozenset(
    form for verb in _PHRASAL_VERBS for form in (verb, verb + "s", verb + "ed", verb + "ing")
) | {"shutting", "dimmed", "dimming", "powers"}
_PARTICLES = frozenset({"on", "off", "up", "down"})
_PARTICLE_REACH = 4  # "turn the kitchen lights off": the particle may follow the object
_NOT_DETAILS = (
    STOPWORDS
    | NEGATIONS
    | frozenset({*_UNITS, *_TENS, *_SCALES, *_ORDINALS, *_DECADES, "dozen", "first", "second"})
)
_NOT_CONTENT = STOPWORDS | NEGATIONS
_NUMBERISH = frozenset({*_UNITS, *_TENS, *_SCALES, *_ORDINALS, *_DECADES, *_MONTHS, "dozen"})


@dataclass(frozen=True, slots=True, eq=False)
class Wording:
    """What the guard needs to know about one text."""

    tokens: tuple[str, ...]
    negated: bool
    numbers: Counter[str]
    content: frozenset[str]
    roles: dict[str, frozenset[str]]
    labels: tuple[str, ...]
    entities: frozenset[tuple[str, int]]  # a multiset: "movie ... movie" / "movie ... film"
    proper: frozenset[str]
    words: dict[str, str]  # canonical content word -> as written, for the detail check
    qualifiers: frozenset[str]
    particles: Counter[str]
    asks: str  # "why", "amount" (how much / many), "how", "wh", "" (see _question)
    bases: frozenset[
        tuple[str, int]
    ]  # a multiset of the tokens as base forms of opposites.txt ("unlocked" -> "unlock")


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


@cache
def _entity_forms() -> dict[str, str]:
    """Entity as written -> one form for all its spellings: "lights" -> "light" when both
    are listed, so a plural on one side and the singular on the other is one subject."""
    names = entity_names()
    forms = {}
    for name in names:
        head, _, last = name.rpartition(" ")
        single = details.canonical(last)
        folded = f"{head} {single}" if head else single
        forms[name] = folded if folded in names else name
        joined = folded.replace(" ", "")
        if head and joined in names:  # "master card" is "mastercard"
            forms[name] = joined
    for name in names:  # "japans", "japan's": a plural or possessive names the entity too
        if len(name) > 1:
            for tail in ("s", "'s", "’s"):
                forms.setdefault(name + tail, forms[name])
    return forms


def _numbers(tokens: tuple[str, ...]) -> list[str]:
    """Numbers as canonical strings; a lone 1 is dropped since "a"/"an"/"one" all mean it."""
    if _NUMBERISH.isdisjoint(tokens) and not any(
        d in token for token in tokens for d in "0123456789"
    ):
        return []
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
        elif token in _DECADES:
            found.append(_DECADES[token])
        elif token in _ORDINALS:
            found.append(str(_ORDINALS[token]))
        elif token in _MONTHS and (token not in _AMBIGUOUS_MONTHS or _next_to_digit(tokens, i)):
            found.append(f"month{_MONTHS[token]}")
    flush()
    return [n for n in found if n != "1"]


def _all_numbers(tokens: tuple[str, ...], text: str) -> Counter[str]:
    """The numbers, with "$1" kept: an amount, not the "one" that "a"/"an" also say."""
    has_digit = _DIGIT.search(text) is not None
    if not has_digit and _NUMBERISH.isdisjoint(tokens):
        return Counter()
    found = Counter(_numbers(tokens))
    if "1" in text:
        found.update(f"{m.group(1)}1" for m in _MONEY_ONE.finditer(text))
    return found


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


@lru_cache(maxsize=16384)
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


_SYMMETRIC = frozenset({"and", "or", "plus", "&"})
_NUMBER_SYMMETRIC = frozenset({"times"})  # symmetric after a number only: "movie times"
_PHRASE_ENDS = ROLE_MARKERS | frozenset(
    "is are was were be been am do does did have has had will would can could should equal "
    "equals what which who how".split()
)


def _role_filler(tokens: tuple[str, ...], start: int) -> list[str] | None:
    """The words a marker governs: from the next one that is not a stopword or an -ly
    adverb, up to the next stopword or marker. All of them, not just the first, since in
    a compound the head comes last: "time for the movie schedule" / "the schedule for
    movie times" share "for movie" but ask for different things.

    None when it heads a coordination ("the sum of 15 and 27"): order is no role there.
    """
    for i in range(start, len(tokens)):
        token = tokens[i]
        if token in STOPWORDS or token in ROLE_MARKERS or (len(token) > 4 and token.endswith("ly")):
            continue
        if i + 1 < len(tokens) and _coordinates(token, tokens[i + 1]):
            return None
        return [_filler(t) for t in itertools.takewhile(_in_phrase, tokens[i:])]
    return None


def _coordinates(token: str, following: str) -> bool:
    """``following`` joins ``token`` to another word in either order ("15 and 27",
    "3 times 4"); "times" does so only after a number ("movie times" is a noun)."""
    if following in _SYMMETRIC:
        return True
    return following in _NUMBER_SYMMETRIC and (token[0].isdigit() or token in _NUMBERISH)


def _in_phrase(token: str) -> bool:
    return token not in STOPWORDS and token not in ROLE_MARKERS and token not in NEGATIONS


def _filler(token: str) -> str:
    return token if token[0].isdigit() else _normal(token)


def _roles(tokens: tuple[str, ...]) -> dict[str, frozenset[str]]:
    """Each role marker -> the words it governs. A marker before a question word ("for
    what reason", "from which card") marks none: the question phrase moves freely ("for
    what reason was it declined" / "what is the reason for the decline")."""
    roles: dict[str, set[str]] = {}
    for i, token in enumerate(tokens):
        if token == "to" and i > 0 and tokens[i - 1] in _INFINITIVE_BEFORE:
            continue
        if i + 1 < len(tokens) and tokens[i + 1] in _ASKING:
            continue
        if token in ROLE_MARKERS:
            fillers = _role_filler(tokens, i + 1)
            if fillers is not None:
                roles.setdefault(token, set()).update(fillers)
    return {marker: frozenset(words) for marker, words in roles.items()}


def _roles_swapped(a: Wording, b: Wording) -> bool:
    """Same words, but a marker both share governs other words, pronouns change case
    (I/me), or one-letter labels change places (type A to type O)."""
    if a.content != b.content:
        return False
    if any(_moved(a, b, m) for m in a.roles.keys() & b.roles.keys()):
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


def _moved(a: Wording, b: Wording, marker: str) -> bool:
    """The words ``marker`` governs changed places across it: "from Boston to Denver" /
    "from Denver to Boston", "celsius to fahrenheit" / "fahrenheit to celsius". Not a
    reordering that keeps each word on its side ("add to my playlist X this tune" /
    "add the tune to my X playlist")."""
    gained, lost = b.roles[marker] - a.roles[marker], a.roles[marker] - b.roles[marker]
    return bool(gained and lost) and (
        any(_elsewhere(a, marker, word) for word in gained)
        and any(_elsewhere(b, marker, word) for word in lost)
    )


def _elsewhere(w: Wording, marker: str, word: str) -> bool:
    """``word`` stands outside the phrase ``marker`` opens in ``w``: before it, in another
    marker's role, or past a verb that ends the phrase ("of 80 is 20": 20 is not of)."""
    if any(word in words for m, words in w.roles.items() if m != marker):
        return True
    first = w.tokens.index(marker)
    phrase_end = next(
        (i for i in range(first + 1, len(w.tokens)) if w.tokens[i] in _PHRASE_ENDS),
        len(w.tokens),
    )
    outside = w.tokens[:first] + w.tokens[phrase_end:]
    return any(_normal(t) == word or t == word for t in outside)


def _labels(text: str) -> tuple[str, ...]:
    """One-letter capitals that name things (blood type A, plan B), not "I" or a leading "A"."""
    if text[1:] == text[1:].lower():
        return ()
    return tuple(m.group(1) for m in re.finditer(r"(?<!^)\b([A-HJ-Z])\b", text.strip()))


@cache
def _entity_starts() -> frozenset[str]:
    """First words of the entities of two or three words: no other word starts one."""
    return frozenset(name.split(" ", 1)[0] for name in entity_names() if " " in name)


def _entities(tokens: tuple[str, ...]) -> list[str]:
    """Named things, found as written or with a plural or possessive folded ("japan's"),
    as often as they occur."""
    forms, starts = _entity_forms(), _entity_starts()
    found = [forms[t] for t in tokens if t in forms]
    if starts.isdisjoint(tokens):
        return found
    for i, token in enumerate(tokens):
        for n in (2, 3) if token in starts else ():
            if i + n <= len(tokens):
                name = forms.get(" ".join(tokens[i : i + n]))
                if name is not None:
                    found.append(name)
    return found


# a capitalised word, or an acronym (UK, AMC), that does not start a sentence
_PROPER = re.compile(r"(?<![.!?]\s)(?<!^)\b([A-Z][a-z]+|[A-Z]{2,5})\b")


def _proper_nouns(text: str) -> frozenset[str]:
    """Capitalised words that do not start a sentence: names the user typed as names."""
    if text[1:] == text[1:].lower():
        return frozenset()
    found = set()
    for match in _PROPER.finditer(text.strip()):
        if match.group(1) != "I":
            found.add(match.group(1).lower())
    return frozenset(found)


@lru_cache(maxsize=4096)
def wording(text: str) -> Wording:
    """What the guard reads in ``text``, parsed once (cached: a candidate is usually
    compared again, and a query meets up to four candidates)."""
    lowered = text.lower()
    tokens = tuple(_TOKEN.findall(lowered))
    if "n't" in lowered or "n’t" in lowered:
        tokens = tuple("not" if t.endswith(("n't", "n’t")) else t for t in tokens)
    content = frozenset(
        map(_normal, [t for t in tokens if t not in _NOT_CONTENT and not t[0].isdigit()])
    )
    spelt = _spelt_out(tokens) if "'" in lowered or "’" in lowered else tokens
    forms = tuple(map(details.canonical, spelt))
    return Wording(
        tokens=tokens,
        negated=not NEGATIONS.isdisjoint(tokens),
        numbers=_all_numbers(tokens, text),
        content=content,
        roles=_roles(tokens),
        labels=_labels(text),
        entities=_occurrences(_entities(tokens)),
        proper=_proper_nouns(text),
        words=_detail_words(spelt, forms),
        qualifiers=details.qualifiers(forms),
        particles=_particles(tokens),
        asks=_question(tokens),
        bases=_occurrences(map(_opposites()[0].get, tokens, tokens)),
    )


def _occurrences(items: Iterable[str]) -> frozenset[tuple[str, int]]:
    """A multiset as a set of (item, how many times seen before), so that multiset
    differences are plain set differences: "in ... in" / "in" differ by ("in", 1)."""
    items = list(items)
    if len(set(items)) == len(items):  # the usual case: no item twice
        return frozenset(zip(items, itertools.repeat(0)))
    seen: dict[str, int] = {}
    found = []
    for item in items:
        count = seen.get(item, 0)
        seen[item] = count + 1
        found.append((item, count))
    return frozenset(found)


def _question(tokens: tuple[str, ...]) -> str:
    """What kind of answer is asked for, where the kind changes the answer: a reason
    ("why", "how come"), an amount ("how much", "how many"), a way ("how do I", "how
    to"), another wh-question ("wh": what, when, where, which, who); "" for statements,
    yes/no questions and commands."""
    if "why" in tokens:
        return "why"
    for word, after in itertools.pairwise((*tokens, "")):
        if word == "how":
            if after == "come":
                return "why"
            return "amount" if after in ("much", "many") else "how"
        if word in _WH:
            return "wh"
    return ""


def _questions_differ(a: Wording, b: Wording) -> bool:
    """Both sides ask, but for another kind of answer: a reason against a fact or a way
    ("why do you need to verify my identity" / "what do you need to verify my identity"),
    an amount against a way ("how much can I top up" / "how can I top up"). A statement
    and a why-question about the same problem ("my card was declined" / "why was my card
    declined") ask the same thing, so a side that does not ask never differs."""
    kinds = {a.asks, b.asks}
    if "" in kinds or len(kinds) == 1:
        return False
    return "why" in kinds or kinds == {"how", "amount"}


def _spelt_out(tokens: tuple[str, ...]) -> tuple[str, ...]:
    """The tokens with contractions spelt out ("i'd" -> "i", "would"; "what's" -> "what")."""
    return tuple(w for t in tokens for w in details.contraction_words(t) if w)


def _detail_words(words: tuple[str, ...], forms: tuple[str, ...]) -> dict[str, str]:
    """Content words in one spelling (``forms``) -> as written; numbers, negations and
    function words are left to their own checks."""
    found: dict[str, str] = {}
    for word, form in zip(words, forms, strict=True):
        if word in _NOT_DETAILS or form in STOPWORDS or word[0].isdigit():
            continue
        found.setdefault(form, word)
    return found


def _particles(tokens: tuple[str, ...]) -> Counter[str]:
    """The particle of each phrasal verb ("turn ... off" -> "off"; a bare "switch" -> "")."""
    found: Counter[str] = Counter()
    if _PHRASAL_FORMS.isdisjoint(tokens):
        return found
    for i, token in enumerate(tokens):
        if token in _PHRASAL_FORMS:
            following = tokens[i + 1 : i + 1 + _PARTICLE_REACH]
            found[next((t for t in following if t in _PARTICLES), "")] += 1
    return found


def _particle_flips(a: Wording, b: Wording) -> bool:
    """Both sides use a phrasal verb, and its particles differ (turn up / turn off)."""
    return bool(a.particles) and bool(b.particles) and a.particles != b.particles


def _opposed(a: Wording, b: Wording) -> bool:
    """One side has one half of an opposing pair, the other side the other half.

    Words are compared as base forms and as multisets, so "unlocked"/"unlock" is the
    same word, and "check-in ... in Rome" / "check-out ... in Rome" differ by one "in".
    """
    _, opposed = _opposites()
    only_a = {word for word, _ in a.bases - b.bases}
    only_b = {word for word, _ in b.bases - a.bases}
    if not only_a or not only_b:
        return False
    for word in only_a:
        opposites = opposed.get(word)
        if opposites and not opposites.isdisjoint(only_b):
            return True
    return _prefixed(only_a, only_b) or _prefixed(only_b, only_a)


def _prefixed(words: set[str], others: set[str]) -> bool:
    """A word of ``words`` is a word of ``others`` with a negating prefix (lock/unlock)."""
    for word in words:
        match = _PREFIXED.match(word)
        if match and match.group(2) in others:
            return True
    return False


def _distinct_on_both_sides(a: frozenset[str], b: frozenset[str]) -> bool:
    return bool(a - b) and bool(b - a)


def refusal_reason(
    query: str,
    candidate: str,
    similarity: float = 1.0,
    threshold: float | None = None,
    *,
    margin: float = SWAP_MARGIN,
) -> str | None:
    """Why ``candidate``'s answer must not serve ``query``, or None when it may.

    ``similarity`` is the candidate's score and ``threshold`` the one it is measured from
    (None, the default: the wording alone decides). A candidate less than ``margin`` above
    the threshold is refused for a swap of content words too (see the module docstring).
    """
    a, b = wording(query), wording(candidate)
    opposed = _opposed(a, b)
    if a.negated != b.negated and not opposed:  # "not correct" / "wrong" say the same
        return "negation"
    if a.numbers != b.numbers:
        return "numbers"
    if (opposed or _particle_flips(a, b)) and a.negated == b.negated:
        return "opposite"
    if _roles_swapped(a, b):
        return "roles"
    if _distinct_on_both_sides(a.entities, b.entities) or _distinct_on_both_sides(
        a.proper - b.content, b.proper - a.content
    ):
        return "subject"
    if _questions_differ(a, b):
        return "question"
    if details.detail_differs(a.words, b.words, a.qualifiers, b.qualifiers, a.proper | b.proper):
        return "detail"
    if threshold is not None and similarity < threshold + margin and _swapped(a, b):
        return "swap"
    return None


def _swapped(a: Wording, b: Wording) -> bool:
    """Each side has a content word the other lacks once spelling is set aside: plurals,
    a word written together or apart (groove shark/grooveshark), inflections
    (showing/show), British spelling (neighbourhood/neighborhood). Synonyms do not count
    as the same word here: near the threshold they are what the rule is for."""
    only_a, only_b = a.words.keys() - b.words.keys(), b.words.keys() - a.words.keys()
    if not only_a or not only_b:  # the usual case: nothing to look at
        return False
    only_a = details.unmatched(a.words, b.words).keys()
    only_b = details.unmatched(b.words, a.words).keys()
    if not only_a or not only_b:
        return False
    stems_a, stems_b = set(map(_stem, a.words)), set(map(_stem, b.words))
    return any(_stem(w) not in stems_b for w in only_a) and any(
        _stem(w) not in stems_a for w in only_b
    )


@lru_cache(maxsize=16384)
def _stem(word: str) -> str:
    """A content word with inflection and British spelling set aside."""
    return _normal(details.american(word))


hit_guard = refusal_reason
