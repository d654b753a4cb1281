"""Regularizers: values and gradients against direct formulas; L0 gate distribution; local
error regularizer; pruning."""

import math

import pytest
import torch
from conftest import random_field

import hnode_fast as hf
from hnode_fast import sparsity as sp
from hnode_fast.reference import dopri5 as dp

f64 = torch.float64


def masked_mlp(seed_density=0.6):
    mlp = hf.MaskedMLP(4, 3, hidden=(5, 6), activation="tanh").double()
    for i, layer in enumerate(mlp.layers):
        mlp.set_mask(i, torch.rand(layer.weight.shape) < seed_density)
    return mlp


def test_l1_l2_values_and_grads(seed):
    mlp = masked_mlp()
    f = mlp
    W = [l.weight for l in mlp.layers]
    M = mlp.masks
    assert sp.l1(f).item() == pytest.approx(sum(float((w * m).abs().sum()) for w, m in zip(W, M)), rel=1e-14)
    assert sp.l2(f).item() == pytest.approx(sum(float(((w * m) ** 2).sum()) for w, m in zip(W, M)), rel=1e-14)
    g = torch.autograd.grad(sp.l1(f), W[0])[0]
    torch.testing.assert_close(g, torch.sign(W[0]) * M[0])
    g = torch.autograd.grad(sp.l2(f), W[1])[0]
    torch.testing.assert_close(g, 2 * W[1] * M[1])


def test_path_penalty_direct_formula(seed):
    mlp = masked_mlp()
    W = [(l.weight * m).abs() for l, m in zip(mlp.layers, mlp.masks)]
    # direct: sum over all paths of the product of |weights|
    P = torch.zeros(3, 4, dtype=f64)
    for i in range(3):
        for j in range(4):
            s = 0.0
            for a in range(5):
                for b in range(6):
                    s += W[0][a, j] * W[1][b, a] * W[2][i, b]
            P[i, j] = s
    torch.testing.assert_close(sp.input_dependencies(mlp), P)
    val = sp.path_penalty(mlp)
    assert val.item() == pytest.approx(float(P.mean()), rel=1e-13)
    # gradient of the mean path product w.r.t. W_2 entries: d/dW2[i,b] = sign * sum_{j,a} |W1[b,a]||W0[a,j]| / 12
    g = torch.autograd.grad(val, mlp.layers[2].weight)[0]
    direct = torch.sign(mlp.layers[2].weight) * mlp.masks[2] * (W[1] @ W[0]).sum(1)[None, :] / 12
    torch.testing.assert_close(g, direct)


def test_input_dependencies_zero_exactly_without_path(seed):
    mlp = hf.MaskedMLP(3, 3, hidden=(4,)).double()
    m0 = torch.ones(4, 3, dtype=torch.bool)
    m0[:, 1] = False  # input 1 reaches nothing
    m1 = torch.ones(3, 4, dtype=torch.bool)
    m1[2, :] = False  # output 2 reads nothing
    mlp.set_mask(0, m0)
    mlp.set_mask(1, m1)
    P = sp.input_dependencies(mlp)
    assert torch.all(P[:, 1] == 0) and torch.all(P[2] == 0)
    assert torch.all(P[:2][:, [0, 2]] > 0)
    assert sp.feature_sparsity(mlp) == pytest.approx(5 / 9)


def test_cnode_path_l1_uses_raw_weights(seed):
    mlp = masked_mlp()
    raw = [l.weight.abs() for l in mlp.layers]
    assert sp.cnode_path_l1(mlp).item() == pytest.approx(float((raw[2] @ raw[1] @ raw[0]).mean()), rel=1e-13)


def test_edge_l1_and_pruning(seed):
    D = 3
    mech = hf.MechanisticGraph(D, [hf.Linear(0, 1, 0.5), hf.Linear(1, 2, 0.3)], learn_gates=True, dtype=f64)
    mlp = hf.MaskedMLP(D, D, hidden=(6,)).double()
    mlp.add_edge_weights(torch.arange(6) // 2)
    f = hf.HybridField(mech=mech, nn=mlp)
    with torch.no_grad():
        mech.gates.copy_(torch.tensor([0.7, -1e-9], dtype=f64))
        mlp.edge_weights.copy_(torch.tensor([[1.0, 2.0, 0.0], [0.5, 1e-9, 1.0], [1.0, 1.0, -3.0]], dtype=f64))
    expect = 0.7 + 1e-9 + (1 + 2 + 0 + 0.5 + 1e-9 + 1 + 1 + 1 + 3)
    assert sp.edge_l1(f).item() == pytest.approx(expect, rel=1e-12)
    g = torch.autograd.grad(sp.edge_l1(f), mech.gates)[0]
    torch.testing.assert_close(g, torch.tensor([1.0, -1.0], dtype=f64))
    n = sp.prune_edges(f, 1e-6)
    assert n == 3  # gate 1, edge (block0, in2) and (block1, in1)
    assert mech.term_mask.tolist() == [True, False]
    assert not mlp.masks[0][0:2, 2].any() and not mlp.masks[0][2:4, 1].any()
    assert mlp.masks[0][4:, :].all()


def test_prune_magnitude_and_threshold(seed):
    mlp = masked_mlp(seed_density=1.0)
    total = sum(m.numel() for m in mlp.masks)
    sp.prune_magnitude(mlp, 0.75)
    kept = sum(int(m.sum()) for m in mlp.masks)
    assert kept == round(0.25 * total)
    assert sp.weight_sparsity(mlp) == pytest.approx(1 - kept / total)
    # the kept weights are the largest ones
    allw = torch.cat([l.weight.abs().flatten() for l in mlp.layers])
    keptw = torch.cat([l.weight.abs()[m] for l, m in zip(mlp.layers, mlp.masks)])
    assert keptw.min() >= torch.topk(allw, kept).values.min()
    n = sp.prune_threshold(mlp, float(keptw.median()))
    assert n > 0 and all(torch.all((l.weight.abs() >= keptw.median()) | ~m) for l, m in zip(mlp.layers, mlp.masks))


def test_l0_gate_distribution(seed):
    """Hard-concrete: P(z = 0) = sigmoid(beta log(-gamma/zeta) - log_alpha) (expected closed gates)."""
    mlp = hf.MaskedMLP(1, 1, hidden=(), gates="l0").double()
    la = 0.3
    with torch.no_grad():
        mlp.log_alpha[0].fill_(la)
    mlp.train()
    n = 40000
    zs = []
    for _ in range(n):
        mlp.resample_gates()
        zs.append(float(mlp.gate_values(0)))
    z = torch.tensor(zs)
    beta, gamma, zeta = 2 / 3, -0.1, 1.1
    p0 = 1 / (1 + math.exp(-(beta * math.log(-gamma / zeta) - la)))
    # P(z=1): s > (1 - gamma)/(zeta - gamma)  <=> logit(u) > beta*logit(s*) - la
    s1 = (1 - gamma) / (zeta - gamma)
    p1 = 1 / (1 + math.exp(beta * math.log(s1 / (1 - s1)) - la))
    se = math.sqrt(0.25 / n)
    assert abs(float((z == 0).double().mean()) - p0) < 5 * se
    assert abs(float((z == 1).double().mean()) - p1) < 5 * se
    assert float(mlp.l0_penalty()) == pytest.approx(1 - p0, rel=1e-12)
    # one sample per solve: gate values stay fixed until resampled
    assert float(mlp.gate_values(0)) == float(mlp.gate_values(0))


def test_l0_init_matches_paper():
    torch.manual_seed(0)
    mlp = hf.MaskedMLP(50, 2, hidden=(400,), gates="l0")
    assert float(mlp.log_alpha[0].mean()) == pytest.approx(math.log(0.8 / 0.2), abs=5e-3)
    assert float(mlp.log_alpha[1].mean()) == pytest.approx(0.0, abs=5e-3)
    assert float(mlp.log_alpha[1].std()) == pytest.approx(0.01, rel=0.2)


def test_local_error_matches_direct_computation(seed):
    f = random_field(D=3, hidden=(6,))
    y = torch.rand(4, 3, dtype=f64)
    t = torch.rand(4, dtype=f64)
    rtol, atol = 1e-5, 1e-7
    val = sp.local_error(f, y, t, rtol, atol)
    # direct: the solver's own step from y with its own initial step
    fun = lambda tt, yy, ts: f.eval_u(yy, None)  # noqa: E731
    f0 = fun(t, y, t)
    h = dp.initial_step(fun, t, y, f0, torch.full_like(t, float("inf")), rtol, atol, dp.rms_rows, t)
    y1, K, _ = dp.rk_step(fun, t, y, f0, h, t)
    E = dp.error_norm(K, h, y, y1, rtol, atol, dp.rms_rows)
    assert val.item() == pytest.approx(float((E * h).mean()), rel=1e-12)
    # gradients reach parameters (through k2..k7) but not the detached state
    yy = y.clone().requires_grad_(True)
    v = sp.local_error(f, yy, t, rtol, atol)
    params = [p for p in f.parameters() if p.requires_grad]
    gs = torch.autograd.grad(v, params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in gs)
    assert v.grad_fn is not None and yy.grad is None


def test_local_error_gradient_excludes_k1(seed):
    """Finite differences where k1 is frozen equal the autograd gradient."""
    # strongly nonlinear field: E_est must sit far above rounding for differences to mean anything
    f = random_field(D=2, hidden=(8,), mech=False, scale=4.0)
    with torch.no_grad():
        f.nn.layers[1].weight.mul_(3)
    # of 32 random states keep the 3 with the largest error estimate (a random state can sit
    # where the field is nearly linear and E_est is at rounding level)
    y = torch.randn(32, 2, dtype=f64)
    E, _, _ = sp.local_error(f, y, torch.zeros(32, dtype=f64), 1e-4, 1e-6, return_parts=True)
    y = y[E.argsort(descending=True)[:3]]
    t = torch.zeros(3, dtype=f64)
    w = f.nn.layers[1].weight
    E, _, _ = sp.local_error(f, y, t, 1e-4, 1e-6, return_parts=True)
    assert E.min() > 1e-7  # rounding level is ~1e-10
    g = torch.autograd.grad(sp.local_error(f, y, t, 1e-4, 1e-6), w)[0]
    fun = lambda tt, yy, ts: f.eval_u(yy, None)  # noqa: E731
    with torch.no_grad():
        f0 = fun(t, y, t)
        h = dp.initial_step(fun, t, y, f0, torch.full_like(t, float("inf")), 1e-4, 1e-6, dp.rms_rows, t)

    with torch.no_grad():  # the regularizer detaches the error scale: hold it at the unperturbed y1
        y1_0, _, _ = dp.rk_step(fun, t, y, f0, h, t)
        scale = 1e-6 + torch.maximum(y.abs(), y1_0.abs()) * 1e-4

    def frozen(weight_delta):
        with torch.no_grad():
            w.add_(weight_delta)
            y1, K, _ = dp.rk_step(fun, t, y, f0, h, t)
            err = sum(K[j] * dp.E[j] for j in range(7)) * h[:, None]
            val = (dp.rms_rows(err / scale) * h).mean()
            w.sub_(weight_delta)
        return val

    d = torch.zeros_like(w)
    d[0, 1] = 1e-6
    fd = (frozen(d) - frozen(-d)) / 2e-6
    assert g[0, 1].item() == pytest.approx(fd.item(), rel=1e-4)  # measured worst 2.1e-5 over 60 seeds


def test_stiffness_estimate_linear():
    """For dy/dt = lam y, ||k7 - k6|| / ||y1 - g6|| = |lam| exactly."""
    lam = -7.0
    f = hf.HybridField(mech=hf.MechanisticGraph(1, [hf.Linear(0, 0, lam, consume=False)], dtype=f64))
    E, h, rho = sp.local_error(f, torch.ones(2, 1, dtype=f64), torch.zeros(2, dtype=f64), stiffness=True, return_parts=True)
    torch.testing.assert_close(rho, torch.full((2,), 7.0 / 3.3066, dtype=f64))


def test_sample_t_reg(seed):
    t = torch.stack([torch.linspace(0, 1, 5), torch.linspace(2, 6, 5)]).double()
    tr = sp.sample_t_reg(t)
    assert torch.all(tr >= t[:, 0]) and torch.all(tr <= t[:, -1])
    f = random_field(D=2, hidden=(4,))
    with torch.no_grad():
        _, st = hf.odeint(f, torch.rand(2, 2, dtype=f64), t, return_stats=True, backend="reference")
    ts = sp.sample_t_reg(t, mode="steps", stats=st)
    for b in range(2):
        starts = torch.cat([t[b, :1], st.step_times[b][~torch.isnan(st.step_times[b])][:-1]])
        assert torch.isclose(starts, ts[b]).any()
    with pytest.raises(ValueError, match="stats"):
        sp.sample_t_reg(t, mode="steps")
