"""What a virtual key may not reach through a request body: the provider account's state.

Under virtual keys every key's calls go out with the server's provider key, so the
provider account (its stored responses and conversations, files, vector stores, saved
prompts) belongs to all of them at once. The organisation routes that read or change it
are closed (``kallm.server.routes``); these are the same things named inside a body
that an open route carries: ``previous_response_id`` would continue another tenant's
conversation, a ``file_id`` reads another tenant's upload, an MCP server is a call kallm
cannot see. And a key with a budget may not use the provider's hosted tools that carry
fees of their own (web search, code execution...): kallm cannot price them, so a budget
would not hold.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kallm.accounts.estimate import mentions
from kallm.errors import PermissionDenied

# Top-level fields that continue or reuse state stored in the provider account.
_STATEFUL_FIELDS = ("previous_response_id", "conversation", "mcp_servers", "container")
# Keys that name a stored object wherever they appear (a content part, a tool, a source).
_STORED_OBJECT_KEYS = frozenset({"file_id", "vector_store_ids"})
_STORED_OBJECT_BYTES = tuple(key.encode() for key in _STORED_OBJECT_KEYS)
# Hosted tools that read stored state, or reach servers kallm never sees.
_STATEFUL_TOOLS = ("file_search", "mcp")
# Hosted tools billed per call or per session on top of tokens (OpenAI and Anthropic).
_FEE_TOOLS = ("web_search", "web_fetch", "code_execution", "code_interpreter", "image_generation")


class AccountStateRefused(PermissionDenied):
    code = "account_state_not_allowed"


def refuse_account_state(payload: dict[str, Any], body: bytes, budgeted: bool) -> None:
    """Raise ``AccountStateRefused`` when ``payload`` (parsed from ``body``) reaches the
    shared account's state (or, for a key with a budget, a tool with fees kallm cannot
    price). Every keyed request passes here: the whole-body walk runs only when the body
    may name a stored object (a long conversation is not walked for nothing)."""
    for name in _STATEFUL_FIELDS:
        if payload.get(name) not in (None, "", [], {}):
            raise _refused(name, "continues or reuses state stored in the provider account")
    prompt = payload.get("prompt")
    if isinstance(prompt, dict) and "id" in prompt:
        raise _refused("prompt", "names a prompt stored in the provider account")
    if mentions(body, *_STORED_OBJECT_BYTES):
        for key in _keys_anywhere(payload):
            if key in _STORED_OBJECT_KEYS:
                raise _refused(key, "names an object stored in the provider account")
    for tool in _tool_types(payload):
        if tool.startswith(_STATEFUL_TOOLS):
            raise _refused("tools", f"the hosted tool '{tool}' reads the provider account")
        if budgeted and tool.startswith(_FEE_TOOLS):
            raise _refused(
                "tools",
                f"the hosted tool '{tool}' has fees kallm cannot price, so a key with a "
                "budget cannot use it",
            )


def _refused(param: str, why: str) -> AccountStateRefused:
    return AccountStateRefused(
        f"'{param}' {why}, which every key of this kallm shares: not allowed with a virtual key",
        param=param,
    )


def _keys_anywhere(node: Any) -> Iterator[str]:
    """Every object key at any depth (iteratively: the body's depth is already bounded)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield from (k for k in item if isinstance(k, str))
            stack.extend(v for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))


def _tool_types(payload: dict[str, Any]) -> Iterator[str]:
    tools = payload.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        kind = tool.get("type") if isinstance(tool, dict) else None
        if isinstance(kind, str):
            yield kind
