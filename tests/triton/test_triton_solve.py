"""backend="triton": whole solves and discrete-adjoint gradients against the reference."""

import pytest
import torch
from tt_helpers import f64, make_field

import hnode_fast as hf

TOL = dict(rtol=1e-6, atol=1e-8)


def _solve_both(f, y0, t, **kw):
    out = {}
    for be in ("reference", "triton"):
        out[be] = hf.odeint(f, y0, t, backend=be, return_stats=True, **TOL, **kw)
    return out


def _assert_same(res, rtol=1e-10, atol=1e-12):
    (yr, sr), (yt, st) = res["reference"], res["triton"]
    torch.testing.assert_close(yt, yr, rtol=rtol, atol=atol, equal_nan=True)
    assert torch.equal(st.n_steps, sr.n_steps)
    assert torch.equal(st.n_rejected, sr.n_rejected)
    assert torch.equal(st.nfe, sr.nfe)
    assert torch.equal(st.status, sr.status)


def test_solve_events_inputs_per_trajectory_grid(device, tseed):
    f = make_field(D=3, hidden=(6,), n_inputs=1, nn_inputs=True, mask_density=0.8).to(device)
    B = 3
    y0 = torch.rand(B, 3, dtype=f64, device=device)
    t = torch.tensor([[0.0, 0.2, 0.6], [0.1, 0.5, 0.6], [0.0, 0.35, 0.5]], dtype=f64, device=device)
    ev = hf.Events(
        times=torch.tensor([[0.3, float("inf")], [0.2, 0.4], [0.0, float("inf")]], dtype=f64),
        states=torch.tensor([[0, 0], [1, 2], [2, 0]]),
        amounts=torch.rand(B, 2, dtype=f64),
    )
    inp = hf.Inputs(times=torch.tensor([[0.0, 0.25]] * B, dtype=f64), values=torch.rand(B, 2, 1, dtype=f64))
    res = _solve_both(f, y0, t, events=ev, inputs=inp)
    _assert_same(res)
    # same accepted step times per row (columns differ: rows awaiting a restart idle until the periodic check)
    for a, b in zip(res["triton"][1].step_times, res["reference"][1].step_times):
        # (h comes from the error estimate, a cancelling sum: equal to ~1e-8 relative)
        torch.testing.assert_close(a[~a.isnan()], b[~b.isnan()], rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("shape", ["batch1-D1", "B17-D2"])
def test_solve_odd_sizes(shape, device, tseed):
    if shape == "batch1-D1":
        f = make_field(D=1, hidden=(5,), activation="silu").to(device)
        y0 = torch.rand(1, dtype=f64, device=device) + 0.1  # (D,) input, squeezed output
    else:
        f = make_field(D=2, hidden=(3, 3), activation="relu", full_terms=False).to(device)
        y0 = torch.rand(17, 2, dtype=f64, device=device) + 0.1  # two tiles, the second partial
    t = torch.tensor([0.0, 0.3, 0.5], dtype=f64, device=device)
    res = _solve_both(f, y0, t)
    _assert_same(res)


def test_solve_float32(device, tseed):
    f = make_field(D=3, hidden=(16,), activation="tanh")
    y0 = torch.rand(4, 3, dtype=f64) + 0.1
    t = torch.tensor([0.0, 0.5], dtype=f64)
    yr = hf.odeint(f, y0, t, backend="reference", rtol=1e-10, atol=1e-12)
    f32 = f.to(torch.float32).to(device)
    y32 = hf.odeint(f32, y0.float().to(device), t.to(device), backend="triton", rtol=1e-5, atol=1e-7)
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double().cpu(), yr, rtol=1e-4, atol=1e-5)


def test_discrete_adjoint_equals_reference_autograd(device, tseed):
    f = make_field(D=2, hidden=(5,), n_inputs=1, nn_inputs=True, mask_density=0.8).to(device)
    y0 = (torch.rand(3, 2, dtype=f64, device=device) + 0.1).requires_grad_(True)
    t = torch.tensor([0.0, 0.2, 0.4], dtype=f64, device=device)
    amounts = torch.rand(3, 1, dtype=f64, requires_grad=True)
    ev = hf.Events(times=torch.tensor([[0.15]] * 3, dtype=f64), states=torch.zeros(3, 1, dtype=torch.long), amounts=amounts)
    inp = hf.Inputs(times=torch.tensor([[0.0, 0.1]] * 3, dtype=f64), values=torch.rand(3, 2, 1, dtype=f64))
    params = [p for p in f.parameters() if p.requires_grad]
    grads = {}
    for be in ("reference", "triton"):
        y = hf.odeint(f, y0, t, backend=be, events=ev, inputs=inp, rtol=1e-5, atol=1e-7)
        loss = (y**2).sum() + y[-1, :, 0].sum()
        grads[be] = torch.autograd.grad(loss, [y0, amounts] + params)
    for a, b in zip(grads["triton"], grads["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_unsupported_options_raise(device, monkeypatch):
    f = make_field(D=2, hidden=(3,)).to(device)
    y0 = torch.rand(2, 2, dtype=f64, device=device)
    t = torch.tensor([0.0, 0.1], dtype=f64, device=device)
    with pytest.raises(NotImplementedError, match="shared"):
        hf.odeint(f, y0, t, backend="triton", step_mode="shared")
    with pytest.raises(NotImplementedError, match="HybridField"):
        hf.odeint(lambda tt, y: -y, y0, t, backend="triton")
    if device.type == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(NotImplementedError, match="TRITON_INTERPRET=1"):
            hf.odeint(f, y0, t, backend="triton")


def test_auto_never_picks_triton_on_cpu(monkeypatch):
    import hnode_fast.backends.triton as ht
    from hnode_fast import backends

    called = []
    monkeypatch.setitem(backends._BUILT, "triton", lambda prob: called.append(1))
    f = make_field(D=2, hidden=(3,))
    hf.odeint(f, torch.rand(2, 2, dtype=f64), torch.tensor([0.0, 0.1], dtype=f64), backend="auto")
    assert not called and ht.has_triton()
