"""Core speed of kallm: what the proxy adds to a call, what a hit costs, what a lookup costs.

A semantic cache is only worth putting in front of an LLM if a miss costs next to
nothing extra and a hit is far cheaper than the call it replaces. So this measures,
in one run, against a fake upstream that answers instantly:

1. a direct call to the upstream (the baseline every other cell is compared with);
2. the same call through ``scripts/bare_relay.py`` (the floor for any Python proxy);
3. kallm with ``--entries`` answers already cached: misses (every prompt new, so it
   is embedded, searched, relayed and stored), exact hits and paraphrase hits;
4. ``SemanticCache.lookup`` alone, in-process (exact tier, embed, search, guard), at
   each ``--lookup-sizes`` cache size, with the CPU caches warm and flushed.

Each server runs in its own process so the load generator (an aiohttp client in
this process) does not share their event loop; the machine is shared, though, so
at concurrency 32 the client, the upstream and the proxy compete for the cores,
and anything else running on the machine shows up in the figures. Cells run in
interleaved rounds so such drift spreads over all of them. Overhead is reported
as peers report it: p50 through the proxy minus p50 direct.

    python scripts/bench_core.py                 # full run, about a minute or two
    python scripts/bench_core.py --quick         # smoke run, under 20 s
    python scripts/bench_core.py --concurrency 1,8,32 --json bench-results/c8.json
    python scripts/bench_core.py --kallm-env OPENBLAS_NUM_THREADS=1   # A/B one setting
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import signal
import string
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from rich.console import Console
from rich.table import Table

from kallm.cache.scope import CacheKey, cache_key
from kallm.cache.semantic import HitGuard, SemanticCache
from kallm.cache.store import Entry, MemoryBackend
from kallm.embed import Embedder, local_embedder

ROOT = Path(__file__).resolve().parent.parent
MODEL = "gpt-4o-mini"
SYSTEM_PROMPT = "You are a helpful assistant. Answer concisely."
API_KEY = "sk-bench"
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
TTL = 24 * 3600.0
EVICT_BYTES = 64 * 1024 * 1024  # streamed through the CPU caches before a "cold" lookup
COLD_LOOKUPS = 300
SERVE_KALLM = "--serve-kallm"  # hidden: this script re-runs itself as the kallm process

# ------------------------------------------------------------------ prompts
# Templated but varied prompts: each template has a canonical wording (what gets
# cached) and a paraphrase (what a second user would type), filled from word lists
# large enough for 100,000+ distinct prompts. Realistic near-neighbours matter:
# a lookup's cost and a miss's chance of a false hit both depend on them.

SLOTS: dict[str, tuple[str, ...]] = {
    "task": ("read a CSV file", "parse JSON", "sort a list of dictionaries by a key",
             "reverse a string", "make an HTTP request", "write unit tests", "handle exceptions",
             "merge two dictionaries", "remove duplicates from a list", "format a date",
             "read environment variables", "spawn a background thread", "hash a password",
             "connect to a PostgreSQL database", "generate a random number",
             "split a string on whitespace", "check if a file exists", "deep copy an object",
             "time how long a function takes", "read a large file line by line",
             "convert a string to an integer", "serialise an object to JSON", "define an enum",
             "use regular expressions", "profile memory usage", "zip a folder", "send an email",
             "schedule a recurring job", "parse command-line arguments", "retry a failed call"),
    "lang": ("Python", "JavaScript", "TypeScript", "Go", "Rust", "Java", "C#", "Ruby", "PHP",
             "Kotlin", "Swift", "C++", "Bash", "Elixir", "Scala"),
    "pair": ("a list and a tuple", "a process and a thread", "an interface and an abstract class",
             "a mutex and a semaphore", "TCP and UDP", "a stack and a queue", "== and is",
             "composition and inheritance", "async and threads", "a map and a set",
             "pass by value and pass by reference", "a shallow and a deep copy",
             "static and dynamic typing", "a compiler and an interpreter", "SQL and NoSQL"),
    "concept": ("recursion", "public-key cryptography", "inflation", "photosynthesis",
                "black holes", "compound interest", "natural selection", "the blockchain",
                "machine learning", "quantum entanglement", "supply and demand", "vaccines",
                "plate tectonics", "the greenhouse effect", "neural networks", "DNS",
                "garbage collection", "the stock market", "general relativity", "the immune system",
                "climate change", "democracy", "opportunity cost", "entropy", "CRISPR",
                "the water cycle", "interest rates", "Bayes' theorem", "the Doppler effect",
                "big-O notation", "monads", "the placebo effect", "tides", "rainbows", "jet lag",
                "the French Revolution", "index funds", "containerisation", "OAuth",
                "load balancing"),
    "audience": ("a five-year-old", "a high-school student", "my grandmother", "a new employee",
                 "a software engineer", "a complete beginner", "a busy executive",
                 "a university student", "a retired teacher", "a ten-year-old"),
    "n": ("2", "3", "4", "5", "6", "7"),
    "form": ("poem", "short story", "blog post", "limerick", "haiku", "speech", "song",
             "product description", "LinkedIn post", "newsletter intro"),
    "topic": ("autumn in the city", "a lost umbrella", "working from home",
              "the first day of school", "a lighthouse keeper", "learning to cook",
              "a rainy Monday", "electric cars",
              "a retirement party", "moving to a new country", "the ocean at night", "coffee",
              "friendship", "a broken phone", "running a marathon", "urban gardening", "cats",
              "the last train home", "a summer festival", "remote teams", "a haunted library",
              "saving money", "a mountain hike", "space travel", "a small bakery", "recycling",
              "jazz", "a chess tournament", "winter mornings", "a wedding toast", "time travel",
              "a family road trip", "open source", "a thunderstorm", "the night sky", "gratitude",
              "a new puppy", "city cycling", "a farmers market", "an old bookshop"),
    "tone": ("funny", "serious", "warm", "formal", "playful", "melancholic", "inspiring", "dry"),
    "days": ("3", "4", "5", "6", "7", "8", "10"),
    "city": ("Paris", "Lisbon", "Tokyo", "Kyoto", "New York", "Mexico City", "Buenos Aires",
             "Cape Town", "Marrakesh", "Istanbul", "Rome", "Barcelona", "Prague", "Vienna",
             "Berlin", "Copenhagen", "Reykjavik", "Edinburgh", "Dublin", "Amsterdam", "Seoul",
             "Bangkok", "Hanoi", "Singapore", "Sydney", "Auckland", "Vancouver", "Montreal",
             "Chicago", "San Francisco", "Lima", "Cusco", "Havana", "Cairo", "Nairobi", "Mumbai",
             "Kathmandu", "Bali", "Athens", "Budapest"),
    "month": ("January", "February", "March", "April", "May", "June", "July", "August",
              "September", "October", "November", "December"),
    "group": ("a couple", "a family with two kids", "a solo traveller", "four friends",
              "retired parents", "a student on a gap year"),
    "budget": ("800", "1,000", "1,500", "2,000", "2,500", "3,000", "4,000", "5,000"),
    "ingredient": ("chicken", "rice", "eggs", "spinach", "tomatoes", "chickpeas", "tofu", "pasta",
                   "mushrooms", "potatoes", "salmon", "lentils", "feta", "courgettes", "onions",
                   "peppers", "beef mince", "coconut milk", "broccoli", "sweet potatoes", "prawns",
                   "halloumi", "black beans", "cauliflower", "leeks", "bacon", "quinoa", "carrots",
                   "avocado", "noodles"),
    "activity": ("public speaking", "saving for a house", "learning Spanish", "sleeping better",
                 "running a first 10k", "negotiating a raise", "studying for exams",
                 "growing tomatoes", "taking better photos", "writing a CV", "staying focused",
                 "cooking on a budget", "starting a podcast", "job interviews", "meal prepping",
                 "learning guitar", "reducing screen time", "managing stress", "making friends",
                 "keeping houseplants alive", "code reviews", "remote work", "travelling light",
                 "reading more books", "waking up early", "decluttering", "learning to swim",
                 "managing a team", "writing fiction", "paying off debt"),
    "person": ("student", "parent", "beginner", "retiree", "freelancer", "manager", "nurse",
               "developer", "teacher", "night-shift worker", "introvert", "small business owner"),
    "phrase": ("Where is the train station?", "I would like a coffee, please.",
               "How much does this cost?", "Thank you for your help.", "I am allergic to nuts.",
               "Can I pay by card?", "What time does the museum open?", "I am lost.",
               "Nice to meet you.", "The bill, please.", "Do you speak English?",
               "I have a reservation.", "Where is the nearest pharmacy?", "Happy birthday!",
               "See you tomorrow.", "I need a doctor.", "Is this seat taken?", "Good morning!",
               "How are you?", "My flight is delayed.", "Could you repeat that?",
               "I don't understand.", "Where can I buy a ticket?", "It is very cold today.",
               "What do you recommend?", "Please call a taxi.", "Congratulations!",
               "I'm looking for a hotel.", "Turn left at the corner.", "Have a good weekend."),
    "language": ("French", "Spanish", "German", "Italian", "Portuguese", "Japanese", "Korean",
                 "Mandarin", "Dutch", "Swedish", "Turkish", "Greek", "Polish", "Arabic", "Hindi"),
    "device": ("laptop", "phone", "printer", "router", "smart TV", "dishwasher", "washing machine",
               "car", "tablet", "bluetooth speaker", "fridge", "monitor", "keyboard", "headphones",
               "coffee machine"),
    "problem": ("won't turn on", "keeps restarting", "is very slow", "makes a clicking noise",
                "won't connect to Wi-Fi", "overheats", "shows an error code", "drains its battery",
                "has no sound", "freezes randomly", "is leaking water", "won't charge",
                "shows a blank screen", "smells like burning", "beeps three times",
                "disconnects every few minutes", "won't update", "is stuck in a boot loop",
                "flickers", "won't pair"),
    "recipient": ("landlord", "manager", "team", "child's teacher", "neighbour", "client",
                  "bank", "doctor", "professor", "colleague", "insurance company", "plumber"),
    "subject": ("a late payment", "a broken heater", "taking Friday off", "a missed deadline",
                "a noise complaint", "rescheduling our meeting", "a refund", "a project update",
                "a pay rise", "a mistake on my invoice", "my resignation", "a new proposal",
                "a school trip", "a delivery that never arrived", "working remotely",
                "a conference invitation", "a leaking roof", "a contract renewal",
                "a thank-you for their help", "a complaint about service", "an introduction",
                "a budget increase", "the holiday schedule", "a job reference", "a price quote",
                "a cancelled order", "parking spaces", "a security incident",
                "onboarding a new hire", "the quarterly results"),
    "event": ("the French Revolution", "World War I", "the fall of the Roman Empire",
              "the 2008 financial crisis", "the Industrial Revolution", "the Cold War",
              "the Black Death", "the Protestant Reformation", "the American Civil War",
              "the collapse of the Soviet Union", "the Great Depression", "the printing press",
              "the Meiji Restoration", "the partition of India", "the Dust Bowl",
              "the fall of the Berlin Wall", "the Cuban Missile Crisis", "the Opium Wars",
              "the Renaissance", "the Arab Spring", "the moon landing", "the Suez Crisis",
              "the Irish potato famine", "the Haitian Revolution", "the Spanish flu",
              "the dot-com bubble", "Brexit", "the Russian Revolution", "the Reconquista",
              "the Crusades"),
    "genre": ("science fiction", "fantasy", "mystery", "historical fiction", "non-fiction",
              "thriller", "romance", "horror", "biography", "poetry", "graphic novel",
              "literary fiction", "travel writing", "popular science", "young adult"),
    "book": ("Dune", "The Hobbit", "Pride and Prejudice", "Sapiens", "The Martian", "1984",
             "Gone Girl", "The Name of the Wind", "Educated", "Project Hail Mary", "Circe",
             "The Road", "Becoming", "Neuromancer", "Rebecca", "The Secret History",
             "Thinking, Fast and Slow", "The Night Circus", "Station Eleven", "Atomic Habits",
             "Jane Eyre", "The Goldfinch", "Normal People", "Foundation", "Dracula",
             "The Left Hand of Darkness", "A Gentleman in Moscow", "Piranesi", "Klara and the Sun",
             "The Three-Body Problem"),
    "choice": ("renting", "buying a house", "an electric car", "a standing desk", "a gap year",
               "freelancing", "a four-day week", "a credit card", "homeschooling", "solar panels",
               "a heat pump", "index funds", "a mechanical keyboard", "moving abroad",
               "a second monitor", "a dog", "a gym membership", "a MacBook", "Kubernetes",
               "microservices", "a monorepo", "a part-time MBA", "learning Rust",
               "a cargo bike", "a co-working space"),
    "situation": ("a young family", "a student", "a small startup", "a retiree",
                  "someone living in a city", "a remote worker", "a first-time buyer",
                  "a team of five", "someone on a tight budget", "a frequent traveller",
                  "a freelancer", "a large company", "someone with a long commute",
                  "a new graduate", "a single parent"),
    "habit": ("drink coffee", "eat eggs", "run", "take a cold shower", "drink green tea",
              "eat dark chocolate", "skip breakfast", "take vitamin D", "meditate",
              "eat bananas", "drink sparkling water", "do push-ups", "walk 10,000 steps",
              "eat peanut butter", "take a nap", "drink milk", "stretch", "eat oatmeal",
              "use a sauna", "drink lemon water", "eat spicy food", "do yoga", "fast until noon",
              "eat nuts", "chew gum", "drink kombucha", "swim", "eat rice", "lift weights",
              "drink a smoothie"),
    "weeks": ("4", "6", "8", "10", "12", "16"),
    "sport": ("running", "cycling", "swimming", "strength", "triathlon", "rowing", "climbing",
              "tennis", "football", "hiking"),
    "level": ("beginner", "intermediate athlete", "returning runner", "complete novice"),
    "train": ("2", "3", "4", "5", "6"),
}


@dataclass(frozen=True, slots=True)
class Template:
    """One kind of request, worded as the first user asked it and as a second user would."""

    canonical: str
    paraphrase: str

    @property
    def fields(self) -> list[str]:
        return [name for _, name, _, _ in string.Formatter().parse(self.canonical) if name]


TEMPLATES: tuple[Template, ...] = (
    Template("How do I {task} in {lang}?", "In {lang}, how can I {task}?"),
    Template("What is the difference between {pair} in {lang}?",
             "In {lang}, what's the difference between {pair}?"),
    Template("Explain {concept} to {audience} in {n} sentences.",
             "Can you explain {concept} to {audience} in {n} sentences?"),
    Template("Write a {form} about {topic} for {audience}, in a {tone} tone.",
             "Please write a {tone} {form} about {topic} for {audience}."),
    Template("Plan a {days}-day trip to {city} in {month} for {group} on a budget of "
             "{budget} dollars.",
             "Can you plan {group} a {days}-day trip to {city} in {month}? "
             "Budget: {budget} dollars."),
    Template("What can I cook for dinner with {ingredient1}, {ingredient2} and {ingredient3}?",
             "What could I make for dinner using {ingredient1}, {ingredient2} and {ingredient3}?"),
    Template("Give me {n} tips for {activity} as a {person}.",
             "What are your {n} best tips for {activity} as a {person}?"),
    Template('Translate "{phrase}" into {language}.', 'How do you say "{phrase}" in {language}?'),
    Template("My {device} {problem}. What should I try first?",
             "What should I try first? My {device} {problem}."),
    Template("Draft a short email to my {recipient} about {subject}.",
             "Write a short email to my {recipient} regarding {subject}."),
    Template("Summarise the causes and consequences of {event}.",
             "What were the causes and consequences of {event}? Summarize them."),
    Template("Recommend {n} {genre} books for someone who liked {book}.",
             "I liked {book}. Can you recommend {n} {genre} books?"),
    Template("What are the pros and cons of {choice} for {situation}?",
             "For {situation}, what are the advantages and disadvantages of {choice}?"),
    Template("Is it healthy to {habit} every day?", "Is it good for my health to {habit} daily?"),
    Template("Create a {weeks}-week {sport} training plan for a {level} who can train "
             "{train} days a week.",
             "I'm a {level} and can train {train} days a week: make me a {weeks}-week "
             "{sport} training plan."),
)


@dataclass(frozen=True, slots=True)
class Prompt:
    """A user prompt as cached (``text``) and a paraphrase of it."""

    text: str
    paraphrase: str


def corpus(count: int, seed: int = 7) -> list[Prompt]:
    """The first ``count`` distinct prompts of a fixed pseudo-random stream.

    Deterministic, and every prefix is the same whatever ``count`` is, so the kallm
    process and this one agree on which prompts are cached without sharing data.
    Templates are drawn in proportion to how many prompts they can make, capped
    (variety without the largest swamping the rest), and retired once they keep
    repeating themselves. Numbered slots (``ingredient1..3``) draw
    distinct words from one list.
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    prompts: list[Prompt] = []
    plans = [(t, t.fields) for t in TEMPLATES]
    weights = [min(5000.0, math.prod(len(SLOTS[n.rstrip("0123456789")]) for n in names))
               for _, names in plans]
    repeats = [0] * len(plans)
    while len(prompts) < count:
        if not any(weights):
            raise ValueError(f"the templates cannot make {count} distinct prompts")
        choice = rng.choices(range(len(plans)), weights)[0]
        template, names = plans[choice]
        values: dict[str, str] = {}
        for base in dict.fromkeys(name.rstrip("0123456789") for name in names):
            numbered = sorted(n for n in names if n.rstrip("0123456789") == base)
            if len(numbered) == 1:
                values[numbered[0]] = rng.choice(SLOTS[base])
                continue
            for name, word in zip(numbered, rng.sample(SLOTS[base], len(numbered)), strict=True):
                values[name] = word
        text = template.canonical.format(**values)
        if text in seen:
            repeats[choice] += 1
            if repeats[choice] >= 50:
                weights[choice] = 0.0
            continue
        repeats[choice] = 0
        seen.add(text)
        prompts.append(Prompt(text, template.paraphrase.format(**values)))
    return prompts


def chat_request(text: str) -> dict[str, Any]:
    """The body every cell sends: same model, system prompt and params, so one cache scope."""
    return {"model": MODEL, "temperature": 0,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                         {"role": "user", "content": text}]}


def encoded_request(text: str) -> bytes:
    return json.dumps(chat_request(text)).encode()


def completion_body(text: str, index: int) -> bytes:
    """A chat.completion like the fake upstream's, for entries put straight into the cache."""
    content = f"Answer to: {text}"
    prompt_tokens = len(SYSTEM_PROMPT.split()) + len(text.split())
    completion_tokens = len(content.split())
    return json.dumps({
        "id": f"chatcmpl-prefill{index:012d}", "object": "chat.completion",
        "created": 1_700_000_000, "model": MODEL, "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": content, "refusal": None}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }, separators=(",", ":")).encode()


# ------------------------------------------------------------------ filling a cache

async def embed_texts(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    """One vector per text, through the same ``embed`` call the request path uses."""
    vectors = np.empty((len(texts), embedder.dim), dtype=np.float32)
    for i, text in enumerate(texts):
        vectors[i] = await embedder.embed(text)
    return vectors


def keys_of(texts: Sequence[str], namespace: str = "") -> list[CacheKey]:
    """The cache keys kallm derives for these prompts sent as ``chat_request`` bodies."""
    return [cache_key(chat_request(text), namespace) for text in texts]


def fill(backend: MemoryBackend, keys: Sequence[CacheKey], vectors: np.ndarray,
         texts: Sequence[str]) -> None:
    """Put entries straight into the backend: what thousands of earlier misses would leave."""
    now = time.time()
    for i, (key, text) in enumerate(zip(keys, texts, strict=True)):
        body = completion_body(text, i)
        backend.add(Entry(key.scope, key.exact, key.text, vectors[i], body, now, now + TTL,
                          cost_usd=0.00002, tokens=40))


# ------------------------------------------------------------------ the kallm process

async def serve_kallm(upstream: str, entries: int, seed: int, embedder_name: str) -> None:
    """Run kallm as ``kallm serve`` would (no access log, log level warning), pre-filled.

    Prints one JSON line (URL, embedder, threshold, entries) once it listens, then
    serves until SIGTERM. Logging stays at warning: an INFO line per request would
    measure the terminal, not the proxy.
    """
    from kallm.config import Settings
    from kallm.server import RUNTIME, create_app
    from kallm.server.log import configure_logging

    configure_logging(False, "warning")
    settings = Settings(
        upstream_base_url=upstream, upstream_api_key=API_KEY, cache_file=None,
        # Room for every miss the run stores, so none evicts an entry a hit cell asks for.
        snapshot_interval=0, max_cache_size=max(1_000_000, entries * 2),
        embedding_model=embedder_name, log_level="warning",
    )
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
    await runner.setup()
    cache = app[RUNTIME].cache
    backend = cache.backend
    assert isinstance(backend, MemoryBackend)
    started = time.perf_counter()
    prompts = corpus(entries, seed)
    keys = keys_of([p.text for p in prompts])
    vectors = await embed_texts(cache.embedder, [k.text or "" for k in keys])
    fill(backend, keys, vectors, [p.text for p in prompts])
    prefill_seconds = time.perf_counter() - started
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(json.dumps({"url": f"http://127.0.0.1:{port}/v1", "embedder": cache.embedder.name,
                      "threshold": cache.threshold, "entries": len(backend),
                      "prefill_seconds": round(prefill_seconds, 2)}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


# ------------------------------------------------------------------ child processes

@dataclass
class Child:
    """A server this script started; stopped by its own PID only."""

    name: str
    process: asyncio.subprocess.Process
    first_line: str
    log: Path
    drain: asyncio.Task[None] | None = None


async def spawn(name: str, args: Sequence[str], log_dir: Path, timeout: float = 120,
                extra_env: dict[str, str] | None = None) -> Child:
    """Start a server and wait for its first stdout line (its URL, or a JSON description)."""
    log = log_dir / f"{name}.log"
    env = {**os.environ, "KALLM_LOG_LEVEL": "warning", "PYTHONUNBUFFERED": "1",
           **(extra_env or {})}
    log.write_bytes(b"")
    with log.open("ab") as stderr:  # append mode: stdout is copied into the same file
        process = await asyncio.create_subprocess_exec(
            sys.executable, *args, cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=stderr,
        )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), timeout)
    except TimeoutError:
        line = b""
    if not line:
        await stop_child(Child(name, process, "", log))
        raise RuntimeError(f"{name} did not start; its stderr is in {log}:\n"
                           + log.read_text(errors="replace")[-2000:])
    # Keep reading stdout into the log: kallm's rich log handler writes to stdout, and a
    # full pipe would block the server mid-benchmark.
    drain = asyncio.create_task(_copy(process.stdout, log))
    return Child(name, process, line.decode().strip(), log, drain)


async def _copy(stream: asyncio.StreamReader, path: Path) -> None:
    with path.open("ab") as sink:
        while chunk := await stream.read(65536):
            sink.write(chunk)
            sink.flush()


async def _started(child: Child) -> Child:
    """An already running child as a task, so every child is stopped the same way."""
    return child


async def stop_child(child: Child) -> None:
    if child.process.returncode is None:
        child.process.terminate()
        try:
            await asyncio.wait_for(child.process.wait(), 10)
        except TimeoutError:
            child.process.kill()
            await child.process.wait()
    if child.drain is not None:
        await child.drain


# ------------------------------------------------------------------ load generation

@dataclass
class Sample:
    """What one batch of requests saw."""

    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    errors: int = 0
    truncated: bool = False
    cache: Counter[str] = field(default_factory=Counter)
    similarities: list[float] = field(default_factory=list)
    first_error: str | None = None


async def drive(session: aiohttp.ClientSession, url: str, bodies: Sequence[bytes],
                concurrency: int, headers: dict[str, str], deadline: float) -> Sample:
    """Send every body once from ``concurrency`` workers; each request timed end to end."""
    sample = Sample()
    indices: Iterator[int] = iter(range(len(bodies)))  # shared: each body is sent once

    async def worker() -> None:
        for i in indices:
            if time.monotonic() > deadline:
                sample.truncated = True
                return
            started = time.perf_counter()
            try:
                async with session.post(url, data=bodies[i], headers=headers) as response:
                    body = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                sample.errors += 1
                sample.first_error = sample.first_error or repr(exc)
                continue
            sample.latencies.append(time.perf_counter() - started)
            if response.status != 200:
                sample.errors += 1
                sample.first_error = sample.first_error or f"{response.status} {body[:300]!r}"
            sample.cache[response.headers.get("X-Kallm-Cache", "-")] += 1
            similarity = response.headers.get("X-Kallm-Similarity")
            if similarity is not None:
                sample.similarities.append(float(similarity))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(bodies)))))
    sample.elapsed = time.perf_counter() - started
    return sample


async def run_batch(url: str, warmup: Sequence[bytes], measured: Sequence[bytes],
                    concurrency: int, headers: dict[str, str], time_limit: float) -> Sample:
    """Warm the connections and code paths, then measure; one client pool of ``concurrency``."""
    deadline = time.monotonic() + time_limit
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await drive(session, url, warmup, concurrency, headers, deadline)
        return await drive(session, url, measured, concurrency, headers, deadline)


@dataclass
class Cell:
    """One (target, concurrency) pair, pooled over rounds."""

    name: str
    concurrency: int
    expect: str | None  # the X-Kallm-Cache value every answer should carry
    rounds: list[Sample] = field(default_factory=list)

    @property
    def latencies_ms(self) -> np.ndarray:
        return np.array([x for s in self.rounds for x in s.latencies]) * 1000

    def p(self, q: float) -> float:
        values = self.latencies_ms
        return float(np.percentile(values, q)) if len(values) else float("nan")

    def last_p50(self) -> float:
        latest = self.rounds[-1].latencies if self.rounds else []
        return float(np.median(latest)) * 1000 if latest else float("nan")

    @property
    def rps(self) -> float:
        elapsed = sum(s.elapsed for s in self.rounds)
        return sum(len(s.latencies) for s in self.rounds) / elapsed if elapsed else 0.0

    @property
    def unexpected(self) -> int:
        """Answers whose cache header was not the one this cell is about (e.g. a MISS in 'hit')."""
        if self.expect is None:
            return 0
        return sum(n for value, n in self.cache.items() if value != self.expect)

    @property
    def cache(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for s in self.rounds:
            total.update(s.cache)
        return total

    def to_json(self) -> dict[str, Any]:
        sims = [x for s in self.rounds for x in s.similarities]
        if not len(self.latencies_ms):
            return {"name": self.name, "concurrency": self.concurrency, "requests": 0,
                    "skipped": True, "errors": sum(s.errors for s in self.rounds),
                    "first_error": next((s.first_error for s in self.rounds if s.first_error),
                                        None)}
        return {
            "name": self.name, "concurrency": self.concurrency,
            "requests": len(self.latencies_ms), "rps": round(self.rps, 1),
            "p50_ms": round(self.p(50), 3), "p90_ms": round(self.p(90), 3),
            "p99_ms": round(self.p(99), 3), "mean_ms": round(float(self.latencies_ms.mean()), 3),
            "p50_ms_by_round": [round(float(np.median(s.latencies)) * 1000, 3)
                                for s in self.rounds if s.latencies],
            "errors": sum(s.errors for s in self.rounds),
            "first_error": next((s.first_error for s in self.rounds if s.first_error), None),
            "truncated": any(s.truncated for s in self.rounds),
            "cache_headers": dict(self.cache), "unexpected_cache_header": self.unexpected,
            "similarity": _summary(sims) if sims else None,
        }


def _summary(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values)
    return {"min": round(float(array.min()), 4), "p50": round(float(np.median(array)), 4),
            "max": round(float(array.max()), 4)}


# ------------------------------------------------------------------ choosing prompts

async def pick_misses(prompts: Sequence[Prompt], stored: np.ndarray, needed: int,
                      embedder: Embedder, threshold: float) -> tuple[list[str], int]:
    """``needed`` prompts that kallm will really miss, and how many candidates were left out.

    A miss prompt is two unrelated cached-style questions asked together (users do
    that), which is far from any single cached prompt. Templated text still has
    close neighbours, so each candidate is checked against the cache and against
    the misses before it (kallm stores those); one scoring above the threshold
    would come back a hit and is left out, since the miss cell must measure misses.
    """
    kept: list[str] = []
    kept_vectors = np.zeros((needed, stored.shape[1]), dtype=np.float32)
    tried = 0
    batch = 512
    for offset in range(0, len(prompts) - 1, 2 * batch):
        pairs = prompts[offset:offset + 2 * batch]
        texts = [f"{a.text} Also, {b.text[0].lower()}{b.text[1:]}"
                 for a, b in zip(pairs[::2], pairs[1::2], strict=False)]
        vectors = await embed_texts(embedder, [k.text or "" for k in keys_of(texts)])
        near_cache = (vectors @ stored.T).max(axis=1) >= threshold
        for text, vector, near in zip(texts, vectors, near_cache, strict=True):
            tried += 1
            if near or (kept and (kept_vectors[:len(kept)] @ vector).max() >= threshold):
                continue
            kept_vectors[len(kept)] = vector
            kept.append(text)
            if len(kept) == needed:
                return kept, tried - needed
    raise RuntimeError(f"only {len(kept)} of {tried} candidate prompts would miss; "
                       f"{needed} are needed (use fewer --requests or rounds)")


@dataclass
class Plan:
    """Request bodies for every cell, decided before any load is sent."""

    miss_bodies: list[bytes]
    exact_bodies: list[bytes]
    paraphrase_bodies: list[bytes]  # candidates until ``probe_paraphrases`` keeps the hits
    paraphrase_threshold: float | None  # sent as X-Kallm-Threshold when the default is too high
    paraphrase_scores: dict[str, float]
    misses_screened_out: int
    paraphrase_probe: dict[str, Any] = field(default_factory=dict)

    def headers(self, base: dict[str, str]) -> dict[str, str]:
        """Request headers for the paraphrase cell."""
        if self.paraphrase_threshold is None:
            return dict(base)
        return {**base, "X-Kallm-Threshold": str(self.paraphrase_threshold)}


async def make_plan(prompts: list[Prompt], vectors: np.ndarray, entries: int, misses_needed: int,
                    embedder: Embedder, threshold: float) -> Plan:
    """Choose every body before any load is sent, so no cell pays for choosing.

    Exact hits are cached prompts; paraphrase candidates are their second wordings
    that are not themselves cached (else they would be exact hits) and score above
    the threshold against the cache here, with the same embedder kallm uses.
    """
    stored_vectors = vectors[:entries]
    miss_texts, screened_out = await pick_misses(prompts[entries:], stored_vectors,
                                                 misses_needed, embedder, threshold)

    # Spread hits over the whole cache (stride coprime to its size) so LRU order is stirred.
    stride = next(s for s in (7919, 7907, 7901, 1) if entries % s)
    chosen = [(i * stride) % entries for i in range(min(entries, 2000))]
    exact = [encoded_request(prompts[i].text) for i in chosen]

    stored_exact = {k.exact for k in keys_of([p.text for p in prompts[:entries]])}
    texts = [prompts[i].paraphrase for i in chosen]
    para_vectors = await embed_texts(embedder, [k.text or "" for k in keys_of(texts)])
    best = (para_vectors @ stored_vectors.T).max(axis=1)
    novel = np.array([k.exact not in stored_exact for k in keys_of(texts)])
    header: float | None = None
    usable = [j for j in range(len(texts)) if novel[j] and best[j] >= threshold]
    if len(usable) < len(texts) // 4:
        # This embedder scores these paraphrases below its default: lower the bar per
        # request, as a client may, so the cell still measures the semantic-hit path.
        header = round(float(np.percentile(best[novel], 25)), 3)
        usable = [j for j in range(len(texts)) if novel[j] and best[j] >= header]
    scores = best[novel]
    return Plan(
        miss_bodies=[encoded_request(t) for t in miss_texts],
        exact_bodies=exact,
        paraphrase_bodies=[encoded_request(texts[j]) for j in usable],
        paraphrase_threshold=header,
        paraphrase_scores={"share_above_default": round(float((scores >= threshold).mean()), 3),
                           **_summary(scores)},
        misses_screened_out=screened_out,
    )


async def probe_paraphrases(plan: Plan, kallm_url: str, headers: dict[str, str]) -> None:
    """Keep the paraphrases kallm really answers from the cache, asking it with no-store.

    Scoring above the threshold is not enough: the hit guard may refuse a
    neighbour (another city, another number), and a refused paraphrase would be
    stored and come back as an *exact* hit in the cell. ``Cache-Control: no-store``
    lets us ask without changing the cache.
    """
    probe_headers = {**plan.headers(headers), "Cache-Control": "no-store"}
    kept: list[bytes] = []
    outcome: Counter[str] = Counter()
    similarities: list[float] = []
    first_error: str | None = None
    queue = iter(plan.paraphrase_bodies)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal first_error
        for body in queue:
            try:
                async with session.post(kallm_url + "/chat/completions", data=body,
                                        headers=probe_headers) as response:
                    text = await response.read()
                    verdict = response.headers.get("X-Kallm-Cache", "-")
                    similarity = response.headers.get("X-Kallm-Similarity")
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome["error"] += 1
                first_error = first_error or repr(exc)
                continue
            if response.status != 200:
                outcome["error"] += 1
                first_error = first_error or f"{response.status} {text[:300]!r}"
            elif verdict == "HIT" and similarity is not None:
                outcome["hit"] += 1
                similarities.append(float(similarity))
                kept.append(body)
            else:
                outcome["miss (guard or neighbour below threshold)"] += 1

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(4)))
    plan.paraphrase_probe = {"probed": len(plan.paraphrase_bodies), **outcome,
                             "first_error": first_error,
                             "similarity": _summary(similarities) if similarities else None}
    plan.paraphrase_bodies = kept


def cycle(bodies: Sequence[bytes], start: int, count: int) -> list[bytes]:
    """``count`` bodies from ``start`` on, wrapping; none if there are none to send."""
    return [bodies[(start + i) % len(bodies)] for i in range(count)] if bodies else []


# ------------------------------------------------------------------ lookup in-process

def server_guard() -> tuple[HitGuard | None, str]:
    """The hit guard kallm's server installs by default, if this checkout has a working one.

    A paraphrase hit pays for the guard too, so the in-process lookup includes it.
    """
    try:
        from kallm.cache.guard import hit_guard
    except ImportError:
        return None, "none (no kallm.cache.guard)"
    try:
        hit_guard("How do I parse JSON in Go?", "In Go, how can I parse JSON?")
    except Exception as exc:  # a half-installed guard must not stop the bench
        return None, f"off: the guard failed ({exc!r})"
    return hit_guard, f"{hit_guard.__module__}.{hit_guard.__name__}"


async def bench_lookup(embedder: Embedder, prompts: list[Prompt], vectors: np.ndarray,
                       size: int, lookups: int, threshold: float,
                       guard: HitGuard | None) -> dict[str, Any]:
    """``await cache.lookup(key)`` on paraphrases of cached prompts: exact miss, embed, search.

    Also times the two halves alone, so a slow lookup says whether to blame the
    embedder or the matrix scan.
    """
    backend = MemoryBackend(size + 1)
    cache = SemanticCache(backend, embedder, threshold=threshold, ttl=TTL, guard=guard)
    fill(backend, keys_of([p.text for p in prompts[:size]]), vectors[:size],
         [p.text for p in prompts[:size]])
    stride = next(s for s in (7919, 7907, 7901, 1) if size % s)
    queries = keys_of([prompts[(i * stride) % size].paraphrase for i in range(lookups + 50)])
    scope = queries[0].scope
    for key in queries[:50]:  # warm-up: caches, branch predictors, lazily loaded tables
        await cache.lookup(key)
    total, embed, search = [], [], []
    hits = 0
    for key in queries[50:]:
        t0 = time.perf_counter()
        result = await cache.lookup(key)
        t1 = time.perf_counter()
        vector = await embedder.embed(key.text or "")
        t2 = time.perf_counter()
        await backend.nearest(scope, vector, time.time(), 1)
        t3 = time.perf_counter()
        total.append(t1 - t0)
        embed.append(t2 - t1)
        search.append(t3 - t2)
        hits += result.hit is not None

    # Back to back, the index stays in the CPU cache. In a server, parsing, sockets and
    # the other processes on the machine evict it between requests, so also time
    # lookups that start with the cache flushed (by streaming 2x a typical L3 through it).
    flush = np.ones(EVICT_BYTES // 8, dtype=np.float64)
    cold = []
    for key in queries[50:50 + min(lookups, COLD_LOOKUPS)]:
        flush.sum()
        t0 = time.perf_counter()
        await cache.lookup(key)
        cold.append(time.perf_counter() - t0)

    def ms(values: list[float], q: float) -> float:
        return round(float(np.percentile(values, q)) * 1000, 4)

    return {"entries": size, "lookups": lookups, "hit_rate": round(hits / lookups, 3),
            "p50_ms": ms(total, 50), "p99_ms": ms(total, 99),
            "embed_p50_ms": ms(embed, 50), "search_p50_ms": ms(search, 50),
            "search_p99_ms": ms(search, 99),
            "cold_p50_ms": ms(cold, 50), "cold_p99_ms": ms(cold, 99),
            "index_mb": round(size * vectors.shape[1] * 4 / 1e6, 1)}


# ------------------------------------------------------------------ the run

CELLS = (("direct", None), ("bare relay", None), ("kallm miss", "MISS"),
         ("kallm exact hit", "HIT"), ("kallm paraphrase hit", "HIT"))


@dataclass
class Options:
    concurrency: list[int]
    requests: int | None
    warmup: int
    rounds: int
    entries: int
    lookup_sizes: list[int]
    lookups: int
    embedder: str
    seed: int
    cell_timeout: float
    json_path: Path
    kallm_env: dict[str, str] = field(default_factory=dict)

    def measured(self, concurrency: int) -> int:
        """Requests measured per cell per round."""
        total = self.requests or (600 if concurrency == 1 else 2400)
        return max(1, total // self.rounds)


async def run(options: Options, console: Console) -> dict[str, Any]:
    embedder = local_embedder(options.embedder)
    assert embedder is not None
    threshold = embedder.default_threshold
    misses_needed = sum(options.rounds * (options.warmup + options.measured(c))
                        for c in options.concurrency)
    count = max([*options.lookup_sizes, options.entries + 6 * misses_needed])
    console.print(f"embedder [bold]{embedder.name}[/] (dim {embedder.dim}, default threshold "
                  f"{threshold}); building {count:,} prompts")
    prompts = corpus(count, options.seed)
    log_dir = Path(tempfile.mkdtemp(prefix="kallm-bench-"))
    starting: list[asyncio.Task[Child]] = []
    try:
        upstream = await spawn("fake-upstream", ["-m", "tests.fake_upstream", "--port", "0"],
                               log_dir)
        starting.append(asyncio.create_task(_started(upstream)))
        upstream_url = upstream.first_line
        starting.append(asyncio.create_task(spawn(
            "bare-relay", ["scripts/bare_relay.py", "--upstream", upstream_url], log_dir)))
        starting.append(asyncio.create_task(spawn(
            "kallm", ["scripts/bench_core.py", SERVE_KALLM, "--upstream", upstream_url,
                      "--entries", str(options.entries), "--seed", str(options.seed),
                      "--embedder", options.embedder], log_dir, extra_env=options.kallm_env)))
        # Embed while kallm fills its own cache: both only set up, nothing is timed yet.
        started = time.perf_counter()
        keys = keys_of([p.text for p in prompts])
        vectors = await embed_texts(embedder, [k.text or "" for k in keys])
        embed_seconds = time.perf_counter() - started
        _, relay, kallm = await asyncio.gather(*starting)
        kallm_info = json.loads(kallm.first_line)
        if kallm_info["embedder"] != embedder.name:
            raise RuntimeError(f"kallm uses {kallm_info['embedder']}, this process "
                               f"{embedder.name}: their vectors would not agree")
        console.print(f"kallm ready with {kallm_info['entries']:,} entries (filled in "
                      f"{kallm_info['prefill_seconds']} s); {count:,} prompts embedded here "
                      f"in {embed_seconds:.1f} s")
        plan = await make_plan(prompts, vectors, options.entries, misses_needed, embedder,
                               kallm_info["threshold"])
        await probe_paraphrases(plan, kallm_info["url"], HEADERS)
        console.print(f"paraphrase probe: {plan.paraphrase_probe}")
        cells = await run_cells(options, plan, upstream_url, relay.first_line, kallm_info["url"],
                                console)
        async with aiohttp.ClientSession() as session, \
                session.get(kallm_info["url"][:-3] + "/stats") as response:
            kallm_stats = await response.json()
    finally:
        # Every started server is stopped by its PID, even if start-up or a cell failed.
        for task in reversed(starting):
            with contextlib.suppress(Exception):
                await stop_child(await task)
    guard, guard_name = server_guard()
    console.print(f"servers stopped; timing lookups in-process (guard: {guard_name})")
    lookup = [await bench_lookup(embedder, prompts, vectors, size, options.lookups,
                                 kallm_info["threshold"], guard)
              for size in options.lookup_sizes]
    result = report(options, cells, lookup, plan, kallm_info, kallm_stats, log_dir)
    result["meta"]["lookup_guard"] = guard_name
    return result


async def run_cells(options: Options, plan: Plan, upstream_url: str, relay_url: str,
                    kallm_url: str, console: Console) -> list[Cell]:
    """Every cell at every concurrency, ``rounds`` times, the cell order rotated per round
    so slow drift (CPU frequency, a growing cache) does not favour any one cell."""
    urls = {"direct": upstream_url, "bare relay": relay_url}
    base = HEADERS
    para_headers = plan.headers(base)
    cells: list[Cell] = []
    miss_cursor = hit_cursor = 0
    for concurrency in options.concurrency:
        row = [Cell(name, concurrency, expect) for name, expect in CELLS]
        cells += row
        measured = options.measured(concurrency)
        for round_no in range(options.rounds):
            # direct, relay and kallm-miss send the very same (never cached) bodies
            warm = plan.miss_bodies[miss_cursor:miss_cursor + options.warmup]
            miss_cursor += options.warmup
            bodies = plan.miss_bodies[miss_cursor:miss_cursor + measured]
            miss_cursor += measured
            work = {
                "direct": (warm, bodies, base),
                "bare relay": (warm, bodies, base),
                "kallm miss": (warm, bodies, base),
                "kallm exact hit": (cycle(plan.exact_bodies, hit_cursor, options.warmup),
                                    cycle(plan.exact_bodies, hit_cursor + options.warmup,
                                          measured), base),
                "kallm paraphrase hit": (
                    cycle(plan.paraphrase_bodies, hit_cursor, options.warmup),
                    cycle(plan.paraphrase_bodies, hit_cursor + options.warmup, measured),
                    para_headers),
            }
            hit_cursor += options.warmup + measured
            order = row[round_no % len(row):] + row[:round_no % len(row)]
            for cell in order:
                warm_bodies, measured_bodies, headers = work[cell.name]
                if not measured_bodies:  # nothing usable to send (reported as skipped)
                    continue
                url = urls.get(cell.name, kallm_url) + "/chat/completions"
                sample = await run_batch(url, warm_bodies, measured_bodies, concurrency,
                                         headers, options.cell_timeout)
                cell.rounds.append(sample)
            console.print(f"  c={concurrency} round {round_no + 1}/{options.rounds}: "
                          + ", ".join(f"{c.name} {c.last_p50():.2f}" for c in row) + " ms p50")
    return cells


# ------------------------------------------------------------------ the report

def report(options: Options, cells: list[Cell], lookup: list[dict[str, Any]], plan: Plan,
           kallm_info: dict[str, Any], kallm_stats: dict[str, Any],
           log_dir: Path) -> dict[str, Any]:
    """Everything measured, as one JSON-ready dict (the tables are printed from it)."""
    by = {(c.name, c.concurrency): c for c in cells}
    overhead = {}
    for concurrency in options.concurrency:
        direct = by["direct", concurrency].p(50)
        relay = by["bare relay", concurrency].p(50) - direct
        miss = by["kallm miss", concurrency].p(50) - direct
        overhead[str(concurrency)] = {
            "direct_p50_ms": _rounded(direct),
            "bare_relay_added_ms": _rounded(relay), "kallm_miss_added_ms": _rounded(miss),
            "ratio": _rounded(miss / relay, 2) if relay > 0 else None,
        }
    first = min(options.concurrency)
    targets: dict[str, dict[str, Any]] = {}
    ratio = overhead[str(first)]["ratio"]
    targets["miss_added_vs_relay_added"] = {"value": ratio, "target": "<= 1.5",
                                            "ok": ratio is not None and ratio <= 1.5}
    if first == 1:
        for name in ("kallm exact hit", "kallm paraphrase hit"):
            value = _rounded(by[name, 1].p(50))
            targets[f"{name.split()[1]}_hit_p50_ms_c1"] = {
                "value": value, "target": "< 1 ms", "ok": value is not None and value < 1.0}
    for row in lookup:
        limit = {10_000: 0.5, 100_000: 5.0}.get(row["entries"])
        if limit is not None:
            targets[f"lookup_p50_ms_{row['entries']}"] = {
                "value": row["p50_ms"], "target": f"< {limit} ms", "ok": row["p50_ms"] < limit}
    return {
        "meta": {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
            "platform": platform.platform(), "cpus": os.cpu_count(),
            "aiohttp": aiohttp.__version__, "numpy": np.__version__,
            "embedder": kallm_info["embedder"], "threshold": kallm_info["threshold"],
            "entries": options.entries, "entries_after_run": kallm_stats.get("total_entries"),
            "rounds": options.rounds, "warmup_per_round": options.warmup,
            "kallm_env": options.kallm_env,
            "paraphrase_threshold_header": plan.paraphrase_threshold,
            "paraphrase_scores_vs_cache": plan.paraphrase_scores,
            "paraphrase_probe": plan.paraphrase_probe,
            "miss_prompts_screened_out": plan.misses_screened_out,
            "server_logs": str(log_dir),
            "note": "client, fake upstream and proxy share the machine's cores; "
                    "each server runs in its own process",
        },
        "cells": [c.to_json() for c in cells],
        "overhead": overhead,
        "lookup": lookup,
        "targets": targets,
        "kallm_stats": kallm_stats,
    }


def _rounded(value: float, digits: int = 3) -> float | None:
    """JSON has no NaN: a cell with nothing measured reports null."""
    return None if np.isnan(value) else round(value, digits)


def print_report(result: dict[str, Any], console: Console) -> None:
    meta = result["meta"]
    table = Table(title=f"kallm core bench — {meta['embedder']}, {meta['entries']:,} entries, "
                        f"{meta['cpus']} CPUs shared by client, upstream and proxy")
    for column in ("cell", "c", "requests", "req/s", "p50 ms", "p99 ms", "added p50 ms",
                   "cache"):
        table.add_column(column, justify="left" if column in ("cell", "cache") else "right")
    direct = {c["concurrency"]: c["p50_ms"] for c in result["cells"] if c["name"] == "direct"}
    last = None
    for cell in result["cells"]:
        if last is not None and cell["concurrency"] != last:
            table.add_section()
        last = cell["concurrency"]
        if cell.get("skipped"):
            table.add_row(cell["name"], str(cell["concurrency"]), "0", "", "", "", "",
                          "[red]skipped: nothing to send[/]")
            continue
        added = "" if cell["name"] == "direct" else \
            f"{cell['p50_ms'] - direct[cell['concurrency']]:+.3f}"
        cache = ", ".join(f"{k} {v}" for k, v in cell["cache_headers"].items() if k != "-")
        if cell["similarity"]:
            cache += f" (sim {cell['similarity']['min']:.3f}–{cell['similarity']['max']:.3f})"
        if cell["errors"]:
            cache += f" [red]{cell['errors']} errors[/]"
        table.add_row(cell["name"], str(cell["concurrency"]), f"{cell['requests']:,}",
                      f"{cell['rps']:,.0f}", f"{cell['p50_ms']:.3f}", f"{cell['p99_ms']:.3f}",
                      added, cache)
    console.print(table)

    lookups = Table(title="SemanticCache.lookup in-process on a paraphrase (exact miss, embed, "
                          "search, guard); cold = CPU caches flushed first")
    for column in ("entries", "index MB", "p50 ms", "p99 ms", "embed p50", "search p50",
                   "search p99", "cold p50", "cold p99", "hit rate"):
        lookups.add_column(column, justify="right")
    for row in result["lookup"]:
        lookups.add_row(f"{row['entries']:,}", f"{row['index_mb']}", f"{row['p50_ms']:.3f}",
                        f"{row['p99_ms']:.3f}", f"{row['embed_p50_ms']:.3f}",
                        f"{row['search_p50_ms']:.3f}", f"{row['search_p99_ms']:.3f}",
                        f"{row['cold_p50_ms']:.3f}", f"{row['cold_p99_ms']:.3f}",
                        f"{row['hit_rate']:.2f}")
    console.print(lookups)

    summary = Table(title="overhead and targets")
    for column in ("measure", "value", "target", ""):
        summary.add_column(column)
    for concurrency, row in result["overhead"].items():
        summary.add_row(f"added p50 c={concurrency}: bare relay / kallm miss",
                        f"{row['bare_relay_added_ms']} / {row['kallm_miss_added_ms']} ms",
                        "", f"ratio {row['ratio']}")
    for name, target in result["targets"].items():
        mark = "[green]ok[/]" if target["ok"] else "[red]MISSED[/]"
        summary.add_row(name, str(target["value"]), target["target"], mark)
    console.print(summary)
    notes = [f"embedder {meta['embedder']}, threshold {meta['threshold']}"]
    if meta["paraphrase_threshold_header"] is not None:
        notes.append(f"paraphrase cell sent X-Kallm-Threshold: "
                     f"{meta['paraphrase_threshold_header']}")
    notes.append(f"{meta['miss_prompts_screened_out']} candidate miss prompts left out: "
                 "they would have hit a neighbour")
    probe = meta["paraphrase_probe"]
    if probe:
        notes.append(f"paraphrase probe: {probe.get('hit', 0)} of {probe['probed']} candidates "
                     "were hits in kallm" + (f", first error {probe['first_error']}"
                                             if probe.get("first_error") else ""))
    notes.append(f"in-process lookup guard: {meta.get('lookup_guard')}")
    notes.append(meta["note"])
    if "other_cpu_seconds" in meta:
        notes.append(f"CPU used by other processes during the {meta['seconds']} s run: "
                     f"{meta['other_cpu_seconds']} s")
    console.print("[dim]" + "; ".join(notes) + "[/]")


def machine_cpu_seconds() -> float | None:
    """CPU time every process on the machine has used (Linux /proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time of this process and of the servers it started (once they are reaped)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def parse_args(argv: Sequence[str] | None) -> tuple[Options, bool]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,32", help="comma-separated (default 1,32)")
    parser.add_argument("--requests", type=int, default=None,
                        help="measured requests per cell (default 600 at c=1, 2400 above)")
    parser.add_argument("--warmup", type=int, default=None, help="unmeasured requests per round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per cell (default 5)")
    parser.add_argument("--entries", type=int, default=None,
                        help="answers in kallm's cache before the run (default 10000)")
    parser.add_argument("--lookup-sizes", default=None,
                        help="cache sizes for the in-process lookup (default 10000,100000)")
    parser.add_argument("--lookups", type=int, default=None, help="lookups timed per size")
    parser.add_argument("--embedder", default="local", choices=("local", "hash"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cell-timeout", type=float, default=60.0,
                        help="seconds one cell round may take before it stops early")
    parser.add_argument("--json", type=Path, default=ROOT / "bench-results" / "core.json")
    parser.add_argument("--kallm-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the kallm process only, for A/B runs "
                             "(e.g. OPENBLAS_NUM_THREADS=1); repeatable")
    parser.add_argument("--quick", action="store_true", help="small counts: a ~20 s smoke run")
    args = parser.parse_args(argv)
    quick = args.quick

    def pick(value: Any, full: Any, small: Any) -> Any:
        return value if value is not None else (small if quick else full)

    options = Options(
        concurrency=[int(c) for c in args.concurrency.split(",") if c.strip()],
        requests=pick(args.requests, None, 150), warmup=pick(args.warmup, 100, 20),
        rounds=pick(args.rounds, 5, 1), entries=pick(args.entries, 10_000, 2_000),
        lookup_sizes=[int(s) for s in pick(args.lookup_sizes, "10000,100000",
                                           "2000,10000").split(",")],
        lookups=pick(args.lookups, 2000, 300), embedder=args.embedder, seed=args.seed,
        cell_timeout=args.cell_timeout, json_path=args.json,
        kallm_env=dict(item.split("=", 1) for item in args.kallm_env),
    )
    return options, quick


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [SERVE_KALLM]:
        child = argparse.ArgumentParser()
        for name in ("--upstream", "--entries", "--seed", "--embedder"):
            child.add_argument(name, required=True)
        args = child.parse_args(argv[1:])
        asyncio.run(serve_kallm(args.upstream, int(args.entries), int(args.seed), args.embedder))
        return
    options, _ = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 132)
    load_before = os.getloadavg()
    busy_before, ours_before = machine_cpu_seconds(), own_cpu_seconds()
    if load_before[0] > 0.5:
        console.print(f"[yellow]load average {load_before[0]:.2f} before the run: something "
                      "else is using the CPU, and the figures will show it[/]")
    started = time.perf_counter()
    result = asyncio.run(run(options, console))
    result["meta"]["seconds"] = round(time.perf_counter() - started, 1)
    # Our own processes add about 2 while they run; well above that means a neighbour did too.
    result["meta"]["loadavg_before"] = [round(x, 2) for x in load_before]
    result["meta"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    busy_after = machine_cpu_seconds()
    if busy_before is not None and busy_after is not None:
        others = (busy_after - busy_before) - (own_cpu_seconds() - ours_before)
        result["meta"]["other_cpu_seconds"] = round(max(others, 0.0), 1)
    print_report(result, console)
    options.json_path.parent.mkdir(parents=True, exist_ok=True)
    options.json_path.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {options.json_path} ({result['meta']['seconds']} s)")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
