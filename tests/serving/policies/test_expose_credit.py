"""Live feedback is split in two: every shown arm is exposed at impression time (reward 0) and
credited when a click or purchase arrives. The split must learn exactly what one update with the
final reward learns, for every policy, and a learner that sees exposures must learn from misses."""

import numpy as np
import pytest

from serving.bandit import registry
from serving.bandit.base import Arm, Arms


@pytest.mark.parametrize("name", sorted(registry.POLICIES))
def test_expose_then_credit_equals_one_update(name: str) -> None:
    rng = np.random.default_rng(7)
    whole, split = registry.make_policy(name, 3, 4), registry.make_policy(name, 3, 4)
    for t in range(40):
        arm, context = Arm(f"arm-{t % 6}", rng.standard_normal(4)), rng.standard_normal(3)
        reward = float(rng.random() < 0.3)
        whole.update(arm, context, reward)
        split.expose(arm, context)
        if reward:
            split.credit(arm, context, reward)
    a, b = whole.state_dict(), split.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        if a[key].dtype.kind == "f":
            np.testing.assert_allclose(a[key], b[key], atol=1e-9, err_msg=key)


def test_a_shown_but_ignored_arm_loses_to_a_clicked_one() -> None:
    """Two features, one always clicked and one never: with exposures the model tells them apart
    (fitted on clicks alone it would score both by their share of clicks, never below zero)."""
    policy = registry.make_policy("linucb", 1, 2, alpha=0.0, features="concat")
    good, bad = Arm("good", np.array([1.0, 0.0])), Arm("bad", np.array([0.0, 1.0]))
    context = np.zeros(1)
    for _ in range(50):
        policy.expose(good, context)
        policy.expose(bad, context)
        policy.credit(good, context, 1.0)
    decision = policy.select(context, Arms(("good", "bad"), np.stack([good.embedding, bad.embedding])), 2,
                             np.random.default_rng(0))
    assert decision.arm_ids == ("good", "bad")
    assert decision.scores[0] > 0.9 and abs(decision.scores[1]) < 0.1


def test_a_credit_alone_is_a_new_version_of_the_state() -> None:
    """Replicas re-pull a policy when its n_updates moves (serving/app/learner.py): a click that
    arrives after its impression must move it too, or the replicas would serve without it."""
    policy = registry.make_policy("linucb", 1, 2, features="concat")
    arm, context = Arm("a", np.array([1.0, 0.0])), np.zeros(1)
    policy.expose(arm, context)
    before, theta = policy.n_updates, policy.theta.copy()
    policy.credit(arm, context, 1.0)
    assert policy.n_updates == before + 1 and not np.allclose(policy.theta, theta)
