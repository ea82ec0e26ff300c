"""kallm's exception tree and its mapping to OpenAI's error JSON.

    KallmError                      (500, server_error)
    ├── ConfigError                 bad setting: start-up stops with one line
    │   └── SchemaTooNew            the database was written by a newer kallm
    ├── RequestError                (400, invalid_request_error) unusable client input
    │   ├── PayloadTooLarge         (413)
    │   ├── UnsupportedEncoding     (415) a request Content-Encoding kallm does not decode
    │   ├── ModelNotFound           (404) no provider serves the model
    │   ├── RouteNotFound           (404) no such API route (or a path not in normal form)
    │   ├── KeyNotFound             (404) no such virtual key (admin and CLI)
    │   └── KeyConflict             (409) a key with that name exists
    ├── AuthenticationError         (401) no usable key
    ├── PermissionDenied            (403)
    │   ├── ModelNotAllowed         the key may not use this model
    │   ├── RouteClosed             an organisation route kallm cannot police, under keys
    │   ├── PriceUnknown            a budgeted key asked for a model with no price
    │   └── AdminDisabled           no admin key configured
    ├── RateLimited                 (429, headers Retry-After, x-ratelimit-*)
    ├── BudgetExceeded              (429, insufficient_quota)
    ├── UpstreamError               (502) the upstream could not be reached or spoke nonsense
    │   ├── UpstreamTimeout         (504)
    │   └── UpstreamLoop            (508) the upstream is this kallm itself
    └── EmbeddingError              embedding failed: the request is served uncached, never failed

Errors that reach a client are rendered by ``KallmError.to_body`` so every SDK
shows them the same way it shows OpenAI's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any


class KallmError(Exception):
    """Base of every error kallm raises on purpose."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers: Mapping[str, str] = headers or {}  # sent with the error response
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


class SchemaTooNew(ConfigError):
    """The database was written by a newer kallm than this one."""

    code = "schema_too_new"


class RequestError(KallmError):
    status = 400
    type = "invalid_request_error"


class PayloadTooLarge(RequestError):
    status = 413
    code = "payload_too_large"


class UnsupportedEncoding(RequestError):
    status = 415
    code = "unsupported_content_encoding"


class ModelNotFound(RequestError):
    status = 404
    code = "model_not_found"


class RouteNotFound(RequestError):
    status = 404
    code = "not_found"


class KeyNotFound(RequestError):
    status = 404
    code = "key_not_found"


class KeyConflict(RequestError):
    status = 409
    code = "key_exists"


class AuthenticationError(KallmError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(KallmError):
    status = 403
    type = "invalid_request_error"


class ModelNotAllowed(PermissionDenied):
    code = "model_not_allowed"


class RouteClosed(PermissionDenied):
    code = "route_not_allowed"


class PriceUnknown(PermissionDenied):
    code = "model_not_priced"


class AdminDisabled(PermissionDenied):
    code = "admin_disabled"


class RateLimited(KallmError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class BudgetExceeded(KallmError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class UpstreamError(KallmError):
    status = 502
    type = "upstream_error"
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamLoop(UpstreamError):
    status = 508
    code = "upstream_is_kallm"


class EmbeddingError(KallmError):
    type = "embedding_error"


# What reading a document of an unexpected shape raises: a list where an object was due
# (unhashable, no .get), a missing key, a number where text was due, nesting too deep.
MALFORMED = (TypeError, KeyError, AttributeError, ValueError, IndexError, RecursionError)


def blamed_on_request() -> AbstractContextManager[None]:
    """Reading the client's JSON (to translate it, to scope it) failed on its shape: a
    400, not a 500. Only around code that reads the request alone."""
    return _reading(
        lambda why: RequestError(f"the request has a field of a shape kallm cannot read ({why})")
    )


def blamed_on_upstream(provider: str) -> AbstractContextManager[None]:
    """Reading the provider's answer (to translate it) failed on its shape: a 502 naming
    the provider, not a 500. Only around code that reads the upstream's answer alone."""
    return _reading(
        lambda why: UpstreamError(
            f"provider {provider} answered in a shape kallm cannot read ({why})"
        )
    )


@contextmanager
def _reading(blame: Callable[[str], KallmError]) -> Iterator[None]:
    """Turn a ``MALFORMED`` failure into ``blame``'s error; kallm's own errors pass."""
    try:
        yield
    except KallmError:
        raise
    except MALFORMED as exc:
        raise blame(brief(exc)) from None


def stream_break(exc: BaseException) -> str:
    """Why a relayed stream stopped, for the client's error event: kallm's own message, or
    the unreadable event's failure in brief."""
    return exc.message if isinstance(exc, KallmError) else f"bad stream event: {brief(exc)}"


def brief(exc: BaseException) -> str:
    """An exception as one short line, for a client's error message."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text[:160]
