"""The APIs agents speak, translated to and from kallm's chat: pure functions, no I/O.

kallm speaks OpenAI chat completions inside (providers, cache, pricing). Two
more inbound dialects reach it:

- **Anthropic Messages** (``POST /v1/messages``, Claude Code): relayed natively to
  Anthropic providers; for the others, ``messages`` turns the request into chat
  and the answer back, ``messages_stream`` does the same for streams and
  assembles / replays native Messages streams for the cache.
- **OpenAI Responses** (``POST /v1/responses``, Codex CLI, the Agents SDK):
  relayed natively to OpenAI-kind providers; for Anthropic and Gemini,
  ``responses`` and ``responses_stream`` play the same parts.
"""

from kallm.dialects.messages import (
    anthropic_error,
    chat_request_from_messages,
    count_tokens_response,
    error_from_kallm,
    error_from_openai,
    estimate_input_tokens,
    message_from_chat,
)
from kallm.dialects.messages_stream import (
    MessagesAssembler,
    MessagesStreamFromChat,
    replay_message_events,
)
from kallm.dialects.responses import chat_request_from_responses, response_from_chat
from kallm.dialects.responses_stream import (
    ResponsesAssembler,
    ResponsesStreamFromChat,
    replay_response_events,
)

__all__ = [
    "MessagesAssembler",
    "MessagesStreamFromChat",
    "ResponsesAssembler",
    "ResponsesStreamFromChat",
    "anthropic_error",
    "chat_request_from_messages",
    "chat_request_from_responses",
    "count_tokens_response",
    "error_from_kallm",
    "error_from_openai",
    "estimate_input_tokens",
    "message_from_chat",
    "replay_message_events",
    "replay_response_events",
    "response_from_chat",
]
