"""What a request cost, from its usage and a price table shipped with the package.

Input, provider-cached input and output are priced separately: pricing cached
tokens at the full input rate (or a stream at $0) is how peers' spend drifts
from the provider's invoice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input: float
    cached_input: float
    output: float


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_openai(cls, usage: Mapping[str, Any] | None) -> Usage:
        """Read an OpenAI ``usage`` object; missing or odd fields count as zero."""
        if not isinstance(usage, Mapping):
            return cls()
        details = usage.get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens", 0) if isinstance(details, Mapping) else 0
        return cls(
            _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")), _int(cached)
        )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


@cache
def shipped_prices() -> dict[str, Price]:
    raw = json.loads(resources.files("kallm.data").joinpath("prices.json").read_text())
    return {name: Price(*values) for name, values in raw["models"].items()}


def parse_price_overrides(document: Mapping[str, Any], origin: str) -> dict[str, Price]:
    """``[prices."model"] input = 2.5, cached_input = 1.25, output = 10.0`` (USD per 1M tokens)."""
    from kallm.errors import ConfigError

    raw = document.get("prices", {})
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{origin}: [prices.MODEL] tables expected")
    overrides = {}
    for model, table in raw.items():
        if (
            not isinstance(table, Mapping)
            or not {"input", "output"} <= set(table)
            or not all(
                isinstance(table.get(k, 0), int | float) and table.get(k, 0) >= 0
                for k in ("input", "cached_input", "output")
            )
        ):
            raise ConfigError(
                f"{origin}: [prices.{model!r}] needs input and output (and "
                "optionally cached_input) in USD per million tokens, >= 0"
            )
        overrides[str(model)] = Price(
            float(table["input"]),
            float(table.get("cached_input", table["input"])),
            float(table["output"]),
        )
    return overrides


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

    def price_of(self, model: str) -> Price | None:
        name = model.split("/", 1)[-1]
        if name in self._prices:
            return self._prices[name]
        return next((self._prices[p] for p in self._by_length if name.startswith(p)), None)

    def cost(self, model: str, usage: Usage) -> float:
        """USD for this usage; 0.0 for a model with no listed price (e.g. a local one)."""
        price = self.price_of(model)
        if price is None:
            return 0.0
        fresh_input = max(usage.prompt_tokens - usage.cached_tokens, 0)
        return (
            fresh_input * price.input
            + usage.cached_tokens * price.cached_input
            + usage.completion_tokens * price.output
        ) / 1_000_000
