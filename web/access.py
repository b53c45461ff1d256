"""Who may call what on the web server (``access.*`` settings), as one aiohttp middleware.

Every request is classed by method and path (``required``), then checked against what it
presents (``presented``): an ``X-API-Key`` header, ``Authorization: Bearer <secret>``, or
``Authorization: Basic`` with the secret as the password (what a browser sends after its login
prompt, including for the dashboard's Server-Sent Events stream, which cannot set headers).

==============================================  ==========================================
request                                         needs
==============================================  ==========================================
``OPTIONS`` (CORS preflight), ``/health``,      nothing
``/metrics``, ``/openapi.json``
``POST <ingest path>`` and ``<path>/batch``     an ingest key, when ``ingest_keys`` is set
any other ``GET`` / ``HEAD``                    ``read_token`` or ``admin_token``, when
                                                ``read_token`` is set
any other method (destructive operations)       ``admin_token``; refused when it is unset
==============================================  ==========================================

Nothing configured leaves ingestion and reads open, as before access control existed. A
request for a path or method the server does not have gets its 404 or 405 whatever it
presents: nothing runs for it. Secrets
are compared in constant time (SHA-256 digests through ``hmac.compare_digest``, every
configured secret compared each time) and are never logged nor echoed. Each ingest key has its
own rate limit (``limits``' moving window, per worker process): over it, 429 with Retry-After.

A request that Faust's table routing forwards to the worker owning the key keeps its headers
(a Faust internal, app/faust_compat.py), so the credentials travel with it and the owner
checks them again.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import limits
from aiohttp import web as aiohttp_web
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from app import app, faust_compat, metrics
from app.settings import AccessSettings

#: the headers a client may carry an ingest key in (CORS allows them, web/views.py)
INGEST_HEADERS = ("X-API-Key", "Authorization")
PUBLIC_PATHS = frozenset({"/health", "/metrics", "/openapi.json"})
REALM = 'realm="analytics"'

Handler = Callable[[aiohttp_web.Request], Awaitable[aiohttp_web.StreamResponse]]


class Need(enum.Enum):
    """What a request must present."""

    NOTHING = "nothing"
    INGEST = "an ingest key"
    READ = "the read token"
    ADMIN = "the admin token"


class Role(enum.Enum):
    INGEST = "ingest"
    READ = "read"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Credential:
    """Whose secret a request presented: its role and, for an ingest key, its name."""

    role: Role
    name: str


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    message: str
    headers: Mapping[str, str]
    reason: str  # app.metrics.REFUSAL_REASONS


def required(method: str, path: str, ingest_path: str) -> Need:
    """What the request ``method path`` needs (the table in the module docstring)."""
    if method == "OPTIONS" or path in PUBLIC_PATHS:
        return Need.NOTHING
    if method == "POST" and path in (ingest_path, ingest_path + "/batch"):
        return Need.INGEST
    return Need.READ if method in ("GET", "HEAD") else Need.ADMIN


def presented(headers: Mapping[str, str]) -> str | None:
    """The secret the request carries, from X-API-Key or Authorization (Bearer or Basic)."""
    key = headers.get("X-API-Key")
    if key:
        return key
    scheme, _, value = headers.get("Authorization", "").strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


class Credentials:
    """The configured secrets, as digests; ``identify`` compares against all of them."""

    def __init__(self, settings: AccessSettings) -> None:
        entries = [
            (_digest(entry.key.get_secret_value()), Credential(Role.INGEST, name))
            for name, entry in settings.ingest_keys.items()
        ]
        if settings.read_token is not None:
            entries.append((_digest(settings.read_token.get_secret_value()), _READ))
        if settings.admin_token is not None:
            entries.append((_digest(settings.admin_token.get_secret_value()), _ADMIN))
        self._entries = entries
        self.ingest_keys = bool(settings.ingest_keys)
        self.read_token = settings.read_token is not None
        self.admin_token = settings.admin_token is not None

    def identify(self, secret: str) -> Credential | None:
        """The credential ``secret`` is, in time independent of which one (or none) matches."""
        digest = _digest(secret)
        found = None
        for known, credential in self._entries:
            if hmac.compare_digest(digest, known):
                found = credential
        return found


_READ = Credential(Role.READ, "read")
_ADMIN = Credential(Role.ADMIN, "admin")
_HOW = "as X-API-Key: <key> or Authorization: Bearer <key>"


def _unauthenticated(message: str, need: Need) -> Refusal:
    challenge = f'Basic {REALM}, charset="UTF-8"' if need is Need.READ else f"Bearer {REALM}"
    return Refusal(401, message, {"WWW-Authenticate": challenge}, "unauthenticated")


def _forbidden(message: str) -> Refusal:
    return Refusal(403, message, {}, "forbidden")


def check(need: Need, secret: str | None, credentials: Credentials) -> Refusal | Credential | None:
    """The refusal of a request that needs ``need`` and presented ``secret``, else the
    credential it presented (None: nothing needed, or nothing configured to need)."""
    if need is Need.NOTHING:
        return None
    if need is Need.INGEST and not credentials.ingest_keys:
        return None
    if need is Need.READ and not credentials.read_token:
        return None
    if need is Need.ADMIN and not credentials.admin_token:
        return _forbidden(
            "destructive operations are disabled: no admin token is configured (access.admin_token)"
        )
    if secret is None:
        how = "Authorization: Bearer <token>" if need is not Need.INGEST else _HOW
        return _unauthenticated(f"this endpoint needs {need.value}: send it {how}", need)
    credential = credentials.identify(secret)
    if credential is None:
        return _unauthenticated(
            f"the credentials sent are not valid; this needs {need.value}", need
        )
    allowed = {
        Need.INGEST: {Role.INGEST},
        Need.READ: {Role.READ, Role.ADMIN},
        Need.ADMIN: {Role.ADMIN},
    }[need]
    if credential.role not in allowed:
        return _forbidden(
            f"a {credential.role.value} credential cannot do this: it needs {need.value}"
        )
    return credential


class RateLimits:
    """Each ingest key's own limit (its ``rate_limit``, else ``access.ingest_rate_limit``)."""

    def __init__(self, settings: AccessSettings, clock: Callable[[], float] = time.time) -> None:
        default = settings.ingest_rate_limit
        chosen = {name: entry.rate_limit or default for name, entry in settings.ingest_keys.items()}
        self._texts = {name: text for name, text in chosen.items() if text}
        self._limits = {name: limits.parse(text) for name, text in self._texts.items()}
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._clock = clock

    async def refuse(self, name: str) -> Refusal | None:
        """Count one request of key ``name``; a 429 refusal when it is over its limit."""
        item = self._limits.get(name)
        if item is None or await self._limiter.hit(item, name):
            return None
        stats = await self._limiter.get_window_stats(item, name)
        wait = max(1, math.ceil(stats.reset_time - self._clock()))
        return Refusal(
            429,
            f"the key {name!r} is over its rate limit of {self._texts[name]}; retry in {wait} s",
            {"Retry-After": str(wait)},
            "rate_limited",
        )


def middleware(settings: AccessSettings, ingest_path: str) -> Any:
    """The aiohttp middleware enforcing ``settings`` on every request."""
    credentials = Credentials(settings)
    rate_limits = RateLimits(settings)

    @aiohttp_web.middleware
    async def access_control(
        request: aiohttp_web.Request, handler: Handler
    ) -> aiohttp_web.StreamResponse:
        if request.match_info.http_exception is not None:
            return await handler(request)  # no such route or method: 404 / 405 for anyone
        need = required(request.method, request.path, ingest_path)
        outcome = check(need, presented(request.headers), credentials)
        if isinstance(outcome, Credential) and outcome.role is Role.INGEST:
            outcome = await rate_limits.refuse(outcome.name) or outcome
        if isinstance(outcome, Refusal):
            metrics.http_refused(outcome.reason)
            return aiohttp_web.json_response(
                {"error": outcome.message}, status=outcome.status, headers=dict(outcome.headers)
            )
        return await handler(request)

    return access_control


faust_compat.aiohttp_application(app).middlewares.append(
    middleware(app.analytics_settings.access, app.analytics_settings.sources.http.path)
)
