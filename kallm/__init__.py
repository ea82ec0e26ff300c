"""kallm: an OpenAI-compatible LLM proxy with a semantic cache."""

__version__ = "0.1.0"
