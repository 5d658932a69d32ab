"""Signed feedback tokens: a click or purchase counts only for a slate the server really served.

Each served bundle slate carries a token: an HMAC-SHA256, under a server-side key, over the
request id, the user, the experiment and variant, the shown bundle ids and the time of serving.
The frontend sends it back with the click or purchase (``feedback_token`` of the event contract).
The collector and ``POST /v1/feedback`` check it before anything is logged (a forged or mismatched
token is a 4xx and a dead letter), and the bandit learner checks it again when it folds the log,
together with what needs state: a request is clicked at most once per shown bundle and purchased
at most once (``LearnerState``).

Why HMAC by hand and not a JWT library: the token is one fixed claim read by our own services
only; ``hmac``/``hashlib`` of the standard library are all it needs, with no algorithm choice for
an attacker to play with.

Example:
    >>> signer = FeedbackSigner(b"k" * 32)
    >>> claim = FeedbackClaim("r1", "u1", "exp", "linucb", ("b1", "b2"), 1_700_000_000_000)
    >>> signer.verify(signer.issue(claim)) == claim
    True
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from streamrec.runtime.config import Settings

__all__ = [
    "FEEDBACK_REASONS",
    "FeedbackClaim",
    "FeedbackRejected",
    "FeedbackSigner",
    "check_claim",
    "signer_from_settings",
]

TOKEN_VERSION = 1
# Longest token the contract accepts: 20 shown ids of 64 characters plus the other fields fit.
MAX_TOKEN_CHARS = 4096
# Why a piece of feedback was not applied; the reasons of dead letters and of the metric.
FEEDBACK_REASONS = (
    "feedback_unsigned",  # no token: an organic click, never credited to a policy
    "feedback_malformed",  # not a token of ours
    "feedback_forged",  # the signature does not verify under our key
    "feedback_mismatch",  # the token is for another request or user
    "feedback_not_shown",  # the clicked/bought bundle was not in that slate
    "feedback_expired",  # outside the attribution window
    "feedback_replayed",  # a second click of one shown bundle, a second purchase of one request
)


class FeedbackRejected(ValueError):
    """Feedback that must not be credited; ``reason`` is one of :data:`FEEDBACK_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class FeedbackClaim:
    """What the server showed, as signed into a token."""

    request_id: str
    user_id: str
    experiment: str
    variant: str
    shown: tuple[str, ...]
    issued_at_ms: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FeedbackSigner:
    """Issues and verifies tokens under one key (at least 32 bytes)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the feedback signing key must be at least 32 bytes")
        self._key = key

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest())

    def issue(self, claim: FeedbackClaim) -> str:
        body = [TOKEN_VERSION, claim.request_id, claim.user_id, claim.experiment, claim.variant,
                list(claim.shown), claim.issued_at_ms]
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{self._mac(payload)}"

    def verify(self, token: object) -> FeedbackClaim:
        """The claim of a token signed with our key; :class:`FeedbackRejected` otherwise."""
        if not isinstance(token, str) or not token:
            raise FeedbackRejected("feedback_unsigned", "the feedback carries no feedback_token")
        payload, dot, mac = token.partition(".")
        if not dot or len(token) > MAX_TOKEN_CHARS or not token.isascii():
            raise FeedbackRejected("feedback_malformed", "feedback_token is not a token this service issued")
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise FeedbackRejected("feedback_forged", "feedback_token does not verify")
        try:
            version, request_id, user_id, experiment, variant, shown, issued = json.loads(_unb64(payload))
            claim = FeedbackClaim(str(request_id), str(user_id), str(experiment), str(variant),
                                  tuple(str(s) for s in shown), int(issued))
        except (ValueError, TypeError) as exc:  # signed by us, so only a version we no longer read
            raise FeedbackRejected("feedback_malformed", f"feedback_token unreadable: {exc}") from None
        if version != TOKEN_VERSION:
            raise FeedbackRejected("feedback_malformed", f"feedback_token version {version} is not {TOKEN_VERSION}")
        return claim


def check_claim(
    claim: FeedbackClaim, *, request_id: str, user_id: str, bundle_id: str, at_ms: int, window_s: float,
) -> None:
    """The stateless checks of one piece of feedback against its verified claim.

    Args:
        claim: the verified token's claim.
        request_id, user_id, bundle_id: what the feedback says it is about.
        at_ms: when the feedback arrived (server clock or log time), epoch milliseconds.
        window_s: the attribution window after the slate was served.

    Raises:
        FeedbackRejected: mismatched request/user, a bundle not shown, or outside the window.
    """
    if claim.request_id != request_id or claim.user_id != user_id:
        raise FeedbackRejected("feedback_mismatch", "feedback_token was issued for another request or user")
    if bundle_id not in claim.shown:
        raise FeedbackRejected("feedback_not_shown", f"bundle {bundle_id!r} was not shown in request {request_id}")
    # A little slack before issue time: the producer's clock may trail the replica's.
    if not claim.issued_at_ms - 5_000 <= at_ms <= claim.issued_at_ms + window_s * 1000:
        raise FeedbackRejected("feedback_expired", f"feedback outside the {window_s:.0f}s attribution window")


def _local_key(path: Path) -> bytes:
    """The embedded stack's key: made once per state dir, readable by its owner only."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    try:
        os.link(tmp, path)  # never replaces a key another process made meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes()


def signer_from_settings(settings: Settings) -> FeedbackSigner:
    """``serving.feedback_signing_key``, else a key kept in the state dir (embedded stack only:
    production configuration requires the setting, see ``streamrec.runtime.config``)."""
    configured = settings.serving.feedback_signing_key
    if configured is not None:
        return FeedbackSigner(configured.get_secret_value().encode())
    return FeedbackSigner(_local_key(settings.data.state_dir / "secrets" / "feedback_signing.key"))
