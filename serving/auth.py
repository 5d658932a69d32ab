"""Bearer credentials of the serving endpoints, with bounded guessing of the privileged ones.

Three kinds of token, each from configuration:

* ``frontend`` (``collector.auth_token``): events, bundles, recommendations, feedback. It ships in
  the shop's pages, so it identifies the frontend, not a person, and is not rate limited here.
* ``reader`` (``serving.reader_token``): experiment results for dashboards, nothing else.
* ``admin`` (``serving.admin_token``): experiment definitions, the learner's state, user deletion.

Privileged endpoints (reader, admin) answer 429 once failed credentials exceed
``serving.auth_failures_per_s`` (burst ``auth_failure_burst``) per replica, until the bucket
refills, whatever the next credential is: a guess can never be told apart by its answer while
guessing is being throttled. Admin requests are limited to ``serving.admin_requests_per_s`` too.

Example:
    >>> gate = CredentialGate({Role.ADMIN: b"a" * 24}, failures_per_s=1, failure_burst=2,
    ...                       admin_per_s=5, admin_burst=5)
    >>> gate.check("Bearer " + "a" * 24, (Role.ADMIN,))
    <Role.ADMIN: 'admin'>
"""

from __future__ import annotations

import enum
import hmac
import time
from collections.abc import Callable

from streamrec.runtime.config import Settings

__all__ = [
    "FRONTEND_KEY_SCHEME",
    "SCHEME_OF_ROLE",
    "SECURITY_SCHEMES",
    "AuthRejected",
    "CredentialGate",
    "Role",
    "TokenBucket",
    "gate_from_settings",
    "openapi_security",
]


class Role(enum.Enum):
    FRONTEND = "frontend"
    READER = "reader"
    ADMIN = "admin"


_PRIVILEGED = frozenset({Role.READER, Role.ADMIN})

# The credentials as OpenAPI security schemes, so that generated clients know what to send: one
# scheme per token (an operation's requirements then name exactly the tokens it takes), and the
# collector's query-parameter form of the frontend key.
SCHEME_OF_ROLE = {Role.FRONTEND: "frontendToken", Role.READER: "readerToken", Role.ADMIN: "adminToken"}
FRONTEND_KEY_SCHEME = "frontendKey"
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    SCHEME_OF_ROLE[Role.FRONTEND]: {
        "type": "http", "scheme": "bearer",
        "description": "The publishable frontend key (collector.auth_token): events, bundles, recommendations, feedback.",
    },
    SCHEME_OF_ROLE[Role.READER]: {
        "type": "http", "scheme": "bearer",
        "description": "The reader token (serving.reader_token): experiment results, for dashboards.",
    },
    SCHEME_OF_ROLE[Role.ADMIN]: {
        "type": "http", "scheme": "bearer",
        "description": "The admin token (serving.admin_token): experiment definitions, the learner, user deletion.",
    },
    FRONTEND_KEY_SCHEME: {
        "type": "apiKey", "in": "query", "name": "key",
        "description": "The frontend key as `?key=`, for `navigator.sendBeacon`, which cannot set headers "
                       "(collector only; the Authorization header wins when both are sent).",
    },
}


def openapi_security(*roles: Role, query_key: bool = False) -> list[dict[str, list[str]]]:
    """An operation's OpenAPI ``security``: any one of the roles' tokens (the list is an OR), and
    with ``query_key`` the frontend key as a query parameter too."""
    requirements: list[dict[str, list[str]]] = [{SCHEME_OF_ROLE[role]: []} for role in roles]
    return requirements + ([{FRONTEND_KEY_SCHEME: []}] if query_key else [])


class AuthRejected(Exception):
    """401 (no or wrong credential) or 429 (throttled); ``headers`` go on the response."""

    def __init__(self, status: int, reason: str, detail: str, headers: dict[str, str]) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail, self.headers = status, reason, detail, headers


class TokenBucket:
    """``rate`` per second, at most ``burst`` at once (monotonic clock)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, float(burst), clock
        self._tokens, self._at = float(burst), clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def empty(self) -> bool:
        self._refill()
        return self._tokens < 1.0

    def take(self) -> bool:
        self._refill()
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def retry_after_s(self) -> int:
        return max(1, int((1.0 - self._tokens) / self.rate + 0.999))


class CredentialGate:
    """Checks ``Authorization: Bearer`` against the tokens of the roles an endpoint allows."""

    def __init__(
        self, tokens: dict[Role, bytes], *, failures_per_s: float, failure_burst: int, admin_per_s: float, admin_burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tokens = tokens
        self._failures = TokenBucket(failures_per_s, failure_burst, clock)
        self._admin = TokenBucket(admin_per_s, admin_burst, clock)

    def _throttled(self, bucket: TokenBucket, what: str) -> AuthRejected:
        return AuthRejected(429, "too_many_requests", f"{what}; retry later", {"Retry-After": str(bucket.retry_after_s())})

    def check(self, authorization: str, allowed: tuple[Role, ...]) -> Role:
        """The role whose token was sent; :class:`AuthRejected` otherwise."""
        privileged = any(role in _PRIVILEGED for role in allowed)
        if privileged and self._failures.empty():
            raise self._throttled(self._failures, "too many failed credentials")
        scheme, _, presented = authorization.partition(" ")
        sent = presented.strip().encode() if scheme.lower() == "bearer" else b""
        matched = None
        for role in allowed:  # every allowed token is compared, in constant time each
            expected = self._tokens.get(role)
            if expected and sent and hmac.compare_digest(sent, expected) and matched is None:
                matched = role
        if matched is None:
            if privileged:
                self._failures.take()
            names = " or ".join(r.value for r in allowed)
            raise AuthRejected(401, "unauthorized", f"send 'Authorization: Bearer <{names} token>'",
                               {"WWW-Authenticate": "Bearer"})
        if matched is Role.ADMIN and not self._admin.take():
            raise self._throttled(self._admin, "admin request rate exceeded")
        return matched


def gate_from_settings(settings: Settings, clock: Callable[[], float] = time.monotonic) -> CredentialGate:
    s = settings.serving
    tokens = {
        Role.FRONTEND: settings.collector.auth_token.get_secret_value().encode(),
        Role.READER: s.reader_token.get_secret_value().encode(),
        Role.ADMIN: s.admin_token.get_secret_value().encode(),
    }
    return CredentialGate(
        tokens, failures_per_s=s.auth_failures_per_s, failure_burst=s.auth_failure_burst,
        admin_per_s=s.admin_requests_per_s, admin_burst=s.admin_burst, clock=clock,
    )
