"""Admission: one gate every /v1 request passes before any handler runs.

It decides, in this order: which credential the caller holds (a virtual key, or with
auth off the upstream key the caller brings); whether the route is open to it; for
routes that name a model, whether the name is a model name at all, which routes it
resolves to (aliases included), whether the key may use every model those routes call,
whether each is priced when the key has a budget; then the rate limits, charged with the
request's estimated tokens, and the budget, reserved at the request's worst-case cost.
Handlers receive the result (``admission(request)``) and never check again; the request
context middleware settles it when the response is done, whatever happened.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from kallm.accounts.budget import Reservation
from kallm.accounts.estimate import Estimate, estimate, mentions
from kallm.accounts.keys import KeyRecord
from kallm.accounts.pricing import PriceTable
from kallm.accounts.shared import refuse_account_state
from kallm.cache.scope import SERVER_TENANT
from kallm.errors import (
    AuthenticationError,
    ModelNotAllowed,
    PriceUnknown,
    RateLimited,
    RequestError,
    RouteClosed,
    RouteNotFound,
)
from kallm.ids import unique_id
from kallm.providers.router import Route, Router
from kallm.server.connections import read_body
from kallm.server.log import RequestLog, request_log
from kallm.server.request import (
    bearer_token,
    breathe,
    check_chat_request,
    check_limits,
    check_model,
    parse_json_yielding,
)
from kallm.server.routes import CHAT, COUNT_TOKENS, Dialect, Group, RequestPath
from kallm.server.runtime import Runtime, runtime_of

_PATH = web.RequestKey("kallm.path", RequestPath)
SERVER_CREDENTIAL = SERVER_TENANT[1]  # callers relying on the server's own upstream key


@dataclass(slots=True)
class Admission:
    path: RequestPath
    body: bytes = b""
    payload: dict[str, Any] | None = None  # the JSON body of a route that names a model
    routes: list[Route] = field(default_factory=list)  # where the model may go, in order
    key: KeyRecord | None = None  # the virtual key, when auth is on
    credential: str = ""  # with auth off: whose upstream key answers (a digest), for scopes
    estimate: Estimate | None = None
    reservation: Reservation | None = None
    tokens_reserved: int = 0
    rate_headers: dict[str, str] = field(default_factory=dict)
    charge_usd: float = 0.0  # the flat price of an opened organisation route

    def bounds(self, prices: PriceTable) -> Estimate:
        """The worst case of this request over its routes: what a budget holds, and the
        ceiling no bill may pass. (Computed only when needed: hits never need it.)"""
        assert self.payload is not None
        models = [route.model for route in self.routes]
        attached = mentions(self.body, b"image", b"file", b"document")
        return estimate(
            prices, models, self.payload, len(self.body), attached, self.path.route.name
        )

    @property
    def model(self) -> str:
        assert self.payload is not None
        return str(self.payload["model"])

    def cache_tenant(self, sub: str = "", dialect: str = "") -> tuple[str, ...]:
        """Who may share cached answers: the key's namespace (or, with auth off, the upstream
        credential), then the dialect and the client's own sub-namespace, if any; as
        a list of parts, never joined into one string that another choice could spell."""
        tenant = ("key", self.key.namespace or "") if self.key else ("credential", self.credential)
        if dialect:
            tenant += ("dialect", dialect)
        return tenant + (("sub", sub) if sub else ())


_ADMISSION = web.RequestKey("kallm.admission", Admission)


def set_path(request: web.Request, path: RequestPath) -> None:
    request[_PATH] = path


def admission(request: web.Request) -> Admission:
    return request[_ADMISSION]


@web.middleware
async def admit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Admit /v1 requests; ops and admin paths go straight through (admin has its own key)."""
    path = request[_PATH]
    if path.route.group in (Group.OPS, Group.ADMIN):
        return await handler(request)
    runtime = runtime_of(request)
    admitted = Admission(path)
    request[_ADMISSION] = admitted
    record = request_log(request)
    record.admission = admitted
    if runtime.virtual_keys:
        admitted.key = _authenticate(runtime, request, path)
        record.key_id = admitted.key.id
    _check_route(runtime, path, admitted)
    if path.route.group is Group.POLICED:
        await _admit_model(runtime, request, admitted)
    if admitted.key is not None:
        await _reserve(runtime, request, admitted)
    return await handler(request)


def client_secret(request: web.Request, dialect: Dialect) -> str:
    """The key the caller presents: ``Authorization: Bearer``, or Anthropic's ``x-api-key``."""
    secret = bearer_token(request.headers)
    if not secret and dialect is Dialect.ANTHROPIC:
        secret = request.headers.get("x-api-key", "").strip()
    return secret


def _authenticate(runtime: Runtime, request: web.Request, path: RequestPath) -> KeyRecord:
    """The caller's key; one answer for missing, unknown, revoked and expired keys."""
    keys = runtime.backends.keys
    secret = client_secret(request, path.route.dialect)
    record = keys.find(secret) if keys is not None else None
    if record is None or record.status() != "active":
        where = (
            "'x-api-key: sk-kallm-...'"
            if path.route.dialect is Dialect.ANTHROPIC
            else ("'Authorization: Bearer sk-kallm-...'")
        )
        raise AuthenticationError(f"Invalid API key: pass a kallm virtual key as {where}.")
    return record


def _check_route(runtime: Runtime, path: RequestPath, admitted: Admission) -> None:
    """Under virtual keys only routes kallm polices, and those the settings open."""
    if admitted.key is None:
        return
    group = path.route.group
    if group is Group.UNKNOWN:
        raise RouteNotFound(
            f"/v1/{'/'.join(path.segments)} is not a route kallm serves with virtual keys"
        )
    if group is Group.ORGANISATION:
        opened = runtime.settings.open_routes
        if path.route.name not in opened:
            raise RouteClosed(
                f"/v1/{path.route.name} acts on the organisation's shared account and is closed "
                "to virtual keys; an operator can open it with auth.open_routes"
            )
        admitted.charge_usd = runtime.settings.open_route_charge


async def _admit_model(runtime: Runtime, request: web.Request, admitted: Admission) -> None:
    body = await read_body(request, runtime.settings.body_timeout)
    await breathe(body)
    document = await parse_json_yielding(body)
    if not isinstance(document, dict):
        raise RequestError("request body must be a JSON object")
    if admitted.path.route is CHAT:
        payload = check_chat_request(document)  # the model and the limits among its checks
    else:
        payload = document
        check_model(payload.get("model"))
        check_limits(payload)
    model = str(payload["model"])
    admitted.body, admitted.payload = body, payload
    record = request_log(request)
    record.model = model
    admitted.routes = runtime.router.resolve(model)  # an unknown model: 404
    key = admitted.key
    if key is None:
        admitted.credential = _credential(request, admitted)
        return
    if not allowed(runtime.router, key, model, admitted.routes):
        raise ModelNotAllowed(f"This key may not use the model '{model}'.", param="model")
    refuse_account_state(payload, admitted.body, budgeted=key.budget_usd is not None)
    if admitted.path.route is COUNT_TOKENS:  # counting tokens is free: nothing to hold
        return
    admitted.estimate = admitted.bounds(runtime.prices)
    if key.budget_usd is not None:
        for route in admitted.routes:
            if runtime.prices.price_of(route.model) is None:
                raise PriceUnknown(
                    f"The model '{route.model}' has no price, so a key with a budget cannot use "
                    f'it; an operator can set one with [prices."{route.model}"] in kallm.toml',
                    param="model",
                )


def allowed(router: Router, key: KeyRecord, model: str, routes: list[Route]) -> bool:
    """An alias the key names literally is its routes granted (a glob such as
    ``gemini-2.5-flash*`` must not grant ``gemini-2.5-flash-smart`` routed to a pro model);
    otherwise every model the request may call (after alias resolution, as the provider
    knows it) must be on the key's list."""
    if key.models is None:
        return True
    if model in router.aliases and model in key.models:
        return True
    return all(
        key.allows(route.model) or key.allows(f"{route.provider.name}/{route.model}")
        for route in routes
    )


def _credential(request: web.Request, admitted: Admission) -> str:
    """With auth off, whose upstream key answers, for the cache scope. With a key of the
    server's own, every caller may share answers (any caller could have asked upstream
    with it). Without one, answers are shared only by callers presenting the same key
    (its digest is in the scope), and a caller with none gets a 401 before the cache is
    asked: a cached answer never reaches a caller the upstream would refuse."""
    if all(r.provider.config.api_key for r in admitted.routes):
        return SERVER_CREDENTIAL
    route = admitted.routes[0]
    secret = client_secret(request, admitted.path.route.dialect)
    if secret and route.provider.kind == "openai":
        return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()[:32]
    env = route.provider.config.api_key_env or "OPENAI_API_KEY"
    raise AuthenticationError(
        f"No API key: send 'Authorization: Bearer <key>' or start kallm with {env} set."
    )


async def _reserve(runtime: Runtime, request: web.Request, admitted: Admission) -> None:
    """Rate limits with the estimated tokens, then the budget at the worst-case cost."""
    key = admitted.key
    assert key is not None
    now = time.time()
    # the hold's own id: a client may send the same X-Request-Id twice at once
    hold = f"{request_log(request).request_id}.{unique_id()}"
    tokens = admitted.estimate.tokens if admitted.estimate and key.tpm is not None else 0
    state = await runtime.backends.limits.admit(key, tokens, hold, now)
    admitted.rate_headers = state.headers()
    if state.retry_after is not None:
        raise RateLimited(
            f"Rate limit reached: {state.reason} for this key. Retry in {state.retry_after:.0f}s.",
            headers=state.headers(),
        )
    admitted.tokens_reserved = tokens
    amount = admitted.estimate.usd if admitted.estimate else admitted.charge_usd
    admitted.reservation = await runtime.backends.ledger.reserve(key, amount, hold, now)


def require_payload(admitted: Admission) -> dict[str, Any]:
    if admitted.payload is None:
        raise RequestError("this route needs a JSON body naming a model")
    return admitted.payload


async def settle_once(runtime: Runtime, record: RequestLog) -> None:
    """Settle what the request's admission held, once: a stream settles (and its spend is
    committed) before its final event is written, so a client that saw the end was billed;
    the request context settles everything else when the response is done."""
    admitted = record.admission
    if admitted is None or record.settled:
        return
    record.settled = True
    if record.usage is not None and record.cache != "HIT" and admitted.payload is not None:
        admitted.estimate = admitted.estimate or admitted.bounds(runtime.prices)
        record.usage = admitted.estimate.plausible(record.usage)  # never a count of 10^400
    tokens = record.usage.total_tokens if record.usage and record.cache != "HIT" else 0
    status = record.status or 200
    record.cost_usd = await settle(
        runtime, admitted, record.cost_usd, tokens, record.saved_usd, status
    )


async def settle(
    runtime: Runtime,
    admitted: Admission,
    cost_usd: float,
    tokens: int,
    saved_usd: float,
    status: int,
) -> float:
    """Release what admission held, whatever happened: the reservation settles at what the
    request cost (a stream cut after the upstream billed still cost money; an opened
    organisation route costs its flat charge when it succeeded), the token estimate is
    replaced by the tokens used, and a hit adds what it saved. Returns the cost settled."""
    if admitted.charge_usd and status < 400:
        cost_usd = max(cost_usd, admitted.charge_usd)
    if admitted.estimate is not None and admitted.estimate.ceiling_usd > 0:
        # the most the request could cost: beyond it is an upstream misreporting its usage
        # (10^400 tokens), never a bill
        cost_usd = min(cost_usd, admitted.estimate.ceiling_usd)
    key = admitted.key
    if key is None:
        return cost_usd
    now = time.time()
    if admitted.reservation is not None:
        await runtime.backends.ledger.settle(admitted.reservation, cost_usd, now)
    if key.tpm is not None:
        request_id = admitted.reservation.id if admitted.reservation else ""
        await runtime.backends.limits.settle(key, admitted.tokens_reserved, tokens, request_id, now)
    if saved_usd:
        await runtime.backends.ledger.add_saved(key, saved_usd, now)
    return cost_usd
