"""SR-GNN's session graphs against hand-built ones, its prefix training windows, and that it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_jobs.models import MODELS, build_model
from ray_jobs.models.base import SEQ
from ray_jobs.models.srgnn import SRGNN, SRGNNConfig, session_graphs
from ray_jobs.trainers.batches import sequence_windows
from session_support import MAX_LEN, cycle_sessions, predicts_the_cycle, train_on_prefixes


class _Catalogue:
    n_items = 12


def test_graph_of_a_session_with_a_revisit_is_the_papers() -> None:
    # Window of SASRec ids: items 4 -> 7 -> 4 -> 9 (ids 5, 8, 5, 10), left-padded to 6.
    graphs = session_graphs(torch.tensor([[0, 0, 5, 8, 5, 10]]))
    assert graphs.nodes.tolist() == [[5, 8, 10]]  # distinct items, sorted
    assert graphs.alias.tolist() == [[0, 0, 0, 1, 0, 2]] and graphs.mask.tolist() == [[False, False, True, True, True, True]]
    # Edges 5->8, 8->5, 5->10: node 5 has two outgoing edges (each 1/2), node 8 one.
    assert graphs.a_out[0].tolist() == [[0, 0.5, 0.5], [1, 0, 0], [0, 0, 0]]
    # Incoming: node 5 from 8; node 8 from 5; node 10 from 5 (each normalised by its in-degree).
    assert graphs.a_in[0].tolist() == [[0, 1, 0], [1, 0, 0], [1, 0, 0]]


def _reference_graph(row: list[int]) -> tuple[list[int], list[int], set[tuple[int, int]]]:
    """One window's distinct items (sorted), each position's node (0 for padding) and its edges,
    counted by hand: the path skips padding wherever it is."""
    nodes = sorted({i for i in row if i > 0})
    alias = [nodes.index(i) if i > 0 else 0 for i in row]
    path = [nodes.index(i) for i in row if i > 0]
    return nodes, alias, set(zip(path, path[1:]))


def test_batched_graphs_match_a_per_window_count_with_or_without_fixed_slots() -> None:
    """The tensor-only builder (what the exported encoder runs) against a count per window, on
    random batches with padding at the start and, some, in the middle; with ``n_nodes`` = L the
    extra slots stay empty and the real ones are unchanged."""
    generator = torch.Generator().manual_seed(0)
    for trial in range(200):
        batch, length = (int(torch.randint(1, 7, (1,), generator=generator)) for _ in range(2))
        seq = torch.randint(1, 6, (batch, length), generator=generator)
        for b in range(batch):
            seq[b, : int(torch.randint(0, length + 1, (1,), generator=generator))] = 0
        if trial % 4 == 0 and length > 2:
            seq[:, 1] = 0
        expected = [_reference_graph(row) for row in seq.tolist()]
        n = max(1, max(len(nodes) for nodes, _, _ in expected))
        for slots in (None, length):
            graphs = session_graphs(seq, slots)
            width = n if slots is None else max(n, length)
            assert graphs.nodes.shape == (batch, width) and graphs.a_out.shape == (batch, width, width)
            for b, (nodes, alias, edges) in enumerate(expected):
                assert graphs.nodes[b].tolist() == nodes + [0] * (width - len(nodes))
                assert graphs.alias[b].tolist() == alias
                assert {tuple(e) for e in torch.nonzero(graphs.a_out[b]).tolist()} == edges
                out_degree = torch.tensor([sum(1 for s, _ in edges if s == k) for k in range(width)]).clamp(min=1)
                in_degree = torch.tensor([sum(1 for _, d in edges if d == k) for k in range(width)]).clamp(min=1)
                edge_matrix = graphs.a_out[b] * out_degree[:, None]
                torch.testing.assert_close(graphs.a_in[b], (edge_matrix / in_degree[None, :]).T)
            assert torch.equal(graphs.mask, seq > 0)


def test_a_repeated_transition_is_one_edge() -> None:
    graphs = session_graphs(torch.tensor([[2, 3, 2, 3]]))
    assert graphs.a_out[0].tolist() == [[0, 1], [1, 0]]  # 2->3 twice, 3->2 once: each counted once


def test_prefix_windows_have_one_target_each() -> None:
    seq, pos, owner = sequence_windows([np.array([4, 7, 4, 9])], max_len=3, windows="prefixes")
    assert seq.tolist() == [[0, 0, 5], [0, 5, 8], [5, 8, 5]]
    assert pos.tolist() == [[0, 0, 8], [0, 0, 5], [0, 0, 10]]
    assert owner.tolist() == [0, 0, 0]
    seq, _, _ = sequence_windows([np.arange(6)], max_len=2, windows="prefixes")  # windows are the last 2
    assert seq[-1].tolist() == [4, 5]


def test_srgnn_learns_the_next_item_of_a_cycle() -> None:
    """Sessions walk a fixed cycle over the items; after training, the top-scored item after any
    prefix is the next one of the cycle."""
    torch.manual_seed(0)
    model = SRGNN(SRGNNConfig.with_overrides({"hidden_dim": 32, "max_len": MAX_LEN}), _Catalogue())
    assert predicts_the_cycle(train_on_prefixes(model, cycle_sessions()))


def test_srgnn_is_a_trainable_model_by_name() -> None:
    assert "srgnn" in MODELS
    data = type("Data", (), {"n_items": 5})()
    model = build_model("srgnn", data, {"hidden_dim": 8})
    assert model.score({SEQ: torch.tensor([[0, 1, 2]])}).shape == (1, 5)
    assert model.config.negatives_per_position() == 0 and model.config.windows == "prefixes"


def test_the_papers_step_decay_of_the_learning_rate() -> None:
    """SR-GNN's learning rate is multiplied by 0.1 every 3 epochs (the trainer's StepLR); models
    without a decay keep theirs."""
    from ray_jobs.trainers.worker_loop import _make_optimizer, _make_scheduler

    model = build_model("srgnn", type("Data", (), {"n_items": 5})(), {"hidden_dim": 8})
    optimizer = _make_optimizer(model)
    scheduler = _make_scheduler(model, optimizer)
    lrs = []
    for _ in range(7):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1e-3] * 3 + [1e-4] * 3 + [1e-5])
    sasrec = build_model("sasrec", type("Data", (), {"n_items": 5})(), {"hidden_dim": 8})
    assert _make_scheduler(sasrec, _make_optimizer(sasrec)) is None
