"""GCE-GNN's global graph and session relations against hand-built ones, and that it learns."""

from __future__ import annotations

import numpy as np
import torch

from ray_jobs.models import build_model
from ray_jobs.models.base import SEQ
from ray_jobs.models.gcegnn import BOTH, IN, OUT, SELF, _with_self_loops, global_neighbors, relation_types
from ray_jobs.models.srgnn import session_graphs
from session_support import MAX_LEN, N_ITEMS, cycle_prefixes, cycle_sessions, predicts_the_cycle, train_on_prefixes


def test_global_graph_counts_neighbours_within_epsilon_both_ways() -> None:
    # Items 0 1 2 and 1 0: with epsilon 2, pairs (0,1) x2 (twice: 0->1 and 1->0), (1,2), (0,2).
    neighbors, weights = global_neighbors([np.array([0, 1, 2]), np.array([1, 0])], n_items=4, epsilon=2, n_neighbors=2)
    assert neighbors.shape == (5, 2)  # SASRec ids: row 0 is padding
    assert neighbors[1].tolist() == [2, 3] and weights[1].tolist() == [2, 1]  # item 0: item 1 twice, item 2 once
    assert neighbors[2].tolist() == [1, 3] and weights[2].tolist() == [2, 1]
    assert neighbors[3].tolist() == [1, 2] and weights[3].tolist() == [1, 1]  # ties by id
    assert neighbors[4].tolist() == [0, 0] and weights[4].tolist() == [0, 0]  # item 3 never seen
    only_adjacent, _ = global_neighbors([np.array([0, 1, 2])], n_items=4, epsilon=1, n_neighbors=3)
    assert only_adjacent[1].tolist() == [2, 0, 0]  # 0 and 2 are two steps apart


def test_session_relations_are_the_papers_four_kinds() -> None:
    # Window 5 -> 8 -> 5 -> 10 (SASRec ids): nodes 5, 8, 10; edges 5->8, 8->5 (both ways), 5->10.
    graphs = session_graphs(torch.tensor([[0, 5, 8, 5, 10]]))
    kinds = _with_self_loops(relation_types(graphs.a_out), graphs.nodes)[0]
    assert kinds.tolist() == [[SELF, BOTH, OUT], [BOTH, SELF, 0], [IN, 0, SELF]]


def test_gcegnn_learns_the_next_item_of_a_cycle_and_keeps_its_graph_in_the_weights() -> None:
    data = cycle_sessions()
    params = {"hidden_dim": 32, "max_len": MAX_LEN, "dropout_global": 0.0}
    torch.manual_seed(0)
    model = build_model("gcegnn", data, params)
    assert model.get_buffer("neighbors")[1].tolist()[:2] == [2, 12]  # item 0's neighbours: 1 and 11
    assert predicts_the_cycle(train_on_prefixes(model, data))
    # Rebuilt without the training data (as serving does), the state dict carries the global graph.
    served = build_model("gcegnn", type("Catalogue", (), {"n_items": N_ITEMS})(), params)
    served.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(served.eval().score({SEQ: cycle_prefixes()}), model.score({SEQ: cycle_prefixes()}))
