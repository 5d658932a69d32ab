"""A learner whose feedback favours one named feature learns a positive weight on it, reported
by name (``/v1/experiments/{name}`` shows it per variant)."""

from __future__ import annotations

import json
import uuid

import numpy as np

from serving.app.learner_state import Attribution, LearnerState
from serving.bandit.impressions import CONTEXT_HEADER
from serving.experiments import Experiment
from serving.feedback_tokens import FeedbackClaim, FeedbackSigner
from serving.recommend.bundle_features import ARM_DIM, ARM_FEATURES, USER_DIM

SIGNER = FeedbackSigner(b"test-feedback-signing-key-0123456789")
EXP = Experiment.model_validate({
    "name": "exp", "salt": "s", "variants": [
        {"name": "ucb", "policy": "linucb", "params": {"features": "concat", "alpha": 0.3}, "share": 0.5},
        {"name": "pop", "policy": "popularity", "share": 0.5},
    ],
})
FAVOURED = ARM_FEATURES.index("in_history")


def test_feedback_that_favours_one_feature_teaches_a_positive_weight_on_it() -> None:
    rng = np.random.default_rng(0)
    state = LearnerState([EXP], USER_DIM, ARM_DIM, attribution=Attribution(SIGNER, window_s=3600.0))
    offset = 0
    for n in range(300):
        request_id = f"r{n}"
        arms = {f"b{n}-{j}": rng.uniform(0, 1, ARM_DIM) for j in range(3)}
        for vector in arms.values():
            vector[FAVOURED] = float(rng.random() < 0.5)
        ctx = {"e": "exp", "v": "ucb", "x": rng.uniform(0, 1, USER_DIM).tolist(),
               "a": {b: v.tolist() for b, v in arms.items()}, "i": {b: ["i"] for b in arms}}
        value = json.dumps({"type": "impression", "request_id": request_id, "user_id": "u"}).encode()
        state.apply_record("events", 0, offset, 1000, value, [(CONTEXT_HEADER, json.dumps(ctx).encode())])
        offset += 1
        claim = SIGNER.issue(FeedbackClaim(request_id, "u", "exp", "ucb", tuple(arms), 1000))
        for bundle_id, vector in arms.items():
            if rng.random() < (0.7 if vector[FAVOURED] else 0.05):  # clicked for that feature alone
                click = {"type": "click", "event_id": str(uuid.uuid4()), "request_id": request_id, "user_id": "u",
                         "bundle_id": bundle_id, "feedback_token": claim}
                state.apply_record("events", 0, offset, 1000, json.dumps(click).encode(), [])
                offset += 1
    weights = state.stats()["feature_weights"]
    assert set(weights) == {"exp ucb"}  # popularity has no shared weights
    arm = weights["exp ucb"]["arm"]
    assert list(arm) == list(ARM_FEATURES)
    assert arm["in_history"] > 0.5
    assert arm["in_history"] == max(arm.values())
    others = [abs(w) for name, w in arm.items() if name != "in_history"]
    assert max(others) < 0.2 * arm["in_history"]
