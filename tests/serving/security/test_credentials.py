"""Feedback tokens and the credential gate, without a stack: forgery, tampering, throttled guessing."""

from __future__ import annotations

import pytest

from serving.auth import AuthRejected, CredentialGate, Role
from serving.feedback_tokens import FeedbackClaim, FeedbackRejected, FeedbackSigner, check_claim, signer_from_settings
from streamrec.runtime.config import Settings

CLAIM = FeedbackClaim("req-1", "user-1", "exp", "linucb", ("b1", "b2", "b3"), 1_700_000_000_000)
SIGNER = FeedbackSigner(b"k" * 32)


def test_a_token_verifies_to_its_claim_and_nothing_else() -> None:
    token = SIGNER.issue(CLAIM)
    assert SIGNER.verify(token) == CLAIM
    with pytest.raises(FeedbackRejected) as forged:
        FeedbackSigner(b"q" * 32).verify(token)
    assert forged.value.reason == "feedback_forged"
    payload, _, mac = token.partition(".")
    tampered = SIGNER.issue(FeedbackClaim("req-1", "user-1", "exp", "linucb", ("b1", "b2", "b3", "b9"), CLAIM.issued_at_ms))
    with pytest.raises(FeedbackRejected) as spliced:  # another claim's payload under this MAC
        SIGNER.verify(tampered.partition(".")[0] + "." + mac)
    assert spliced.value.reason == "feedback_forged"
    for junk, reason in ((None, "feedback_unsigned"), ("", "feedback_unsigned"), ("abc", "feedback_malformed"),
                         ("é.x", "feedback_malformed"), (123, "feedback_unsigned")):
        with pytest.raises(FeedbackRejected) as rejected:
            SIGNER.verify(junk)
        assert rejected.value.reason == reason


@pytest.mark.parametrize(
    ("request_id", "user_id", "bundle_id", "at_ms", "reason"),
    [
        ("req-2", "user-1", "b1", CLAIM.issued_at_ms, "feedback_mismatch"),
        ("req-1", "user-2", "b1", CLAIM.issued_at_ms, "feedback_mismatch"),
        ("req-1", "user-1", "b9", CLAIM.issued_at_ms, "feedback_not_shown"),
        ("req-1", "user-1", "b1", CLAIM.issued_at_ms + 60_001, "feedback_expired"),
        ("req-1", "user-1", "b1", CLAIM.issued_at_ms - 60_000, "feedback_expired"),
    ],
)
def test_check_claim_refuses_what_the_slate_did_not_show(request_id, user_id, bundle_id, at_ms, reason) -> None:
    with pytest.raises(FeedbackRejected) as rejected:
        check_claim(CLAIM, request_id=request_id, user_id=user_id, bundle_id=bundle_id, at_ms=at_ms, window_s=60)
    assert rejected.value.reason == reason
    check_claim(CLAIM, request_id="req-1", user_id="user-1", bundle_id="b3", at_ms=CLAIM.issued_at_ms + 60_000, window_s=60)


def test_the_local_key_is_made_once_and_private(tmp_path) -> None:
    settings = Settings(data={"state_dir": str(tmp_path)})
    first, second = signer_from_settings(settings), signer_from_settings(settings)
    assert second.verify(first.issue(CLAIM)) == CLAIM
    key = tmp_path / "secrets" / "feedback_signing.key"
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    configured = Settings(data={"state_dir": str(tmp_path)}, serving={"feedback_signing_key": "c" * 40})
    with pytest.raises(FeedbackRejected):
        signer_from_settings(configured).verify(first.issue(CLAIM))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _gate(clock: Clock) -> CredentialGate:
    tokens = {Role.FRONTEND: b"front-token", Role.READER: b"reader-token", Role.ADMIN: b"admin-token-0123"}
    return CredentialGate(tokens, failures_per_s=1.0, failure_burst=5, admin_per_s=2.0, admin_burst=3, clock=clock)


def _status(gate: CredentialGate, header: str, roles: tuple[Role, ...]) -> int:
    try:
        gate.check(header, roles)
    except AuthRejected as exc:
        return exc.status
    return 200


def test_each_endpoint_takes_only_its_roles_tokens() -> None:
    gate = _gate(Clock())
    assert _status(gate, "Bearer front-token", (Role.FRONTEND,)) == 200
    assert _status(gate, "Bearer front-token", (Role.ADMIN,)) == 401
    assert _status(gate, "Bearer reader-token", (Role.READER, Role.ADMIN)) == 200
    assert _status(gate, "Bearer reader-token", (Role.ADMIN,)) == 401
    assert _status(gate, "Basic admin-token-0123", (Role.ADMIN,)) == 401
    assert _status(gate, "", (Role.FRONTEND,)) == 401


def test_guessing_the_admin_token_is_throttled_and_a_right_guess_is_not_told_apart() -> None:
    clock = Clock()
    gate = _gate(clock)
    answers = [_status(gate, f"Bearer guess-{i}", (Role.ADMIN,)) for i in range(50)]
    assert answers[:5] == [401] * 5 and set(answers[5:]) == {429}
    # while throttled, the right token gets the same 429 as a wrong one
    assert _status(gate, "Bearer admin-token-0123", (Role.ADMIN,)) == 429
    clock.now += 1.0  # one failure refilled
    assert _status(gate, "Bearer admin-token-0123", (Role.ADMIN,)) == 200
    # the frontend is never locked out by guessing at the admin endpoints
    assert _status(gate, "Bearer front-token", (Role.FRONTEND,)) == 200


def test_admin_requests_are_rate_limited_per_replica() -> None:
    clock = Clock()
    gate = _gate(clock)
    assert [_status(gate, "Bearer admin-token-0123", (Role.ADMIN,)) for _ in range(5)] == [200, 200, 200, 429, 429]
    clock.now += 0.5
    assert _status(gate, "Bearer admin-token-0123", (Role.ADMIN,)) == 200


def test_production_refuses_default_credentials_at_start_up() -> None:
    with pytest.raises(ValueError, match="collector.auth_token.*serving.admin_token.*serving.reader_token.*feedback_signing_key"):
        Settings(environment="production")
    with pytest.raises(ValueError, match="shorter than 32 bytes"):
        Settings(environment="production", collector={"auth_token": "f" * 24},
                 serving={"admin_token": "a" * 24, "reader_token": "r" * 24, "feedback_signing_key": "short"})
    ok = Settings(environment="production", collector={"auth_token": "f" * 24},
                  serving={"admin_token": "a" * 24, "reader_token": "r" * 24, "feedback_signing_key": "k" * 32})
    assert ok.environment == "production"


def test_config_show_masks_every_secret(monkeypatch, capsys) -> None:
    from streamrec import cli

    monkeypatch.setenv("STREAMREC_FEAST__REDIS_CONNECTION_STRING", "redis.svc:6379,password=hunter2-redis,ssl=true")
    monkeypatch.setenv("STREAMREC_SERVING__FEEDBACK_SIGNING_KEY", "signing-key-" + "s" * 30)
    monkeypatch.setenv("STREAMREC_KAFKA__SASL_PASSWORD", "kafka-pass-77")
    from streamrec.runtime.config import reload_settings

    reload_settings()
    try:
        assert cli.main(["config", "show"]) == 0
    finally:
        monkeypatch.undo()
        reload_settings()
    shown = capsys.readouterr().out
    for secret in ("hunter2-redis", "signing-key-", "kafka-pass-77", "streamrec-dev-token", "streamrec-dev-admin-token",
                   "streamrec-dev-reader-token"):
        assert secret not in shown
    assert "password=***" in shown
