"""Prompts a benchmark sends: many distinct, realistic ones, each with a paraphrase.

A lookup's cost and a miss's chance of a false hit both depend on how close the
cached prompts are to each other, so random strings would flatter the cache.
These are templated but varied: each template has a canonical wording (what gets
cached) and a paraphrase (what a second user would type), filled from word lists
large enough for 100,000+ distinct prompts. The stream is deterministic, so two
processes agree on which prompts are cached without sharing data.
"""

from __future__ import annotations

import json
import math
import random
import string
from dataclasses import dataclass
from typing import Any

MODEL = "gpt-4o-mini"
SYSTEM_PROMPT = "You are a helpful assistant. Answer concisely."

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


def chat_request(text: str, model: str = MODEL) -> dict[str, Any]:
    """The body every cell sends: same model, system prompt and params, so one cache scope."""
    return {"model": model, "temperature": 0,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                         {"role": "user", "content": text}]}


def encoded_request(text: str, model: str = MODEL) -> bytes:
    """``chat_request`` as the bytes on the wire, encoded once before any timing starts."""
    return json.dumps(chat_request(text, model)).encode()


def completion_body(text: str, index: int, model: str = MODEL) -> bytes:
    """A chat.completion like the simulated upstream's, for entries put straight into a cache."""
    content = f"Answer to: {text}"
    prompt_tokens = len(SYSTEM_PROMPT.split()) + len(text.split())
    completion_tokens = len(content.split())
    return json.dumps({
        "id": f"chatcmpl-prefill{index:012d}", "object": "chat.completion",
        "created": 1_700_000_000, "model": model, "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": content, "refusal": None}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }, separators=(",", ":")).encode()
