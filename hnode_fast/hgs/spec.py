"""The HGS prior as data: a mechanistic interaction graph, validated, and its relaxed form.

:class:`HGSGraph` holds named states, exogenous inputs, observables and edges ``(u, v)``
("``u`` enters ``dv/dt``"). :meth:`HGSGraph.relax` runs the graph surgery of Zou & Tian
(arXiv 2505.18996, steps 1-2) with :mod:`hnode_fast.graph`:

1. every maximal strongly connected component of states becomes one *node* (a group of
   states with a self loop), except the groups the user keeps un-merged;
2. shortcut edges by partial transitive closure along every input -> observable pathway
   (never input -> observable directly).

The result, :class:`RelaxedGraph`, is what the MNODE is built from: ``groups`` (one network
per group, outputting the derivatives of its states) and ``feature_edges`` ``(f, g)``: feature
``f`` (a state ``0 .. D-1`` or an input ``D .. D+K-1``) is read by group ``g``'s network. Each
feature edge gets its own scalar weight ``w_(f, g)`` (the paper's ``w_(u,v)``; for an edge
out of a merged group, one weight per member state).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple

from .. import graph as G

__all__ = ["HGSGraph", "RelaxedGraph"]


def _names(xs, what: str) -> Tuple[str, ...]:
    if isinstance(xs, str):
        xs = [xs]
    out = []
    for x in xs:
        if not isinstance(x, str) or not x:
            raise ValueError(f"{what}: every name must be a non-empty string, got {x!r}")
        out.append(x)
    if len(set(out)) != len(out):
        dup = sorted({x for x in out if out.count(x) > 1})
        raise ValueError(f"{what}: duplicate names {dup}")
    return tuple(out)


@dataclass(frozen=True)
class HGSGraph:
    """A mechanistic model's interaction graph (the HGS prior).

    Args:
        states: state names (the ODE's variables, observed or latent).
        inputs: exogenous input names (``u_k(t)``, given with the data; they have no parents).
        observables: names of the observed states (a subset of ``states``).
        edges: pairs ``(u, v)`` of names: ``u`` (a state or an input) enters ``dv/dt``
            (``v`` a state). Self loops ``(v, v)`` say that ``v`` enters its own derivative
            (decay, saturation); a state without one does not see itself.
        keep: groups of state names the user keeps un-merged when cycles are collapsed
            (see :func:`hnode_fast.graph.collapse_sccs`).

    Raises ``ValueError`` on: a duplicate or empty name, a name that is both a state and an
    input, an observable that is not a state, an edge with an unknown node, an edge into an
    input ("input with parents"), an observable that nothing (no input, no other state)
    reaches, no observable at all. States that reach no observable cannot affect the fit:
    :meth:`relax` drops them and lists them in :attr:`RelaxedGraph.dropped_states`.
    """

    states: Tuple[str, ...]
    inputs: Tuple[str, ...]
    observables: Tuple[str, ...]
    edges: Tuple[Tuple[str, str], ...]
    keep: Tuple[Tuple[str, ...], ...] = field(default=())

    def __init__(self, states, inputs, observables, edges, keep=()):
        st = _names(states, "states")
        inp = _names(inputs, "inputs")
        obs = _names(observables, "observables")
        both = sorted(set(st) & set(inp))
        if both:
            raise ValueError(f"names {both} are both states and inputs")
        if not st:
            raise ValueError("the graph needs at least one state")
        if not obs:
            raise ValueError("the graph needs at least one observable")
        for o in obs:
            if o not in st:
                raise ValueError(f"observable {o!r} is not a state (states: {list(st)})")
        known = set(st) | set(inp)
        es: List[Tuple[str, str]] = []
        for e in edges:
            try:
                u, v = e
            except (TypeError, ValueError):
                raise ValueError(f"edges: every edge must be a pair (u, v), got {e!r}") from None
            for x in (u, v):
                if x not in known:
                    raise ValueError(f"edge {(u, v)!r}: unknown node {x!r} (not a state or input)")
            if v in inp:
                raise ValueError(f"edge {(u, v)!r}: input {v!r} cannot have parents (inputs are exogenous)")
            if (u, v) not in es:
                es.append((u, v))
        kp = []
        for grp in keep:
            g = _names(grp, "keep")
            for x in g:
                if x not in st:
                    raise ValueError(f"keep: {x!r} is not a state")
            kp.append(g)
        object.__setattr__(self, "states", st)
        object.__setattr__(self, "inputs", inp)
        object.__setattr__(self, "observables", obs)
        object.__setattr__(self, "edges", tuple(es))
        object.__setattr__(self, "keep", tuple(kp))
        # every observable must be reached by something other than itself
        ids = self._ids()
        n = len(st) + len(inp)
        int_edges = [(ids[u], ids[v]) for u, v in es]
        for o in obs:
            anc = G.reachable(n, int_edges, ids[o], reverse=True) - {ids[o]}
            if not anc:
                raise ValueError(f"observable {o!r} is unreachable from every input and state (it has no parents)")

    def _ids(self) -> Dict[str, int]:
        ids = {s: i for i, s in enumerate(self.states)}
        ids.update({x: len(self.states) + k for k, x in enumerate(self.inputs)})
        return ids

    @property
    def n_states(self) -> int:
        return len(self.states)

    @property
    def n_inputs(self) -> int:
        return len(self.inputs)

    def relax(self, closure: bool = True) -> "RelaxedGraph":
        """HGS steps 1-2: drop states that reach no observable, collapse cycles (except
        ``keep``), add partial-transitive-closure shortcuts (``closure=False`` skips them)."""
        ids = self._ids()
        D, K = self.n_states, self.n_inputs
        n = D + K
        int_edges = [(ids[u], ids[v]) for u, v in self.edges]
        obs_ids = [ids[o] for o in self.observables]
        alive = set(G.prune_unreachable(n, int_edges, obs_ids))
        dropped = [s for i, s in enumerate(self.states) if i not in alive]
        live_states = [s for i, s in enumerate(self.states) if i in alive]
        live_inputs = [x for k, x in enumerate(self.inputs) if D + k in alive]
        unused_inputs = [x for k, x in enumerate(self.inputs) if D + k not in alive]
        # renumber: live states 0..D'-1, then ALL inputs (an unused input is kept as a feature
        # so the data's input columns keep their meaning; it simply has no edge)
        nid = {s: i for i, s in enumerate(live_states)}
        D2 = len(live_states)
        nid.update({x: D2 + k for k, x in enumerate(self.inputs)})
        n2 = D2 + K
        e2 = [(nid[u], nid[v]) for u, v in self.edges if u in nid and v in nid and (u in live_states or u in live_inputs)]
        keep = [[nid[s] for s in g if s in nid] for g in self.keep]
        mapping, node_edges = G.collapse_sccs(n2, e2, keep=[set(g) for g in keep if g])
        n_nodes = max(mapping) + 1 if mapping else 0
        obs_nodes = sorted({mapping[nid[o]] for o in self.observables})
        in_nodes = sorted({mapping[D2 + k] for k in range(K)})
        if closure:
            node_edges = G.partial_transitive_closure(n_nodes, node_edges, in_nodes, obs_nodes)
        members: Dict[int, List[int]] = {}
        for f, m in enumerate(mapping):
            members.setdefault(m, []).append(f)
        # groups: the state nodes, ordered by their smallest state
        state_nodes = sorted({mapping[i] for i in range(D2)}, key=lambda m: members[m][0])
        node_to_group = {m: gi for gi, m in enumerate(state_nodes)}
        groups = [tuple(members[m]) for m in state_nodes]
        fedges: Set[Tuple[int, int]] = set()
        for a, b in node_edges:
            if b not in node_to_group:
                continue  # edges into inputs do not exist (validated); defensive
            for f in members[a]:
                fedges.add((f, node_to_group[b]))
        return RelaxedGraph(
            names=tuple(live_states) + tuple(self.inputs),
            n_states=D2,
            groups=tuple(groups),
            feature_edges=frozenset(fedges),
            observables=tuple(nid[o] for o in self.observables),
            dropped_states=tuple(dropped),
            unused_inputs=tuple(unused_inputs),
            original_edges=frozenset((nid[u], nid[v]) for u, v in self.edges if u in nid and v in nid),
        )


@dataclass(frozen=True)
class RelaxedGraph:
    """The graph an MNODE is built from (the output of :meth:`HGSGraph.relax`, or of
    :meth:`prune`).

    Attributes:
        names: feature names, states ``0 .. D-1`` then inputs ``D .. D+K-1``.
        n_states: ``D``.
        groups: per network block, the sorted state ids it outputs (a merged cycle has several).
        feature_edges: ``(f, g)``: feature ``f`` is read by group ``g``'s network.
        observables: state ids of the observed states (in the data's column order).
        dropped_states: state names removed because they reach no observable.
        unused_inputs: input names that reach no observable (kept as features without edges).
        original_edges: feature-level ``(u, v)`` edges of the user's graph (states ``v``), to tell
            shortcuts and merged-cycle edges from original ones.
    """

    names: Tuple[str, ...]
    n_states: int
    groups: Tuple[Tuple[int, ...], ...]
    feature_edges: FrozenSet[Tuple[int, int]]
    observables: Tuple[int, ...]
    dropped_states: Tuple[str, ...] = ()
    unused_inputs: Tuple[str, ...] = ()
    original_edges: FrozenSet[Tuple[int, int]] = frozenset()

    @property
    def n_inputs(self) -> int:
        return len(self.names) - self.n_states

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def state_names(self) -> Tuple[str, ...]:
        return self.names[: self.n_states]

    @property
    def input_names(self) -> Tuple[str, ...]:
        return self.names[self.n_states :]

    def group_of(self) -> List[int]:
        """``(D,)``: the group id of every state."""
        out = [-1] * self.n_states
        for g, members in enumerate(self.groups):
            for s in members:
                out[s] = g
        return out

    def group_name(self, g: int) -> str:
        return "+".join(self.names[s] for s in self.groups[g])

    def named_edges(self, edges: Optional[Iterable[Tuple[int, int]]] = None) -> List[Tuple[str, str]]:
        """Feature edges as ``(feature name, group name)``, sorted."""
        es = self.feature_edges if edges is None else edges
        return sorted((self.names[f], self.group_name(g)) for f, g in es)

    def shortcut_edges(self) -> Set[Tuple[int, int]]:
        """Feature edges not in the user's graph: closure shortcuts and within-cycle edges."""
        gof = self.group_of()
        orig = {(u, gof[v]) for u, v in self.original_edges}
        return {e for e in self.feature_edges if e not in orig}

    def prune(self, kept: Iterable[Tuple[int, int]]) -> Tuple["RelaxedGraph", List[int], List[int]]:
        """Keep only the feature edges ``kept`` and drop the states that then reach no
        observable (HGS step 3; observables always stay).

        Returns ``(reduced graph, kept state ids, kept group ids)`` (old ids, ascending); the
        reduced graph renumbers states ``0 .. D'-1`` and keeps every input.
        """
        kept = set(kept)
        unknown = kept - set(self.feature_edges)
        if unknown:
            raise ValueError(f"kept edges {sorted(unknown)} are not edges of this graph")
        D, K = self.n_states, self.n_inputs
        gof = self.group_of()
        # state-level graph: feature f -> every state of group g; a group's members reach each other
        sedges = {(f, s) for f, g in kept for s in self.groups[g]}
        for members in self.groups:
            sedges.update((a, b) for a in members for b in members if a != b)
        alive = set(G.prune_unreachable(D + K, sedges, list(self.observables)))
        keep_states = [s for s in range(D) if s in alive]
        keep_groups = sorted({gof[s] for s in keep_states})
        snew = {s: i for i, s in enumerate(keep_states)}
        fnew = dict(snew)
        fnew.update({D + k: len(keep_states) + k for k in range(K)})
        gnew = {g: i for i, g in enumerate(keep_groups)}
        new_edges = frozenset((fnew[f], gnew[g]) for f, g in kept if f in fnew and g in gnew)
        dropped = self.dropped_states + tuple(self.names[s] for s in range(D) if s not in alive)
        reduced = RelaxedGraph(
            names=tuple(self.names[s] for s in keep_states) + self.input_names,
            n_states=len(keep_states),
            groups=tuple(tuple(snew[s] for s in self.groups[g] if s in snew) for g in keep_groups),
            feature_edges=new_edges,
            observables=tuple(snew[o] for o in self.observables),
            dropped_states=dropped,
            unused_inputs=self.unused_inputs,
            original_edges=frozenset((fnew[u], snew[v]) for u, v in self.original_edges if u in fnew and v in snew),
        )
        return reduced, keep_states, keep_groups

    def describe(self) -> str:
        """One line per group: ``d[group]/dt <- features``."""
        lines = []
        for g in range(self.n_groups):
            feats = sorted(self.names[f] for f, gg in self.feature_edges if gg == g)
            lines.append(f"  d[{self.group_name(g)}]/dt <- {', '.join(feats) or '(constant)'}")
        return "\n".join(lines)


def complete_graph(observables: Sequence[str], n_latent: int, inputs: Sequence[str]) -> HGSGraph:
    """A fully connected graph (every state and input enters every state): relaxed, it is ONE
    group, i.e. an ordinary black-box (augmented) neural ODE over observables + ``n_latent``
    latent states."""
    states = list(observables) + [f"h{i}" for i in range(n_latent)]
    edges = [(u, v) for u in states + list(inputs) for v in states]
    return HGSGraph(states, inputs, observables, edges)
