"""HGS graph surgery (hnode_fast.graph) on small hand-made graphs."""

import random

import pytest
import torch

import hnode_fast as hf
from hnode_fast import graph

# ----------------------------------------------------------------------------- SCC collapse


def test_three_cycle_collapses_to_one_node_with_self_loop():
    mapping, new_edges = graph.collapse_sccs(3, [(0, 1), (1, 2), (2, 0)])
    assert mapping == [0, 0, 0]
    assert new_edges == {(0, 0)}


def test_two_sccs_and_dag_edges():
    # {0,1} cycle -> 2 -> {3,4,5} cycle; 6 isolated with a self loop; 7 plain
    edges = [(0, 1), (1, 0), (1, 2), (2, 3), (3, 4), (4, 5), (5, 3), (6, 6), (7, 2)]
    mapping, new_edges = graph.collapse_sccs(8, edges)
    assert mapping == [0, 0, 1, 2, 2, 2, 3, 4]
    assert new_edges == {(0, 0), (0, 1), (1, 2), (2, 2), (3, 3), (4, 1)}


def test_numbering_follows_smallest_old_node():
    # components {2,4} and {0,3}; 1 alone; ids ordered by smallest member: {0,3}, {1}, {2,4}
    mapping, new_edges = graph.collapse_sccs(5, [(2, 4), (4, 2), (3, 0), (0, 3), (1, 2)])
    assert mapping == [0, 1, 2, 0, 2]
    assert new_edges == {(0, 0), (2, 2), (1, 2)}


def test_duplicate_edges_dropped_and_no_spurious_self_loop():
    mapping, new_edges = graph.collapse_sccs(3, [(0, 1), (0, 1), (1, 2)])
    assert mapping == [0, 1, 2]
    assert new_edges == {(0, 1), (1, 2)}


def test_keep_whole_component_stays_separate():
    edges = [(0, 1), (1, 2), (2, 0), (2, 3)]
    mapping, new_edges = graph.collapse_sccs(4, edges, keep=[{0, 1, 2}])
    assert mapping == [0, 1, 2, 3]
    assert new_edges == set(edges)


def test_keep_part_of_component_rest_merges():
    # 4-cycle 0->1->2->3->0; keep node 1 separate: {0,2,3} merge into one node
    edges = [(0, 1), (1, 2), (2, 3), (3, 0)]
    mapping, new_edges = graph.collapse_sccs(4, edges, keep=[{1}])
    assert mapping == [0, 1, 0, 0]
    assert new_edges == {(0, 1), (1, 0), (0, 0)}


def test_keep_single_remaining_node_gets_no_self_loop():
    mapping, new_edges = graph.collapse_sccs(3, [(0, 1), (1, 2), (2, 0)], keep=[{0, 1}])
    assert mapping == [0, 1, 2]
    assert new_edges == {(0, 1), (1, 2), (2, 0)}


def test_collapse_result_is_relaxed_dag():
    rng = random.Random(0)
    n = 30
    edges = {(rng.randrange(n), rng.randrange(n)) for _ in range(60)}
    mapping, new_edges = graph.collapse_sccs(n, edges)
    m = max(mapping) + 1
    comps = graph.strongly_connected_components(m, new_edges)
    assert all(len(c) == 1 for c in comps)  # only self loops remain
    # every old edge is represented
    assert {(mapping[u], mapping[v]) for u, v in edges} <= new_edges


def test_long_cycle_is_iterative():
    n = 20000  # far beyond Python's recursion limit
    edges = [(i, (i + 1) % n) for i in range(n)]
    mapping, new_edges = graph.collapse_sccs(n, edges)
    assert set(mapping) == {0} and new_edges == {(0, 0)}


# ----------------------------------------------------------------------------- pathways and closure


def test_pathway_nodes_chain_and_branch():
    edges = [(0, 1), (1, 3), (0, 2), (2, 3), (3, 4), (5, 3)]
    assert graph.pathway_nodes(6, edges, 0, 3) == {0, 1, 2, 3}
    assert graph.pathway_nodes(6, edges, 0, 4) == {0, 1, 2, 3, 4}
    assert graph.pathway_nodes(6, edges, 4, 0) == set()
    assert graph.pathway_nodes(6, edges, 5, 4) == {5, 3, 4}


def test_closure_chain_adds_shortcuts_but_not_input_to_observable():
    x, a, b, s = 0, 1, 2, 3
    edges = {(x, a), (a, b), (b, s)}
    out = graph.partial_transitive_closure(4, edges, inputs=[x], observables=[s])
    assert out == edges | {(x, b), (a, s)}
    assert (x, s) not in out


def test_closure_keeps_original_input_observable_edge():
    edges = {(0, 1), (1, 2), (0, 2)}
    out = graph.partial_transitive_closure(3, edges, inputs=[0], observables=[2])
    assert out == edges


def test_closure_branching_pathway():
    # x=0 -> {1, 2} -> 3 -> s=4 ; 5 -> 3 is off the pathway of x (5 is not an input)
    edges = {(0, 1), (0, 2), (1, 3), (2, 3), (3, 4), (5, 3)}
    out = graph.partial_transitive_closure(6, edges, inputs=[0], observables=[4])
    shortcuts = out - edges
    assert shortcuts == {(0, 3), (1, 4), (2, 4)}
    # no shortcut between the parallel branches, none from the off-pathway node
    assert (1, 2) not in out and (2, 1) not in out and (5, 4) not in out


def test_closure_never_links_input_to_any_observable():
    # x -> a -> s1 -> b -> s2 with two observables: x -> s1 would be a shortcut of (x, s2)
    x, a, s1, b, s2 = range(5)
    edges = {(x, a), (a, s1), (s1, b), (b, s2)}
    out = graph.partial_transitive_closure(5, edges, inputs=[x], observables=[s1, s2])
    assert (x, s1) not in out and (x, s2) not in out
    assert {(x, b), (a, b), (a, s2), (s1, s2)} <= out


def test_closure_unreachable_observable_adds_nothing():
    edges = {(0, 1), (2, 3)}
    assert graph.partial_transitive_closure(4, edges, inputs=[0], observables=[3]) == edges


# ----------------------------------------------------------------------------- pruning, parents


def test_prune_unreachable_and_restrict():
    # 0 -> 1 -> 3(obs); 2 -> 4 (dead end); 5 -> 2
    edges = [(0, 1), (1, 3), (2, 4), (5, 2)]
    keep = graph.prune_unreachable(6, edges, observables=[3])
    assert keep == [0, 1, 3]
    assert graph.restrict(edges, keep) == {(0, 1), (1, 3)}
    old_to_new, new_edges = graph.restrict(edges, keep, relabel=True)
    assert old_to_new == {0: 0, 1: 1, 3: 2}
    assert new_edges == {(0, 1), (1, 2)}


def test_prune_keeps_isolated_observable():
    assert graph.prune_unreachable(3, [(0, 1)], observables=[2]) == [2]


def test_parents():
    assert graph.parents(4, [(0, 1), (2, 1), (1, 1), (3, 0), (2, 1)]) == [[3], [0, 1, 2], [], []]


# ----------------------------------------------------------------------------- block masks


def test_block_masks_exact_pattern_three_states():
    # states 0,1,2; edges 0->1, 1->2, 2->2 (self loop), 2->0; one input feeding state 0
    edges = [(0, 1), (1, 2), (2, 2), (2, 0)]
    masks = graph.block_masks(3, edges, (2, 3), n_inputs=1, input_edges=[(0, 0)])
    assert [tuple(m.shape) for m in masks] == [(6, 4), (9, 6), (3, 9)]
    assert all(m.dtype == torch.bool for m in masks)
    expected0 = torch.tensor(
        [
            [0, 0, 1, 1],  # state 0 block: parent 2, input 0
            [0, 0, 1, 1],
            [1, 0, 0, 0],  # state 1 block: parent 0
            [1, 0, 0, 0],
            [0, 1, 1, 0],  # state 2 block: parents 1, 2
            [0, 1, 1, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(masks[0], expected0)
    expected1 = torch.zeros(9, 6, dtype=torch.bool)
    for i in range(3):
        expected1[3 * i : 3 * i + 3, 2 * i : 2 * i + 2] = True
    assert torch.equal(masks[1], expected1)
    expected2 = torch.zeros(3, 9, dtype=torch.bool)
    for i in range(3):
        expected2[i, 3 * i : 3 * i + 3] = True
    assert torch.equal(masks[2], expected2)


def test_block_masks_no_hidden_is_adjacency():
    (m,) = graph.block_masks(3, [(0, 1), (1, 2)], ())
    assert torch.equal(m, torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=torch.bool))


def test_block_masks_int_hidden():
    masks = graph.block_masks(2, [(0, 1)], 4)
    assert [tuple(m.shape) for m in masks] == [(8, 2), (2, 8)]


def test_block_masks_build_per_state_networks():
    """Output i of the masked MLP depends exactly on the parents of i."""
    D, K = 4, 2
    edges = [(0, 1), (1, 2), (2, 2), (3, 0), (1, 3)]
    input_edges = [(0, 0), (1, 2)]
    h = (5, 3)
    masks = graph.block_masks(D, edges, h, n_inputs=K, input_edges=input_edges)
    mlp = hf.MaskedMLP(D + K, D, hidden=tuple(D * w for w in h), activation="tanh").double()
    for i, m in enumerate(masks):
        mlp.set_mask(i, m)
    x = torch.randn(7, D + K, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda z: mlp(z).sum(0), x)  # (D, B, D+K)
    dep = J.abs().sum(1) > 0
    expected = torch.zeros(D, D + K, dtype=torch.bool)
    for u, v in edges:
        expected[v, u] = True
    for k, v in input_edges:
        expected[v, D + k] = True
    assert torch.equal(dep, expected)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: graph.collapse_sccs(3, [(0, 3)]), "edges"),
        (lambda: graph.collapse_sccs(3, [(-1, 0)]), "edges"),
        (lambda: graph.collapse_sccs(3, [(0, 1)], keep=[{5}]), "keep"),
        (lambda: graph.collapse_sccs(3, [(0, 1, 2)]), "edges"),
        (lambda: graph.pathway_nodes(3, [(0, 1)], 3, 1), "source"),
        (lambda: graph.pathway_nodes(3, [(0, 1)], 0, 7), "target"),
        (lambda: graph.partial_transitive_closure(3, [(0, 1)], [4], [1]), "inputs"),
        (lambda: graph.partial_transitive_closure(3, [(0, 1)], [0], [3]), "observables"),
        (lambda: graph.prune_unreachable(3, [(0, 1)], [9]), "observables"),
        (lambda: graph.parents(2, [(0, 2)]), "edges"),
        (lambda: graph.block_masks(3, [(0, 3)], (4,)), "edges"),
        (lambda: graph.block_masks(3, [(0, 1)], (4,), n_inputs=1, input_edges=[(1, 0)]), "input_edges"),
        (lambda: graph.block_masks(3, [(0, 1)], (4,), n_inputs=1, input_edges=[(0, 3)]), "input_edges"),
        (lambda: graph.block_masks(3, [(0, 1)], (0,)), "hidden_per_state"),
        (lambda: graph.block_masks(0, [], (4,)), "n_states"),
        (lambda: graph.collapse_sccs(-1, []), "n"),
        (lambda: graph.collapse_sccs(3, [(0.5, 1)]), "edges"),
    ],
)
def test_bad_ids_raise_value_error_naming_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
