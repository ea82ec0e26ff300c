"""kallm's exception tree and its mapping to OpenAI's error JSON.

    KallmError                      (500, server_error)
    ├── ConfigError                 bad setting: start-up stops with one line
    ├── RequestError                (400, invalid_request_error) unusable client input
    │   └── PayloadTooLarge         (413)
    ├── AuthenticationError         (401) no usable key
    ├── UpstreamError               (502) the upstream could not be reached or spoke nonsense
    │   └── UpstreamTimeout         (504)
    └── EmbeddingError              embedding failed: the request is served uncached, never failed

Errors that reach a client are rendered by ``KallmError.to_body`` so every SDK
shows them the same way it shows OpenAI's own.
"""

from __future__ import annotations

from typing import Any


class KallmError(Exception):
    """Base of every error kallm raises on purpose."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_body(self) -> dict[str, Any]:
        """The OpenAI error envelope: ``{"error": {message, type, param, code}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class ConfigError(KallmError):
    """A setting has a value kallm cannot run with; the message names it and what is allowed."""

    type = "configuration_error"


class RequestError(KallmError):
    status = 400
    type = "invalid_request_error"


class PayloadTooLarge(RequestError):
    status = 413
    code = "payload_too_large"


class AuthenticationError(KallmError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class UpstreamError(KallmError):
    status = 502
    type = "upstream_error"
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class EmbeddingError(KallmError):
    type = "embedding_error"
