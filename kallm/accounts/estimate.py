"""The most a request can cost, before it is sent: what a budget and a tpm limit reserve.

Low estimates are how budgets overshoot (100 concurrent requests admitted against a
$0.01 budget because each was guessed cheap). So the estimate errs high: the prompt
is the body's length in characters / 3 (English runs ~4 characters a token; JSON
structure and non-English text run fewer), every image counts as a large image, and
the output is the request's own limit or else the model's output limit from the price
table. Each route of an alias is priced and the dearest is reserved.

The output limit is read only from the fields the route's own API defines: a limit in a
field the API ignores (``max_output_tokens`` on chat) would size the request at one token
while the upstream (or a translator, which reads the API's own field) generates thousands,
and the bill, held to the size, would be a hundredth of the cost. A file or document given
by reference (a URL, a file id) is as large as a context window for all the body shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kallm.accounts.pricing import PriceTable, Usage

CHARS_PER_TOKEN = 3
IMAGE_TOKENS = 1_600  # a large image on any provider (OpenAI high detail, Anthropic 1.15 MP)
FALLBACK_OUTPUT_TOKENS = 16_384  # a model the table has no output limit for
FILE_TOKENS = 200_000  # a file by reference: a whole context window, for all the body shows
# Where each API reads its output limit (the larger when chat is given both); a route not
# listed is sized by any of them.
OUTPUT_FIELDS: Mapping[str, tuple[str, ...]] = {
    "chat": ("max_completion_tokens", "max_tokens"),
    "completions": ("max_tokens",),
    "messages": ("max_tokens",),
    "responses": ("max_output_tokens",),
}
_ANY_OUTPUT_FIELD = ("max_completion_tokens", "max_tokens", "max_output_tokens")
_IMAGE_TYPES = frozenset({"image_url", "input_image", "image"})
_FILE_TYPES = frozenset({"document", "file", "input_file"})
_INLINE_FILE = frozenset({"data", "file_data", "text", "content"})  # the bytes are in the body


@dataclass(frozen=True, slots=True)
class Estimate:
    tokens: int  # prompt + output: what a tpm limit is charged at admission
    usd: float  # what a budget reserves (the dearest route)
    # The hard ceiling: one token per byte of the body (no tokenizer does worse), every
    # image at its worst, all the output: usage beyond it is an upstream misreporting.
    ceiling_prompt: int = 0
    ceiling_output: int = 0
    ceiling_usd: float = 0.0

    def plausible(self, usage: Usage) -> Usage:
        """``usage`` with each count held to the ceiling (a 10^400 is no count)."""
        if not self.ceiling_prompt:
            return usage
        prompt = min(usage.prompt_tokens, self.ceiling_prompt)
        return Usage(
            prompt,
            min(usage.completion_tokens, self.ceiling_output),
            min(usage.cached_tokens, prompt),
            min(usage.cache_write_tokens, prompt),
        )


def estimate(
    prices: PriceTable,
    models: Iterable[str],
    payload: Mapping[str, Any],
    body_size: int,
    has_attachments: bool = True,
    route: str = "",
) -> Estimate:
    """The worst case of sending ``payload`` (``body_size`` bytes) on ``route`` (its name:
    chat, messages...) to any of ``models``."""
    images, files = count_attachments(payload) if has_attachments else (0, 0)
    answers = answers_per_call(payload)
    limit = requested_output(payload, OUTPUT_FIELDS.get(route, _ANY_OUTPUT_FIELD))
    tokens, usd, ceiling_prompt, ceiling_output, ceiling_usd = 0, 0.0, 0, 0, 0.0
    for model in models:
        per_image = prices.max_image_tokens(model) or IMAGE_TOKENS
        attached = per_image * images + FILE_TOKENS * files
        prompt = body_size // CHARS_PER_TOKEN + attached
        output = limit or prices.max_output(model) or FALLBACK_OUTPUT_TOKENS
        output *= answers
        tokens = max(tokens, prompt + output)
        usd = max(usd, prices.cost(model, Usage(prompt, output)))
        most = body_size + attached
        ceiling_prompt, ceiling_output = max(ceiling_prompt, most), max(ceiling_output, output)
        ceiling_usd = max(ceiling_usd, prices.cost(model, Usage(most, output)))
    return Estimate(tokens, usd, ceiling_prompt, ceiling_output, ceiling_usd)


def mentions(body: bytes, *words: bytes) -> bool:
    """Whether the JSON ``body`` may hold one of ``words`` (a key or a value): a walk of the
    parsed body is skipped when it cannot find anything. A ``\\u`` escape can spell any
    word without its bytes (``"typ\\u0065"``), so a body with one is always walked."""
    return b"\\u" in body or any(word in body for word in words)


def answers_per_call(payload: Mapping[str, Any]) -> int:
    """How many answers one call produces: ``n`` (or legacy ``best_of``, generated even
    when fewer are returned) times the prompts of a legacy completions batch."""

    def whole(name: str) -> int:
        value = payload.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1

    prompt = payload.get("prompt")
    prompts = (
        len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1
    )
    return max(whole("n"), whole("best_of")) * max(prompts, 1)


def requested_output(payload: Mapping[str, Any], fields: Iterable[str]) -> int | None:
    """The largest output limit the request sets in ``fields``, if any."""
    limits = [
        value
        for value in (payload.get(name) for name in fields)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0
    ]
    return max(limits, default=None)


def count_attachments(payload: Any) -> tuple[int, int]:
    """Image parts, and files or documents given by reference, anywhere in the request
    (chat, Responses and Messages shapes)."""
    images = files = 0
    stack = [payload]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            kind = node.get("type")
            if kind in _IMAGE_TYPES:
                images += 1
            elif kind in _FILE_TYPES and not _inline(node):
                files += 1
            stack.extend(v for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, dict | list))
    return images, files


def _inline(part: Mapping[str, Any]) -> bool:
    """Whether a file part carries its bytes in the body (base64 data, text): then the
    body's size bounds it. A URL or a file id can name anything."""
    inner = [part, part.get("source"), part.get("file")]
    return any(isinstance(d, dict) and _INLINE_FILE & d.keys() for d in inner)
