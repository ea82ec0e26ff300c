"""The most a request can cost, before it is sent: what a budget and a tpm limit reserve.

Low estimates are how budgets overshoot (100 concurrent requests admitted against a
$0.01 budget because each was guessed cheap). So the estimate errs high: the prompt
is the body's length in characters / 3 (English runs ~4 characters a token; JSON
structure and non-English text run fewer), every image counts as a large image, and
the output is the request's own ``max_tokens`` or else the model's output limit from
the price table. Each route of an alias is priced and the dearest is reserved.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kallm.accounts.pricing import PriceTable, Usage

CHARS_PER_TOKEN = 3
IMAGE_TOKENS = 1_600  # a large image on any provider (OpenAI high detail, Anthropic 1.15 MP)
FALLBACK_OUTPUT_TOKENS = 16_384  # a model the table has no output limit for
_OUTPUT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
_IMAGE_TYPES = frozenset({"image_url", "input_image", "image"})


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
    has_images: bool = True,
) -> Estimate:
    """The worst case of sending ``payload`` (``body_size`` bytes) to any of ``models``."""
    images = count_images(payload) if has_images else 0
    answers = answers_per_call(payload)
    tokens, usd, ceiling_prompt, ceiling_output, ceiling_usd = 0, 0.0, 0, 0, 0.0
    for model in models:
        per_image = prices.max_image_tokens(model) or IMAGE_TOKENS
        prompt = body_size // CHARS_PER_TOKEN + per_image * images
        output = requested_output(payload) or prices.max_output(model) or FALLBACK_OUTPUT_TOKENS
        output *= answers
        tokens = max(tokens, prompt + output)
        usd = max(usd, prices.cost(model, Usage(prompt, output)))
        most = body_size + per_image * images
        ceiling_prompt, ceiling_output = max(ceiling_prompt, most), max(ceiling_output, output)
        ceiling_usd = max(ceiling_usd, prices.cost(model, Usage(most, output)))
    return Estimate(tokens, usd, ceiling_prompt, ceiling_output, ceiling_usd)


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


def requested_output(payload: Mapping[str, Any]) -> int | None:
    for name in _OUTPUT_FIELDS:
        value = payload.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def count_images(payload: Any) -> int:
    """Image parts anywhere in the request (chat, Responses and Messages shapes)."""
    count = 0
    stack = [payload]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") in _IMAGE_TYPES:
                count += 1
            stack.extend(v for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, dict | list))
    return count
