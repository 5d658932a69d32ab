"""`streamrec ope` on what the running recommender logs: `/v1/bundles` impressions carry their whole
candidate set, `/v1/feedback` clicks are attributed, and the logging policy's own variant replayed
as target gives back its on-policy value."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from recommender_support import EXPERIMENTS, recommender, wait_for  # noqa: F401 (fixture)

from serving.bandit.impressions import CANDIDATES_HEADER, decode_candidates
from serving.recommend.bundle_features import ARM_DIM
from streamrec.cli import build_parser
from streamrec.runtime.kafka import read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.ray]


def _impressions(settings, request_ids: set[str]) -> list:
    records = read_topic(settings.kafka, settings.kafka.topics.events, timeout_s=20)
    return [r for r in records if json.loads(r.value).get("type") == "impression" and json.loads(r.value).get("request_id") in request_ids]


def test_served_impressions_replay_through_streamrec_ope(recommender, tmp_path) -> None:
    served: dict[str, dict] = {}
    with recommender.client() as c:
        for i in range(12):
            body = c.get("/v1/bundles", params={"user_id": f"ope-user-{i}", "experiment": "solo_ucb", "k": 2}).json()
            served[body["request_id"]] = body
            if i % 3 == 0:  # a click on the top bundle
                r = c.post("/v1/feedback", json={"type": "click", "request_id": body["request_id"], "user_id": body["user_id"],
                                                 "bundle_id": body["bundles"][0]["bundle_id"], "position": 0,
                                                 "feedback_token": body["feedback_token"]})
                assert r.status_code == 200, r.text
    records = wait_for(lambda: (lambda f: f if len(f) == len(served) else None)(_impressions(recommender.settings, set(served))),
                       timeout_s=30, what="the impressions")
    for record in records:
        event = json.loads(record.value)
        ids, embeddings, items = decode_candidates(dict(record.headers)[CANDIDATES_HEADER])
        assert embeddings.shape == (len(ids), ARM_DIM) and np.all(np.isfinite(embeddings))
        assert [s["id"] for s in event["slots"]] == [b["bundle_id"] for b in served[event["request_id"]]["bundles"]]
        assert {s["id"] for s in event["slots"]} <= set(ids)
        # every candidate's items are logged, the shown ones as the response gave them
        assert set(items) == set(ids) and all(items[i] for i in ids)
        assert all(list(items[b["bundle_id"]]) == b["items"] for b in served[event["request_id"]]["bundles"])
    experiments_file = tmp_path / "experiments.yaml"
    experiments_file.write_text(yaml.safe_dump({"experiments": EXPERIMENTS}))
    out = tmp_path / "ope.json"
    # A uniformly random target: its estimate exists for any log; values are checked in test_ope_cli.py.
    args = build_parser().parse_args(["ope", "--policy", "random", "--experiment", "solo_ucb",
                                      "--experiments-file", str(experiments_file), "--json", str(out)])
    assert args.func(args, recommender.settings) == 0
    doc = json.loads(out.read_text())
    # Other tests of the session may have logged solo_ucb impressions too: at least ours are there.
    assert doc["n"] >= len(served)
    assert doc["logging_policy"].startswith("solo_ucb: ")
    assert {e["estimator"] for e in doc["estimates"]} >= {"IPS", "SNIPS"}
    assert 0.0 < doc["on_policy_value"] <= 1.0  # our clicks on top bundles are attributed
