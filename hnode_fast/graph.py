"""Graph surgery for Hybrid Graph Sparsification (HGS; Zou & Tian, arXiv 2505.18996).

The mechanistic model is a directed graph on node ids ``0 .. n-1``. An edge ``(u, v)``
means *u enters dv/dt* (u is a parent of v). HGS gives every state ``i`` its own small network
that sees only its parents, ``ds_i/dt = NN_i(S_pa(i), X_pa(i), t)``, after two rewrites of
the graph:

1. :func:`collapse_sccs` — every maximal strongly connected component (SCC) becomes one node
   with a self loop, so the graph is a "relaxed DAG" (acyclic except for self loops). The user
   may keep chosen nodes un-merged.
2. :func:`partial_transitive_closure` — for every input ``x`` and observable ``s`` reachable
   from it, the states on the pathways ``x ~> s`` (:func:`pathway_nodes`) get shortcut edges
   ``u -> w`` for every ``w`` reachable from ``u`` inside that pathway subgraph; an input
   never gets a new edge straight to an observable.

After training with L1 on the edge weights, edges whose weight reaches zero are dropped and
:func:`prune_unreachable` / :func:`restrict` remove states that no longer reach an
observable. :func:`block_masks` turns the final graph into the block masks of ONE
:class:`hnode_fast.MaskedMLP` that is exactly the collection of per-state networks ``NN_i``.

Everything here is pure Python (plus ``torch`` for the masks), iterative (no recursion
limit) and deterministic: results never depend on set or dict iteration order.

Example::

    >>> from hnode_fast import graph
    >>> mapping, new_edges = graph.collapse_sccs(4, [(0, 1), (1, 2), (2, 0), (2, 3)])
    >>> mapping, sorted(new_edges)
    ([0, 0, 0, 1], [(0, 0), (0, 1)])
    >>> sorted(graph.partial_transitive_closure(4, [(0, 1), (1, 2), (2, 3)], inputs=[0], observables=[3]))
    [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)]
"""

from __future__ import annotations

from collections import deque
from typing import Any, Deque, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import torch

Edge = Tuple[int, int]

__all__ = [
    "collapse_sccs",
    "strongly_connected_components",
    "reachable",
    "pathway_nodes",
    "partial_transitive_closure",
    "prune_unreachable",
    "restrict",
    "parents",
    "block_masks",
]


# ----------------------------------------------------------------------------- validation


def _check_n(n, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int) and not hasattr(n, "__index__"):
        raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
    n = int(n)
    if n < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {n}")
    return n


def _check_node(x, n: int, name: str) -> int:
    if isinstance(x, bool) or not hasattr(x, "__index__"):
        raise ValueError(f"{name}: node ids must be integers, got {x!r}")
    x = int(x)
    if not 0 <= x < n:
        raise ValueError(f"{name}: node id {x} out of range [0, {n})")
    return x


def _check_nodes(xs, n: int, name: str) -> List[int]:
    if xs is None:
        return []
    if hasattr(xs, "__index__"):
        xs = [xs]
    return [_check_node(x, n, name) for x in xs]


def _check_edges(edges, n: int, name: str = "edges", n_src: Optional[int] = None) -> List[Edge]:
    """Validate an iterable of ``(u, v)`` pairs; return them as a sorted, de-duplicated list."""
    n_src = n if n_src is None else n_src
    out: Set[Edge] = set()
    for e in edges:
        try:
            u, v = e
        except (TypeError, ValueError):
            raise ValueError(f"{name}: every edge must be a pair (u, v), got {e!r}") from None
        out.add((_check_node(u, n_src, name), _check_node(v, n, name)))
    return sorted(out)


def _adjacency(n: int, edges: Iterable[Edge]) -> Tuple[List[List[int]], List[List[int]]]:
    succ: List[List[int]] = [[] for _ in range(n)]
    pred: List[List[int]] = [[] for _ in range(n)]
    for u, v in sorted(set(edges)):
        succ[u].append(v)
        pred[v].append(u)
    return succ, pred


def _bfs(starts: Iterable[int], adj: List[List[int]], allowed: Optional[Set[int]] = None) -> Set[int]:
    seen: Set[int] = set()
    queue: Deque[int] = deque()
    for s in starts:
        if s not in seen and (allowed is None or s in allowed):
            seen.add(s)
            queue.append(s)
    while queue:
        u = queue.popleft()
        for w in adj[u]:
            if w not in seen and (allowed is None or w in allowed):
                seen.add(w)
                queue.append(w)
    return seen


# ----------------------------------------------------------------------------- SCCs


def strongly_connected_components(n: int, edges: Iterable[Edge]) -> List[List[int]]:
    """Maximal strongly connected components (iterative Tarjan).

    Returns a list of sorted node lists, ordered by their smallest node. Every node is in
    exactly one component (singletons included).

    >>> strongly_connected_components(4, [(0, 1), (1, 0), (2, 3)])
    [[0, 1], [2], [3]]
    """
    n = _check_n(n)
    edges = _check_edges(edges, n)
    succ, _ = _adjacency(n, edges)
    index = [-1] * n
    low = [0] * n
    on_stack = [False] * n
    stack: List[int] = []
    comps: List[List[int]] = []
    counter = 0
    for root in range(n):
        if index[root] != -1:
            continue
        # work stack of (node, position in its successor list)
        work = [(root, 0)]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = True
        while work:
            v, pos = work[-1]
            if pos < len(succ[v]):
                work[-1] = (v, pos + 1)
                w = succ[v][pos]
                if index[w] == -1:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = True
                    work.append((w, 0))
                elif on_stack[w]:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack[w] = False
                        comp.append(w)
                        if w == v:
                            break
                    comps.append(sorted(comp))
    comps.sort(key=lambda c: c[0])
    return comps


def collapse_sccs(n: int, edges: Iterable[Edge], keep: Iterable[Iterable[int]] = ()) -> Tuple[List[int], Set[Edge]]:
    """Collapse every cycle into one node with a self loop (HGS step 1, the "relaxed DAG").

    Each maximal strongly connected component ``C`` with ``|C| > 1`` becomes one new node with
    a self loop ``(c, c)``; a single node keeps its self loop if it had one. Edges are mapped
    ``(u, v) -> (mapping[u], mapping[v])`` and de-duplicated; an edge inside a component
    becomes that component's self loop.

    Args:
        n: number of nodes (ids ``0 .. n-1``).
        edges: iterable of ``(u, v)``: u enters dv/dt.
        keep: iterable of node sets the user wants NOT merged. Every node in one of them stays
            a node of its own (with its original edges, so a kept cycle stays a cycle, and a
            self loop only if the original graph had one). The remaining nodes of an SCC are
            still merged together: two or more remaining nodes become one node with a self
            loop; a single remaining node stays an ordinary node.

    Returns:
        ``(mapping, new_edges)``: ``mapping[i]`` is the new id of old node ``i`` (a list of
        length ``n``); new ids are numbered by the smallest old node of each new node, i.e. in
        order of first appearance scanning ``0 .. n-1``. ``new_edges`` is a set of pairs on the
        new ids.

    Example: a 3-cycle feeding a fourth node::

        >>> mapping, new_edges = collapse_sccs(4, [(0, 1), (1, 2), (2, 0), (2, 3)])
        >>> mapping, sorted(new_edges)
        ([0, 0, 0, 1], [(0, 0), (0, 1)])
        >>> collapse_sccs(4, [(0, 1), (1, 2), (2, 0), (2, 3)], keep=[{0, 1, 2}])[0]
        [0, 1, 2, 3]
    """
    n = _check_n(n)
    edges = _check_edges(edges, n)
    kept: Set[int] = set()
    if isinstance(keep, (set, frozenset)) and all(hasattr(x, "__index__") for x in keep):
        keep = [keep]  # a single set of nodes
    for comp in keep:
        kept.update(_check_nodes(comp, n, "keep"))

    groups: List[List[int]] = []
    for comp in strongly_connected_components(n, edges):
        rest = [i for i in comp if i not in kept]
        for i in comp:
            if i in kept:
                groups.append([i])
        if rest:
            groups.append(rest)
    groups.sort(key=lambda g: g[0])

    mapping = [-1] * n
    merged = set()
    for new_id, g in enumerate(groups):
        for i in g:
            mapping[i] = new_id
        if len(g) > 1:
            merged.add(new_id)
    new_edges = {(mapping[u], mapping[v]) for u, v in edges}
    new_edges.update((c, c) for c in merged)
    return mapping, new_edges


# ----------------------------------------------------------------------------- reachability


def reachable(n: int, edges: Iterable[Edge], sources: Union[int, Iterable[int]], reverse: bool = False) -> Set[int]:
    """Nodes reachable from ``sources`` (included) along edges; ``reverse=True`` follows them
    backwards (the nodes that reach ``sources``)."""
    n = _check_n(n)
    edges = _check_edges(edges, n)
    srcs = _check_nodes(sources, n, "sources")
    succ, pred = _adjacency(n, edges)
    return _bfs(srcs, pred if reverse else succ)


def pathway_nodes(n: int, edges: Iterable[Edge], source: int, target: int) -> Set[int]:
    """States on some directed path ``source ~> target`` (both ends included).

    ``forward(source) ∩ backward(target)``: empty when ``target`` is not reachable from
    ``source``.

    >>> sorted(pathway_nodes(5, [(0, 1), (1, 3), (0, 2), (2, 3), (3, 4)], 0, 3))
    [0, 1, 2, 3]
    """
    n = _check_n(n)
    edges = _check_edges(edges, n)
    source = _check_node(source, n, "source")
    target = _check_node(target, n, "target")
    succ, pred = _adjacency(n, edges)
    fwd = _bfs([source], succ)
    if target not in fwd:
        return set()
    return fwd & _bfs([target], pred)


def partial_transitive_closure(n: int, edges: Iterable[Edge], inputs: Iterable[int], observables: Iterable[int]) -> Set[Edge]:
    """Shortcut edges along input -> observable pathways (HGS step 2).

    For every input ``x`` and observable ``s`` reachable from ``x``, let ``P`` be
    :func:`pathway_nodes` ``(x, s)`` and ``G[P]`` the subgraph induced by ``P``. For every
    ``u`` in ``P`` and every ``w != u`` reachable from ``u`` inside ``G[P]``, add ``u -> w``.

    Exception: an input never feeds an observable directly, so no new edge ``x' -> s'`` with
    ``x'`` an input and ``s'`` an observable is ever added (this covers the pair's own ``x -> s``
    and also ``x -> s'`` for an observable ``s'`` lying on the way to another one). Edges of
    the original graph are always kept as they are, including an original ``x -> s`` edge.
    No self loops are added. Run :func:`collapse_sccs` first: inside a cycle the closure
    connects every pair both ways.

    Inputs are ordinary node ids of the same graph (e.g. states ``0 .. D-1`` and inputs
    ``D .. D+K-1``).

    Returns:
        The augmented edge set: original edges ∪ shortcuts.

    Example (chain ``x -> a -> b -> s``, ids 0..3)::

        >>> sorted(partial_transitive_closure(4, [(0, 1), (1, 2), (2, 3)], [0], [3]))
        [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)]
    """
    n = _check_n(n)
    edges = _check_edges(edges, n)
    inputs = sorted(set(_check_nodes(inputs, n, "inputs")))
    observables = sorted(set(_check_nodes(observables, n, "observables")))
    input_set, obs_set = set(inputs), set(observables)
    succ, pred = _adjacency(n, edges)
    out: Set[Edge] = set(edges)
    for x in inputs:
        fwd = _bfs([x], succ)
        for s in observables:
            if s not in fwd:
                continue
            P = fwd & _bfs([s], pred)
            for u in sorted(P):
                for w in _bfs([u], succ, allowed=P):
                    if w == u or (u in input_set and w in obs_set):
                        continue
                    out.add((u, w))
    return out


def prune_unreachable(n: int, edges: Iterable[Edge], observables: Iterable[int]) -> List[int]:
    """States that still reach an observable (observables are always kept).

    After training, edges whose weight reached zero are removed; a state with no remaining
    path to any observable cannot affect the loss and is dropped (HGS step 3).

    Returns:
        The kept node ids, sorted ascending.

    >>> prune_unreachable(4, [(0, 1), (2, 3)], observables=[1])
    [0, 1]
    """
    n = _check_n(n)
    edges = _check_edges(edges, n)
    obs = _check_nodes(observables, n, "observables")
    _, pred = _adjacency(n, edges)
    return sorted(_bfs(obs, pred))


def restrict(edges: Iterable[Edge], keep_nodes: Iterable[int], relabel: bool = False):
    """Edges with both ends in ``keep_nodes``.

    With ``relabel=False`` (default) returns the set of kept edges on the old ids. With
    ``relabel=True`` returns ``(old_to_new, new_edges)`` where kept nodes are renumbered
    ``0 .. len(keep)-1`` in ascending old-id order.

    >>> sorted(restrict([(0, 1), (1, 2), (2, 3)], [0, 1, 3]))
    [(0, 1)]
    >>> restrict([(0, 2), (2, 3)], [0, 2], relabel=True)
    ({0: 0, 2: 1}, {(0, 1)})
    """
    keep = set()
    for k in keep_nodes:
        if isinstance(k, bool) or not hasattr(k, "__index__"):
            raise ValueError(f"keep_nodes: node ids must be integers, got {k!r}")
        keep.add(int(k))
    kept = set()
    for e in edges:
        try:
            u, v = e
        except (TypeError, ValueError):
            raise ValueError(f"edges: every edge must be a pair (u, v), got {e!r}") from None
        if int(u) in keep and int(v) in keep:
            kept.add((int(u), int(v)))
    if not relabel:
        return kept
    old_to_new: Dict[int, int] = {old: i for i, old in enumerate(sorted(keep))}
    return old_to_new, {(old_to_new[u], old_to_new[v]) for u, v in kept}


def parents(n: int, edges: Iterable[Edge]) -> List[List[int]]:
    """``parents(n, edges)[v]``: sorted list of ``u`` with an edge ``u -> v`` (self loops
    included, so a collapsed component lists itself).

    >>> parents(3, [(0, 1), (2, 1), (1, 1)])
    [[], [0, 1, 2], []]
    """
    n = _check_n(n)
    edges = _check_edges(edges, n)
    _, pred = _adjacency(n, edges)
    return pred


# ----------------------------------------------------------------------------- masks


def block_masks(
    n_states: int,
    edges: Iterable[Edge],
    hidden_per_state: Union[int, Sequence[int]] = (16,),
    n_inputs: int = 0,
    input_edges: Iterable[Edge] = (),
) -> List[torch.Tensor]:
    """Block masks that turn ONE masked MLP into the HGS per-state networks.

    HGS uses one network per state, ``ds_i/dt = NN_i(S_pa(i), X_pa(i))``. Stacking them gives
    a single MLP with input features ``[s_0 .. s_{D-1}, x_0 .. x_{K-1}]`` (``D = n_states``
    states then ``K = n_inputs`` inputs), hidden layer ``l`` of width ``D * h_l``
    (``h_l = hidden_per_state[l]``) split into ``D`` consecutive blocks of ``h_l`` units (block
    ``i`` = the units of ``NN_i``), and ``D`` outputs. The masks (``torch.nn.Linear`` weight
    shape ``(out, in)``, ``True`` = connection present) are:

    - layer 0, shape ``(D*h_0, D+K)``: rows of block ``i`` see column ``u`` for every state
      parent ``(u, i)`` in ``edges`` and column ``D + k`` for every input parent ``(k, i)``
      in ``input_edges``;
    - layer ``l`` in ``1 .. L-1``, shape ``(D*h_l, D*h_{l-1})``: block diagonal (block ``i``
      rows see block ``i`` columns only);
    - last layer, shape ``(D, D*h_{L-1})``: row ``i`` sees block ``i`` only.

    With ``hidden_per_state=()`` there is a single layer of shape ``(D, D+K)``: the parent
    adjacency itself. A state without parents gets a constant (bias-only) derivative.
    Because nothing crosses between blocks, output ``i`` depends only on the parents of ``i``
    and the parameters of block ``i`` are exactly those of ``NN_i``.

    Build the network with::

        masks = graph.block_masks(D, edges, (16,), n_inputs=K, input_edges=in_edges)
        mlp = hf.MaskedMLP(D + K, D, hidden=tuple(D * h for h in (16,)), activation="relu")
        for i, m in enumerate(masks):
            mlp.set_mask(i, m)

    Args:
        n_states: ``D``.
        edges: state edges ``(u, v)``, ``0 <= u, v < D`` (u enters dv/dt).
        hidden_per_state: hidden width of each per-state network, per layer (int or tuple).
        n_inputs: ``K`` exogenous inputs.
        input_edges: ``(k, v)``: input ``k`` (``0 <= k < K``) enters dv/dt.

    Returns:
        List of bool tensors, one per layer.

    Example (``D = 3``, edges ``0 -> 1``, ``1 -> 2``, ``2 -> 2``; one hidden unit per state)::

        >>> [m.int().tolist() for m in block_masks(3, [(0, 1), (1, 2), (2, 2)], (1,))]
        [[[0, 0, 0], [1, 0, 0], [0, 1, 1]], [[1, 0, 0], [0, 1, 0], [0, 0, 1]]]
    """
    D = _check_n(n_states, "n_states")
    K = _check_n(n_inputs, "n_inputs")
    if D < 1:
        raise ValueError(f"n_states must be >= 1, got {D}")
    per_layer: Iterable[Any]  # elements are validated below
    if isinstance(hidden_per_state, int) or hasattr(hidden_per_state, "__index__"):
        per_layer = (hidden_per_state,)
    else:
        per_layer = hidden_per_state
    hs = []
    for h in per_layer:
        if isinstance(h, bool) or not hasattr(h, "__index__") or int(h) < 1:
            raise ValueError(f"hidden_per_state must be positive integers, got {tuple(per_layer)!r}")
        hs.append(int(h))
    edges = _check_edges(edges, D, "edges")
    input_edges = list(input_edges)
    if input_edges and K == 0:
        raise ValueError("input_edges given but n_inputs is 0")
    input_edges = _check_edges(input_edges, D, "input_edges", n_src=K) if input_edges else []

    # parent adjacency (D, D + K)
    adj = torch.zeros(D, D + K, dtype=torch.bool)
    for u, v in edges:
        adj[v, u] = True
    for k, v in input_edges:
        adj[v, D + k] = True
    if not hs:
        return [adj]

    masks = [adj.repeat_interleave(hs[0], dim=0)]
    for l in range(1, len(hs)):
        masks.append(_block_diag(D, hs[l], hs[l - 1]))
    masks.append(_block_diag(D, 1, hs[-1]))
    return masks


def _block_diag(D: int, rows: int, cols: int) -> torch.Tensor:
    eye = torch.eye(D, dtype=torch.bool)
    return eye.repeat_interleave(rows, dim=0).repeat_interleave(cols, dim=1)
