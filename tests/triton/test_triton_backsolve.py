"""backend="triton", adjoint="backsolve": the continuous adjoint with the Triton field/VJP kernels.

It runs the algorithm of reference/backsolve.py step for step (same engine, same augmented
system; only f and the VJPs come from the kernels), so on smooth fields it equals the reference
backsolve to rounding (the 1e-9 tolerance leaves room for an accept/reject decision flipped by
a rounding difference; measured <= ~1.5e-15 relative). Against the discrete adjoint (exact
gradient of the computed solution) it differs by a solver-tolerance effect, checked normwise per
tensor: measured <= ~1e-9 at rtol=1e-10 without stops; with doses and input switches the gap
converges slowly (the reference backsolve has the same gap: up to ~7.5e-7 at rtol=1e-9, ~4.5e-7
at 1e-10, ~9e-8 at 1e-11 on one seed), so that case gets 1e-5.

Fields are smooth (Hill exponents 2 and 3, tanh/silu networks): with exponent 1.5 the Jacobian
is not Lipschitz where a state crosses 0, and continuous-adjoint comparisons would measure that
singularity rather than the code.
"""

import warnings

import pytest
import torch
from tt_helpers import f64

import hnode_fast as hf

TIGHT = dict(rtol=1e-10, atol=1e-12)


def smooth_field(D=3, hidden=(6,), activation="tanh", n_inputs=0, nn_inputs=False, mech=True, dtype=f64, scale=0.5, all_kinds=True):
    """tests/conftest.py's random_field(..., hill_n=SMOOTH_HILL) (not importable from here);
    ``all_kinds=False`` keeps fewer terms (the interpreter loops over terms: time)."""
    terms = []
    if mech:
        for i in range(D):
            terms.append(hf.Linear(i, (i + 1) % D if D > 1 else None, 0.3 + 0.2 * float(torch.rand(()))))
        if all_kinds:
            terms.append(hf.Constant(0, 0.1))
            terms.append(hf.MichaelisMenten(D - 1, None, 0.5, 0.7))
            terms.append(hf.MassAction((0, D - 1), None, 0.05))
        terms.append(hf.Hill(0, D - 1, 0.4, 0.8, 2.0))
        terms.append(hf.Hill(D - 1, 0, 0.3, 0.6, 3.0, repress=True))
        for k in range(n_inputs):
            terms.append(hf.Input(k, k % D, 0.7))
    m = hf.MechanisticGraph(D, terms, n_inputs=n_inputs, dtype=dtype) if mech else None
    net = hf.MaskedMLP(D + (n_inputs if nn_inputs else 0), D, hidden=hidden, activation=activation)
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.mul_(scale)
    f = hf.HybridField(mech=m, nn=net, n_states=D, n_inputs=n_inputs if (n_inputs and not mech) else None)
    return f.to(dtype)


def _grads(f, y0, t, w, backend, adjoint="backsolve", **kw):
    y0 = y0.detach().clone().requires_grad_(True)
    params = [p for p in f.parameters() if p.requires_grad]
    y = hf.odeint(f, y0, t, backend=backend, adjoint=adjoint, **kw)
    loss = (y.nan_to_num() * w).sum() + (y.nan_to_num() ** 2).sum()
    return torch.autograd.grad(loss, [y0] + params, allow_unused=True)


def _max_rel(ga, gb):
    """max over tensors of ``max|a - b| / max|b|`` (normwise per tensor)."""
    worst = 0.0
    for a, b in zip(ga, gb):
        if a is None or b is None:
            assert (a is None or (a == 0).all()) and (b is None or (b == 0).all())
            continue
        scale = max(float(b.abs().max()), 1e-300)
        worst = max(worst, float((a.double() - b.double()).abs().max()) / scale)
    return worst


def _check(f, y0, t, w, device, discrete_tol=None, **kw):
    """triton backsolve vs reference backsolve (tight) and, optionally, vs the discrete adjoint."""
    gt = _grads(f.to(device), y0.to(device), t.to(device), w.to(device), "triton", **kw)
    gt = [None if g is None else g.cpu() for g in gt]
    f.cpu()
    gr = _grads(f, y0, t, w, "reference", **kw)
    rel_ref = _max_rel(gt, gr)
    assert rel_ref <= 1e-9, rel_ref
    rel_disc = None
    if discrete_tol is not None:
        gd = _grads(f, y0, t, w, "reference", adjoint="discrete", **kw)
        rel_disc = _max_rel(gt, gd)
        assert rel_disc <= discrete_tol, rel_disc
    print(f"max rel diff: vs reference backsolve {rel_ref:.2e}, vs discrete {rel_disc}")
    return gt


def test_matches_reference_backsolve_and_discrete(device, tseed):
    # mechanistic rates + network weights + y0, per-trajectory grid, weighted loss on all outputs
    f = smooth_field(D=3, hidden=(6,))
    B = 3
    y0 = torch.rand(B, 3, dtype=f64) + 0.1
    t = torch.tensor([[0.0, 0.1, 0.3], [0.05, 0.2, 0.3], [0.0, 0.15, 0.25]], dtype=f64)
    w = torch.randn(3, B, 3, dtype=f64)
    _check(f, y0, t, w, device, discrete_tol=1e-6, **TIGHT)


def test_events_inputs(device, tseed):
    # doses at t0, inside, twice at an output time, after t_end; input switches before t0 and at
    # an output time (left limits in the backward solve)
    B, D = 3, 2
    f = smooth_field(D=D, hidden=(5,), n_inputs=1, nn_inputs=True, all_kinds=False)
    inf = float("inf")
    ev = hf.Events(
        times=torch.tensor([[0.0, 0.3, 0.3], [0.15, inf, inf], [0.5, inf, inf]], dtype=f64),
        states=torch.tensor([[0, 1, 1], [1, 0, 0], [0, 0, 0]]),
        amounts=torch.rand(B, 3, dtype=f64),
    )
    inp = hf.Inputs(times=torch.tensor([[-1.0, 0.2], [0.0, 0.3], [0.1, inf]], dtype=f64), values=torch.randn(B, 2, 1, dtype=f64))
    t = torch.tensor([[0.0, 0.3, 0.35], [0.0, 0.2, 0.35], [0.0, 0.1, 0.35]], dtype=f64)
    y0 = torch.rand(B, D, dtype=f64) + 0.1
    w = torch.randn(3, B, D, dtype=f64)
    _check(f, y0, t, w, device, discrete_tol=1e-5, events=ev, inputs=inp, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("shape", ["batch1-D1", "B17-D2"])
def test_odd_sizes(shape, device, tseed):
    if shape == "batch1-D1":  # (D,) y0 and (T,) t: squeezed output
        f = smooth_field(D=1, hidden=(5,), activation="silu", all_kinds=False)
        y0 = torch.rand(1, dtype=f64) + 0.1
        w = torch.randn(3, 1, dtype=f64)
    else:  # two tiles (the second partial), odd hidden widths
        f = smooth_field(D=2, hidden=(3, 3), activation="silu", mech=False)
        y0 = torch.rand(17, 2, dtype=f64) + 0.1
        w = torch.randn(3, 17, 2, dtype=f64)
    t = torch.tensor([0.0, 0.15, 0.3], dtype=f64)
    _check(f, y0, t, w, device, rtol=1e-8, atol=1e-10)


def test_float32(device, tseed):
    f = smooth_field(D=3, hidden=(6,))
    y0 = torch.rand(2, 3, dtype=f64) + 0.1
    t = torch.tensor([0.0, 0.2, 0.4], dtype=f64)
    w = torch.randn(3, 2, 3, dtype=f64)
    gr = _grads(f, y0, t, w, "reference", **TIGHT)
    f32 = f.to(torch.float32).to(device)
    g32 = _grads(f32, y0.float().to(device), t.to(device), w.float().to(device), "triton", rtol=1e-5, atol=1e-7)
    assert all(g is None or g.dtype == torch.float32 for g in g32)
    rel = _max_rel([None if g is None else g.cpu() for g in g32], gr)
    print(f"float32 triton backsolve vs float64 reference backsolve: {rel:.2e}")
    assert rel <= 1e-4, rel


def test_single_output_and_stats(device):
    f = smooth_field(D=2, hidden=(4,)).to(device)
    y0 = torch.rand(2, 2, dtype=f64, device=device, requires_grad=True)
    y, st = hf.odeint(f, y0, torch.tensor([0.5], dtype=f64, device=device), backend="triton", adjoint="backsolve", return_stats=True)
    (g,) = torch.autograd.grad((y * 3).sum(), y0)
    assert (g == 3).all()
    assert (st.status == 0).all() and (st.n_steps == 0).all()


def test_failed_forward_like_reference(device):
    # row 0 blows up (y' = y^2, max_steps reached): its outputs after the failure are NaN, their
    # gradient counts as 0 and the backward starts from the state where the forward stopped
    f = hf.HybridField(mech=hf.MechanisticGraph(1, [hf.MassAction((0, 0), 0, 1.0, consume=False)], dtype=f64))
    y0 = torch.tensor([[1.0], [0.1]], dtype=f64)
    t = torch.tensor([0.0, 0.5, 2.0], dtype=f64)
    w = torch.ones(3, 2, 1, dtype=f64)
    kw = dict(rtol=1e-6, atol=1e-8, max_steps=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gr = _grads(f, y0, t, w, "reference", **kw)
        gt = _grads(f.to(device), y0.to(device), t.to(device), w.to(device), "triton", **kw)
    gt = [g.cpu() for g in gt]
    assert torch.isfinite(gt[0][1]).all()
    torch.testing.assert_close(gt[0], gr[0], rtol=1e-9, atol=1e-12, equal_nan=True)


def test_dose_amount_gradient_raises(device):
    f = smooth_field(D=2, hidden=(4,)).to(device)
    ev = hf.Events(times=[[0.2]] * 2, states=[[0]] * 2, amounts=torch.ones(2, 1, dtype=f64, requires_grad=True))
    with pytest.raises(NotImplementedError, match="backsolve"):
        hf.odeint(
            f,
            torch.rand(2, 2, dtype=f64, device=device),
            torch.tensor([0.0, 0.5], dtype=f64, device=device),
            backend="triton",
            adjoint="backsolve",
            events=ev,
        )
