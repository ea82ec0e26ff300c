"""What a request cost, from its usage and a price table shipped with the package.

Input, provider-cached input (cache reads), cache writes and output are priced
separately: pricing cached tokens at the full input rate (or a stream at $0) is how
peers' spend drifts from the provider's invoice. The same table says how many tokens a
model can produce at most, which is what a budget reserves when a request does not say.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

CACHE_WRITE_FACTOR = 1.25  # Anthropic's 5-minute cache writes: 1.25x the input price


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens, and the most output tokens one call can produce."""

    input: float
    cached_input: float
    output: float
    cache_write: float | None = None  # None: CACHE_WRITE_FACTOR x input
    max_output: int | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one call. ``prompt_tokens`` includes cached and cache-written tokens, as
    OpenAI counts them (Anthropic's ``input_tokens`` does not: translators add them)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # cache reads
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_openai(cls, usage: Mapping[str, Any] | None) -> Usage:
        """Read an OpenAI ``usage`` object (chat or Responses); odd fields count as zero."""
        if not isinstance(usage, Mapping):
            return cls()
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
        cached = details.get("cached_tokens", 0) if isinstance(details, Mapping) else 0
        written = details.get("cache_write_tokens", 0) if isinstance(details, Mapping) else 0
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        completion = usage.get("completion_tokens", usage.get("output_tokens"))
        return cls(_int(prompt), _int(completion), _int(cached), _int(written))

    @classmethod
    def from_anthropic(cls, usage: Mapping[str, Any] | None) -> Usage:
        """Read an Anthropic ``usage``: its input_tokens exclude cache reads and writes."""
        if not isinstance(usage, Mapping):
            return cls()
        read = _int(usage.get("cache_read_input_tokens"))
        written = _int(usage.get("cache_creation_input_tokens"))
        fresh = _int(usage.get("input_tokens"))
        return cls(fresh + read + written, _int(usage.get("output_tokens")), read, written)


MAX_TOKENS = 10**8  # a usage figure beyond this is a lying upstream, not a bill


def plausible_counts(usage: Any) -> bool:
    """No count in a usage object (nested details included) is past ``MAX_TOKENS``: an
    answer that says it used 10^400 tokens is not an answer to relay, store or bill."""
    stack = [usage]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            stack.extend(node.values())
        elif isinstance(node, int | float) and not isinstance(node, bool) and node > MAX_TOKENS:
            return False
    return True


def _int(value: Any) -> int:
    """A token count: whole, non-negative and bounded (10^400 from an upstream is no number)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return 0
    return min(value, MAX_TOKENS)


@cache
def _shipped() -> dict[str, Any]:
    return json.loads(resources.files("kallm.data").joinpath("prices.json").read_text())


def shipped_prices() -> dict[str, Price]:
    return {name: Price(*values) for name, values in _shipped()["models"].items()}


def shipped_output_limits() -> dict[str, int]:
    return dict(_shipped().get("max_output_tokens", {}))


def shipped_image_tokens() -> dict[str, int]:
    return dict(_shipped().get("max_image_tokens", {}))


_PRICE_KEYS = ("input", "cached_input", "output", "cache_write", "max_output")


def parse_price_overrides(document: Mapping[str, Any], origin: str) -> dict[str, Price]:
    """``[prices."model"] input = 2.5, cached_input = 1.25, output = 10.0`` (USD per 1M
    tokens), optionally ``cache_write`` and ``max_output`` (tokens)."""
    from kallm.errors import ConfigError

    raw = document.get("prices", {})
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{origin}: [prices.MODEL] tables expected")
    overrides = {}
    for model, table in raw.items():
        if (
            not isinstance(table, Mapping)
            or not {"input", "output"} <= set(table)
            or not set(table) <= set(_PRICE_KEYS)
            or not all(_amount(table.get(k, 0)) for k in _PRICE_KEYS)
        ):
            raise ConfigError(
                f"{origin}: [prices.{model!r}] needs input and output (and optionally "
                "cached_input, cache_write) in USD per million tokens, finite and >= 0, "
                "and optionally max_output in tokens"
            )
        max_output = table.get("max_output")
        overrides[str(model)] = Price(
            float(table["input"]),
            float(table.get("cached_input", table["input"])),
            float(table["output"]),
            float(table["cache_write"]) if "cache_write" in table else None,
            int(max_output) if max_output is not None else None,
        )
    return overrides


def _amount(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


class PriceTable:
    """Looks a model up exactly, then by the longest listed prefix; kallm.toml overrides win."""

    def __init__(
        self,
        prices: Mapping[str, Price] | None = None,
        overrides: Mapping[str, Price] | None = None,
    ):
        self._prices = dict(shipped_prices() if prices is None else prices)
        self._prices.update(overrides or {})
        self._by_length = sorted(self._prices, key=len, reverse=True)
        self._limits = shipped_output_limits()
        self._limits.update(
            {m: p.max_output for m, p in (overrides or {}).items() if p.max_output is not None}
        )
        self._limits_by_length = sorted(self._limits, key=len, reverse=True)
        self._images = shipped_image_tokens()
        self._images_by_length = sorted(self._images, key=len, reverse=True)

    def names(self) -> list[str]:
        """The models the table lists by name."""
        return list(self._prices)

    def price_of(self, model: str) -> Price | None:
        return _lookup(self._prices, self._by_length, model)

    def max_output(self, model: str) -> int | None:
        """The most tokens one call of ``model`` can produce, if the table knows it."""
        return _lookup(self._limits, self._limits_by_length, model)

    def max_image_tokens(self, model: str) -> int | None:
        """The most input tokens one image can cost on ``model``, if the table knows it."""
        return _lookup(self._images, self._images_by_length, model)

    def cost(self, model: str, usage: Usage) -> float:
        """USD for this usage; 0.0 for a model with no listed price (e.g. a local one)."""
        price = self.price_of(model)
        if price is None:
            return 0.0
        write_price = price.cache_write
        if write_price is None:
            write_price = price.input * CACHE_WRITE_FACTOR
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
        fresh_input = usage.prompt_tokens - cached - written
        return (
            fresh_input * price.input
            + cached * price.cached_input
            + written * write_price
            + usage.completion_tokens * price.output
        ) / 1_000_000


def _lookup(table: Mapping[str, Any], by_length: list[str], model: str) -> Any:
    name = model.split("/", 1)[-1]
    if name in table:
        return table[name]
    return next((table[p] for p in by_length if name.startswith(p)), None)
