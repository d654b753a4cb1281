"""Multiple shooting (hnode_fast/shooting.py): segments reassemble the whole solve when the
segment states lie on it (with doses and inputs), gradients equal the reference backend's and
pass gradcheck, growth, hf.fit(shooting=...) and bad input."""

import math

import pytest
import torch
from fieldgen import random_field

import hnode_fast as hf
from hnode_fast.shooting import MultipleShooting, Shooting, continuity_penalty, grow, segment_starts

f64 = torch.float64
TIGHT = dict(rtol=1e-10, atol=1e-12)


def _whole(field, y0, t, **kw):
    return hf.odeint(field, y0, t, **TIGHT, **kw)


def test_segment_starts_and_bad_input():
    assert segment_starts(9, 4) == [0, 4]
    assert segment_starts(10, 4) == [0, 4, 8]
    assert segment_starts(2, 7) == [0]
    with pytest.raises(ValueError, match="seg_len"):
        segment_starts(5, 0)
    with pytest.raises(ValueError, match="at least 2"):
        segment_starts(1, 1)
    t = torch.linspace(0, 1, 5, dtype=f64)
    with pytest.raises(ValueError, match="init must have shape"):
        MultipleShooting(t, 2, torch.zeros(5, 3, dtype=f64))
    with pytest.raises(ValueError, match="t must have shape"):
        MultipleShooting(torch.linspace(0, 1, 4, dtype=f64), 2, torch.zeros(5, 2, 3, dtype=f64))
    with pytest.raises(ValueError, match="strictly increasing"):
        MultipleShooting(torch.tensor([0.0, 1.0, 1.0, 2.0, 3.0], dtype=f64), 2, torch.zeros(5, 2, 3, dtype=f64))
    with pytest.raises(ValueError, match="finite"):
        MultipleShooting(t, 2, torch.full((5, 2, 3), float("nan"), dtype=f64))
    ms = MultipleShooting(t, 2, torch.zeros(5, 2, 3, dtype=f64))
    with pytest.raises(ValueError, match="y0 must have shape"):
        ms(random_field(D=3), torch.zeros(3, 3, dtype=f64))
    with pytest.raises(ValueError, match="seg_len"):
        Shooting(seg_len=0)
    with pytest.raises(ValueError, match="weight"):
        Shooting(weight=float("nan"))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("T,seg", [(9, 4), (10, 3), (6, 1)])
def test_segments_reassemble_the_whole_solve(backend, T, seg):
    """States set on the true trajectory: the assembled prediction equals the whole solve and
    the continuity defects vanish (to the tolerance), for even and ragged segmentations."""
    field = random_field(D=3, n_inputs=0)
    B = 4
    y0 = 0.5 * torch.randn(B, 3, dtype=f64)
    t = torch.sort(torch.rand(B, T, dtype=f64) * 3, dim=1).values + torch.arange(T, dtype=f64) * 0.05
    with torch.no_grad():
        ref = _whole(field, y0, t, backend=backend)
        ms = MultipleShooting(t, seg, ref)
        assert ms.n_segments == len(range(0, T - 1, seg)) and ms.states.shape == (ms.n_segments - 1, B, 3)
        pred, gaps, st = ms(field, y0, backend=backend, **TIGHT)
    assert pred.shape == ref.shape and bool((st.status == 0).all())
    torch.testing.assert_close(pred, ref, rtol=1e-8, atol=1e-9)
    assert float(continuity_penalty(gaps)) < 1e-16
    # a perturbed state shows up as a defect at exactly that cut and changes only its segment
    with torch.no_grad():
        if ms.n_segments > 1:
            ms.states[0, 1] += 0.1
            pred2, gaps2, _ = ms(field, y0, backend=backend, **TIGHT)
            assert float(gaps2[0, 1].abs().max()) == pytest.approx(0.1, rel=1e-6)
            a, b = ms.starts[1], ms.starts[2] if ms.n_segments > 2 else T
            assert not torch.allclose(pred2[a:b, 1], ref[a:b, 1])
            torch.testing.assert_close(pred2[:a], ref[:a], rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_doses_and_inputs_split_per_segment(backend):
    """Doses inside a segment, exactly at a cut and at t0, and piecewise-constant inputs: the
    reassembled solve matches the whole one (outputs at dose times are pre-dose)."""
    field = random_field(D=3, n_inputs=1)
    B, T = 2, 9
    t = torch.linspace(0, 4, T, dtype=f64).expand(B, T).contiguous()
    y0 = torch.zeros(B, 3, dtype=f64)
    # cuts at columns 0, 3, 6 -> times 0, 1.5, 3.0
    ev = hf.Events(
        times=torch.tensor([[0.0, 1.5, 2.2], [0.7, 3.0, float("inf")]], dtype=f64),
        states=torch.tensor([[0, 1, 2], [1, 0, 0]]),
        amounts=torch.tensor([[1.0, 0.5, -0.3], [0.8, 0.4, 0.0]], dtype=f64),
    )
    inp = hf.Inputs(
        times=torch.tensor([[0.0, 2.0], [1.0, 3.5]], dtype=f64), values=torch.tensor([[[0.5], [-0.2]], [[1.0], [0.3]]], dtype=f64)
    )
    with torch.no_grad():
        ref = _whole(field, y0, t, events=ev, inputs=inp, backend=backend)
        ms = MultipleShooting(t, 3, ref)
        pred, gaps, _ = ms(field, y0, events=ev, inputs=inp, backend=backend, **TIGHT)
    torch.testing.assert_close(pred, ref, rtol=1e-8, atol=1e-9)
    assert float(gaps.abs().max()) < 1e-8


def _loss(field, ms, y0, y_obs, backend, w=3.0):
    pred, gaps, _ = ms(field, y0, backend=backend, rtol=1e-8, atol=1e-10)
    return (pred - y_obs).pow(2).mean() + w * continuity_penalty(gaps)


def test_gradients_match_reference_backend():
    """d loss / d (network, rates, segment states): the compiled CPU backend's discrete adjoint
    equals autograd through the reference backend."""
    field = random_field(D=3)
    B, T = 3, 11
    t = torch.linspace(0, 3, T, dtype=f64)
    y0 = 0.3 * torch.randn(B, 3, dtype=f64)
    with torch.no_grad():
        y_obs = _whole(field, y0, t, backend="reference") + 0.05 * torch.randn(T, B, 3, dtype=f64)
    ms = MultipleShooting(t, 3, y_obs)
    grads = {}
    for backend in ("reference", "cpu"):
        field.zero_grad()
        ms.zero_grad()
        _loss(field, ms, y0, y_obs, backend).backward()
        grads[backend] = [p.grad.clone() for p in list(field.parameters()) + [ms.states] if p.grad is not None]
    assert len(grads["cpu"]) == len(grads["reference"]) > 2
    for a, b in zip(grads["cpu"], grads["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)
    assert float(grads["cpu"][-1].abs().max()) > 0  # the states get a gradient


def test_gradcheck_states():
    field = random_field(D=2, hidden=(4,))
    t = torch.linspace(0, 2, 7, dtype=f64)
    y0 = 0.3 * torch.randn(2, 2, dtype=f64)
    with torch.no_grad():
        y_obs = _whole(field, y0, t, backend="reference")
    ms = MultipleShooting(t, 2, y_obs + 0.1)

    def fn(states):
        pred, gaps, _ = torch.func.functional_call(ms, {"states": states}, (field, y0), {"backend": "cpu", **TIGHT})
        return (pred - y_obs).pow(2).sum() + continuity_penalty(gaps)

    s0 = ms.states.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(fn, (s0,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_grow_keeps_prediction_at_new_cuts():
    field = random_field(D=3)
    t = torch.linspace(0, 3, 13, dtype=f64)
    y0 = 0.3 * torch.randn(2, 3, dtype=f64)
    with torch.no_grad():
        guess = _whole(field, y0, t, backend="cpu") + 0.01
        ms = MultipleShooting(t, 2, guess)
        pred = ms(field, y0, backend="cpu")[0]
        ms2 = grow(ms, pred, 4)
    assert ms2.starts == [0, 4, 8] and ms2.seg_len == 4
    torch.testing.assert_close(ms2.states, pred[[4, 8]])
    with pytest.raises(ValueError, match="lengthens"):
        grow(ms2, pred, 2)


def _oscillator_data(n=6, T=25, noise=0.0, seed=0):
    """Damped oscillator x'' = -x - 0.1 x' observed in full, from random starts."""
    import numpy as np

    from hnode_fast.data import LongitudinalDataset, Subject

    rng = np.random.default_rng(seed)
    times = np.linspace(0.0, 12.0, T)
    subs = []
    for i in range(n):
        a, ph = rng.uniform(0.5, 1.5), rng.uniform(0, 2 * math.pi)
        om = math.sqrt(1 - 0.05**2)
        x = a * np.exp(-0.05 * times) * np.cos(om * times + ph)
        v = np.gradient(x, times)
        obs = np.stack([x, v], 1) + noise * rng.standard_normal((T, 2))
        subs.append(Subject(id=str(i), times=times, obs=obs, dose_times=[0.0, 0.0], dose_amounts=[x[0], v[0]], dose_states=[0, 1]))
    return LongitudinalDataset(subs, ["x", "v"], ["x", "v"])


def test_fit_with_multiple_shooting_and_growth():
    """hf.fit(shooting=...) trains (the loss falls), grows the segments to single shooting and
    restores the best state by whole-trajectory validation; deterministic."""
    data = _oscillator_data()
    losses = []
    for _ in range(2):
        torch.manual_seed(0)
        field = hf.HybridField(nn=hf.MaskedMLP(2, 2, hidden=(16,), activation="tanh").double())
        r = hf.fit(field, data, epochs=60, lr=0.02, progress=False, shooting=Shooting(seg_len=3, weight=1.0, grow_every=20, grow_factor=4))
        losses.append([h["loss"] for h in r.history])
    assert losses[0] == losses[1]
    h = r.history
    assert h[-1]["mse"] < 0.5 * h[0]["mse"]
    assert math.isfinite(r.best_val) and r.best_val <= min(x["val"] for x in h) + 1e-15
    with pytest.raises(ValueError, match="cannot be combined"):
        hf.fit(field, data, epochs=2, progress=False, shooting=Shooting(), reg={"local": 1.0})
