"""hf.hgs graph spec: validation errors, relaxation (cycles, shortcuts), pruning; the MNODE's
block structure; Windows; the UVA/Padova graph."""

import math

import numpy as np
import pytest
import torch

import hnode_fast as hf
from hnode_fast.hgs import HGSGraph, Windows

EDGES = [("u", "a"), ("a", "a"), ("a", "b"), ("b", "b")]


def chain(**kw):
    args = dict(states=["a", "b"], inputs=["u"], observables=["b"], edges=EDGES)
    args.update(kw)
    return HGSGraph(**args)


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(edges=EDGES + [("zz", "b")]), "unknown node 'zz'"),
        (dict(edges=EDGES + [("a", "u")]), "input 'u' cannot have parents"),
        (dict(observables=["q"]), "observable 'q' is not a state"),
        (dict(observables=[]), "at least one observable"),
        (dict(states=[]), "at least one state"),
        (dict(states=["a", "b", "a"]), "duplicate names"),
        (dict(inputs=["u", "a"]), "both states and inputs"),
        (dict(states=["a", ""]), "non-empty string"),
        (dict(edges=EDGES + [("a",)]), "must be a pair"),
        (dict(edges=[("u", "a"), ("a", "a"), ("b", "b")]), "observable 'b' is unreachable from every input and state"),
        (dict(keep=[["u"]]), "'u' is not a state"),
    ],
)
def test_graph_validation_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        chain(**kw)


def test_relax_collapses_cycles_adds_shortcuts_and_drops_dead_states():
    # u -> x <-> y -> m -> s (obs); dead: q (reaches nothing observable)
    edges = [("u", "x"), ("x", "y"), ("y", "x"), ("y", "m"), ("m", "s"), ("s", "s"), ("x", "q")]
    g = HGSGraph(["x", "y", "m", "s", "q"], ["u"], ["s"], edges)
    rg = g.relax()
    assert rg.dropped_states == ("q",)
    assert rg.state_names == ("x", "y", "m", "s")
    assert rg.groups == ((0, 1), (2,), (3,))
    named = rg.named_edges()
    # the merged cycle sees itself (both members); an edge out of it is one per member
    assert {("x", "x+y"), ("y", "x+y"), ("x", "m"), ("y", "m")} <= set(named)
    # closure: x+y -> s and u -> m; never u -> s
    assert {("x", "s"), ("y", "s"), ("u", "m")} <= set(named)
    assert ("u", "s") not in named
    plain = g.relax(closure=False).named_edges()
    assert set(named) - set(plain) == {("x", "s"), ("y", "s"), ("u", "m")}
    assert {("x", "s"), ("y", "s"), ("u", "m")} <= set(rg.named_edges(rg.shortcut_edges()))
    # keep: the cycle stays two nodes
    rk = HGSGraph(g.states, g.inputs, g.observables, g.edges, keep=[["x", "y"]]).relax()
    assert rk.groups == ((0,), (1,), (2,), (3,))


def test_prune_removes_states_that_no_longer_reach_an_observable():
    g = HGSGraph(["a", "d", "b"], ["u"], ["b"], [("u", "a"), ("a", "b"), ("u", "d"), ("d", "b"), ("b", "b")])
    rg = g.relax()
    ids = {n: i for i, n in enumerate(rg.names)}
    gid = {rg.group_name(k): k for k in range(rg.n_groups)}
    drop = (ids["d"], gid["b"])
    red, ks, kg = rg.prune(set(rg.feature_edges) - {drop})
    assert red.state_names == ("a", "b") and ks == [ids["a"], ids["b"]]
    assert "d" in red.dropped_states
    with pytest.raises(ValueError, match="not edges of this graph"):
        rg.prune([(0, 99)])


def test_mnode_blocks_read_only_their_parents():
    g = hf.models.uva_padova_graph()
    rg = g.relax()
    m = hf.hgs.MNODE(rg, n_ctx=3, hidden=(4,))
    field = m.field
    D, K = rg.n_states, rg.n_inputs
    x = torch.randn(5, D + K, dtype=torch.float64, requires_grad=True)
    out = field.nn(x)
    for i in range(D):
        (grad,) = torch.autograd.grad(out[:, i].sum(), x, retain_graph=True)
        reads = {f for f in range(D + K) if grad[:, f].abs().sum() > 0}
        g_i = rg.group_of()[i]
        parents = {f for f, gg in rg.feature_edges if gg == g_i}
        assert reads == parents, rg.names[i]
    # one edge weight per feature edge, all live
    assert len(m.live_edges()) == len(rg.feature_edges)


def test_uva_padova_graph_structure():
    g = hf.models.uva_padova_graph()
    assert g.n_states == 13 and g.inputs == ("carbs", "insulin") and g.observables == ("Gs",)
    rg = g.relax()
    assert sorted(rg.group_name(k) for k in range(rg.n_groups) if len(rg.groups[k]) > 1) == ["Gp+Gt", "Ip+Il"]
    named = rg.named_edges()
    assert ("carbs", "Gs") not in named and ("insulin", "Gs") not in named
    assert ("Qgut", "Gs") in named  # a closure shortcut along the meal pathway
    assert rg.dropped_states == ()


def _series(n_sub=2, n=20):
    out = []
    for s in range(n_sub):
        t = np.arange(n, dtype=float)
        y = np.sin(t)[:, None] + s
        it = np.array([0.0, 5.5, 12.0])
        iv = np.array([[1.0], [0.0], [2.0]])
        out.append((f"p{s}", t, y, it, iv))
    return out


def test_windows_from_series_context_and_inputs():
    w = Windows.from_series(_series(), context=3, horizon=4, stride=4)
    assert w.t.shape[1] == 5 and w.ctx.shape[1] == 3 + 2
    # first window of p0 starts at t0 = 2: context obs y(0..2), input integrals over [0,1], [1,2] = 1, 1
    np.testing.assert_allclose(w.ctx[0].numpy(), [math.sin(0), math.sin(1), math.sin(2), 1.0, 1.0])
    # window starting at t0 = 6: inputs are 0 from 5.5 on, no switch inside [6, 10]
    b = int(((w.t[:, 0] == 6.0) & torch.tensor([g == "p0" for g in w.groups])).nonzero()[0])
    assert float(w.input_times[b, 0]) == 6.0 and float(w.input_values[b, 0, 0]) == 0.0
    assert torch.isinf(w.input_times[b, 1:]).all()
    # integral across the 5.5 switch: window at t0 = 10, context [8, 9, 10]: zero input
    folds = list(w.kfold(2, seed=0))
    assert all(set(tr.groups).isdisjoint(va.groups) for tr, va in folds)


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(t=torch.zeros(2, 3)), "strictly increasing"),
        (dict(y=torch.full((2, 3, 1), math.inf)), "finite or NaN"),
        (dict(groups=("a",)), "groups must name"),
        (dict(input_times=torch.tensor([[-1.0], [0.0]])), "earlier than the window's start"),
        (dict(ctx=torch.full((2, 1), math.nan)), "ctx must be finite"),
    ],
)
def test_windows_validation(kw, msg):
    args = dict(
        t=torch.tensor([[0.0, 1.0, 2.0]] * 2),
        y=torch.zeros(2, 3, 1),
        ctx=torch.zeros(2, 1),
        input_times=torch.zeros(2, 1),
        input_values=torch.zeros(2, 1, 1),
        groups=("a", "b"),
    )
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        Windows(**args)


def test_sparsify_argument_errors():
    g = chain()
    w = Windows.from_series(_series(3), context=1, horizon=4)
    with pytest.raises(ValueError, match="lambdas"):
        hf.hgs.sparsify(g, w, lambdas=[-1.0])
    with pytest.raises(ValueError, match="rule"):
        hf.hgs.sparsify(g, w, rule="max")
    with pytest.raises(ValueError, match="2 inputs"):
        hf.hgs.sparsify(HGSGraph(["a", "b"], ["u", "v"], ["b"], EDGES), w)
    with pytest.raises(ValueError, match="folds"):
        hf.hgs.sparsify(g, w, lambdas=[0.1, 0.2], folds=5, epochs=1)


def test_transfer_to_the_reduced_model_keeps_predictions():
    """Pruning edges until states are unreachable, then moving the weights into the smaller MNODE,
    changes nothing the observables see."""
    from hgs_truth import prior, windows

    from hnode_fast.hgs.model import transfer
    from hnode_fast.hgs.pipeline import _mask_edges

    w = windows(2, seed=0, horizon=6)
    rg = prior().relax()
    sc = hf.hgs.Scaler.fit(w)
    torch.manual_seed(0)
    full = hf.hgs.MNODE(rg, w.ctx.shape[1], hidden=(3,), enc_hidden=4)
    with torch.no_grad():
        full.field.nn.edge_weights.uniform_(0.5, 1.5)
    gid = {rg.group_name(k): k for k in range(rg.n_groups)}
    fid = {n: i for i, n in enumerate(rg.names)}
    cut = {(fid["d"], gid["c"]), (fid["e"], gid["b"]), (fid["e"], gid["c"])}
    kept = sorted(set(rg.feature_edges) - cut)
    _mask_edges(full, kept)
    red_rg, ks, kg = rg.prune(kept)
    assert red_rg.state_names == ("a", "b", "c")
    small = hf.hgs.MNODE(red_rg, w.ctx.shape[1], hidden=(3,), enc_hidden=4)
    transfer(full, small, ks, kg)
    with torch.no_grad():
        p_full, _ = hf.hgs.predict(full, w, sc, backend="reference", rtol=1e-10, atol=1e-12)
        p_small, _ = hf.hgs.predict(small, w, sc, backend="reference", rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(p_small, p_full, rtol=1e-7, atol=1e-8)
    assert small.n_params()["field"] < full.n_params()["field"]
