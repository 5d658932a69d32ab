"""An ingress replica's copy of the learner's policies: pulled when stale, only what changed, and
kept (still selecting) while the learner cannot answer.

The learner here is a ``LearnerState`` behind an object with the ``policy_states.remote`` shape of
its Serve handle; the HTTP tests exercise the real deployment."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from serving.app.learner_state import LearnerState, policy_key
from serving.app.policy_mirror import PolicyMirror
from serving.bandit import Arm
from serving.experiments import Experiment

EXP = Experiment.model_validate({
    "name": "exp", "salt": "s", "variants": [
        {"name": "a", "policy": "linucb", "share": 0.5},
        {"name": "b", "policy": "popularity", "share": 0.5},
    ],
})
USER_DIM, ARM_DIM = 2, 3


class _Method:
    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def remote(self, *args: Any) -> Any:
        async def call() -> Any:
            return self._fn(*args)
        return call()


class _Learner:
    """The learner's ``policy_states`` over a real state, counting calls; ``down`` makes it fail."""

    def __init__(self, state: LearnerState) -> None:
        self.state, self.calls, self.down = state, [], False
        self.policy_states = _Method(self._policy_states)

    def _policy_states(self, known: dict[str, int]) -> dict[str, bytes]:
        if self.down:
            raise RuntimeError("learner restarting")
        self.calls.append(dict(known))
        return {k: p.to_bytes() for k, p in self.state.policies.items() if known.get(k) != p.n_updates}


def _arms() -> tuple[list[str], np.ndarray]:
    return ["x", "y", "z"], np.eye(3)


def _teach(state: LearnerState, best: str, n: int) -> None:
    """``n`` rounds of feedback on every arm: reward 1 for ``best``, 0 for the others."""
    ids, emb = _arms()
    policy = state.policies[policy_key("exp", "a")]
    for _ in range(n):
        for arm, vector in zip(ids, emb):
            policy.update(Arm(arm, vector), np.ones(USER_DIM), 1.0 if arm == best else 0.0)


def test_first_select_waits_for_a_pull_later_pulls_run_in_the_background_and_send_only_changes() -> None:
    learner = _Learner(LearnerState([EXP], USER_DIM, ARM_DIM))
    mirror = PolicyMirror(LearnerState([EXP], USER_DIM, ARM_DIM), learner, refresh_s=0.0)
    _teach(learner.state, "z", 50)
    ids, emb = _arms()

    async def scenario() -> None:
        decision = await mirror.select("exp", "a", np.ones(USER_DIM), ids, emb, 1)
        assert decision.arm_ids == ("z",)  # learned in the learner, selected in the replica
        assert learner.calls == [{"exp a": 0, "exp b": 0}]
        _teach(learner.state, "x", 200)
        stale = await mirror.select("exp", "a", np.ones(USER_DIM), ids, emb, 1)
        assert stale.arm_ids == ("z",)  # served from the copy it has while the pull runs
        await asyncio.sleep(0.01)
        assert learner.calls[-1] == {"exp a": 150, "exp b": 0}  # what it had; "exp b" is not sent back
        assert (await mirror.select("exp", "a", np.ones(USER_DIM), ids, emb, 1)).arm_ids == ("x",)

    asyncio.run(scenario())
    assert mirror.refresh.pulls >= 2


def test_mirror_pulls_at_most_every_refresh_s_and_keeps_its_copy_while_the_learner_is_down() -> None:
    learner = _Learner(LearnerState([EXP], USER_DIM, ARM_DIM))
    mirror = PolicyMirror(LearnerState([EXP], USER_DIM, ARM_DIM), learner, refresh_s=3600.0)
    _teach(learner.state, "y", 50)
    ids, emb = _arms()

    async def scenario() -> None:
        for _ in range(5):
            assert (await mirror.select("exp", "a", np.ones(USER_DIM), ids, emb, 1)).arm_ids == ("y",)
            await asyncio.sleep(0)
        assert len(learner.calls) == 1
        learner.down = True
        mirror.refresh._every_s = 0.0
        for _ in range(3):
            assert (await mirror.select("exp", "a", np.ones(USER_DIM), ids, emb, 1)).arm_ids == ("y",)
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert mirror.refresh.pulls == 1


def test_unknown_variant_is_a_key_error() -> None:
    learner = _Learner(LearnerState([EXP], USER_DIM, ARM_DIM))
    mirror = PolicyMirror(LearnerState([EXP], USER_DIM, ARM_DIM), learner, refresh_s=0.0)
    ids, emb = _arms()
    try:
        asyncio.run(mirror.select("exp", "nope", np.ones(USER_DIM), ids, emb, 1))
    except KeyError as exc:
        assert "nope" in str(exc)
    else:
        raise AssertionError("expected a KeyError")
