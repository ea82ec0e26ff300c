"""What of a Messages or Responses request decides its answer: the view the cache keys on.

Each view is a chat-shaped dict (``messages`` plus every other field) for
``kallm.cache.scope.cache_key``, with the same discipline as chat: the model, the
system prompt or ``instructions``, tools, answer-changing parameters, the tenant and the
whole conversation before the last user turn are compared exactly; only the last user
text is compared by meaning. Two things are normalised away, and nothing else:

- ``cache_control`` markers (Anthropic's prompt-cache breakpoints): they say where the
  provider may cache a prefix, never what the answer is, and agents move them each turn;
- **Claude Code's billing line**: a system text block (or the first line of a string
  system prompt) that starts with ``x-anthropic-billing-header:``. Claude Code writes one
  per conversation and per subagent (``cc_version=…; cc_entrypoint=…; cch=…;``), so
  identical work would otherwise never share a scope. The request sent upstream keeps it.

A view is ``None`` when the request must never be answered from the cache:

- Responses that depend on server-side state: ``previous_response_id``,
  ``conversation``, a stored ``prompt``, ``background``, or ``store`` not explicitly
  false (the default, true, keeps the response upstream for a later reference, and a
  cached answer's id would name a response the provider never stored);
- either dialect with hosted or server tools (web search, code execution, files, MCP...):
  their answers depend on the world, not only on the request.
"""

from __future__ import annotations

import copy
from typing import Any

BILLING_PREFIX = "x-anthropic-billing-header:"
_FUNCTION_TOOLS = frozenset({"function", "custom"})


def messages_view(body: dict[str, Any]) -> dict[str, Any] | None:
    """The cache view of an Anthropic Messages request, or None when it is not cacheable."""
    tools = body.get("tools") or []
    if not isinstance(tools, list) or any(
        not isinstance(t, dict) or t.get("type", "custom") not in _FUNCTION_TOOLS for t in tools
    ):
        return None
    if body.get("mcp_servers") or body.get("container"):
        return None
    view = _without_cache_control(body)
    view["system"] = _without_billing_line(view.get("system"))
    return view


def responses_view(body: dict[str, Any]) -> dict[str, Any] | None:
    """The cache view of a Responses request, or None when it is not cacheable."""
    stateful = ("previous_response_id", "conversation", "prompt", "background")
    if any(body.get(name) for name in stateful) or body.get("store") is not False:
        return None
    tools = body.get("tools") or []
    if not isinstance(tools, list) or any(
        not isinstance(t, dict) or t.get("type") != "function" for t in tools
    ):
        return None
    raw = body.get("input")
    items = [{"role": "user", "content": raw}] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        return None
    view = {name: value for name, value in body.items() if name != "input"}
    view["messages"] = [_chat_shaped(item) for item in items]
    return view


def _chat_shaped(item: Any) -> Any:
    """A message item as chat's cache key reads it: ``input_text`` parts as ``text`` parts
    and no ``type: message`` (other items stay as they are: compared exactly)."""
    if not isinstance(item, dict) or item.get("type", "message") != "message":
        return item
    shaped = {k: v for k, v in item.items() if k != "type"}
    content = shaped.get("content")
    if isinstance(content, list):
        shaped["content"] = [
            {**part, "type": "text"}
            if isinstance(part, dict) and part.get("type") in ("input_text", "output_text")
            else part
            for part in content
        ]
    return shaped


def _without_cache_control(value: Any) -> Any:
    """A deep copy with every ``cache_control`` key removed."""
    if isinstance(value, dict):
        return {k: _without_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_without_cache_control(v) for v in value]
    return copy.copy(value)


def _without_billing_line(system: Any) -> Any:
    if isinstance(system, str):
        first, _, rest = system.partition("\n")
        return rest if first.strip().startswith(BILLING_PREFIX) else system
    if isinstance(system, list):
        return [
            block
            for block in system
            if not (
                isinstance(block, dict)
                and isinstance(block.get("text"), str)
                and block["text"].lstrip().startswith(BILLING_PREFIX)
            )
        ]
    return system
