"""Whole solves on every field backend: analytic solutions, events, inputs, grids, failures."""

import math

import pytest
import torch
from conftest import random_field

import hnode_fast as hf

f64 = torch.float64


def linear_field(A: torch.Tensor):
    """dz/dt = A z through Linear(src=j, dst=i, A[i, j], consume=False) terms."""
    D = A.shape[0]
    terms = [hf.Linear(j, i, float(A[i, j]), consume=False) for i in range(D) for j in range(D)]
    return hf.HybridField(mech=hf.MechanisticGraph(D, terms, dtype=f64))


@pytest.mark.parametrize("D", [1, 3, 17])
def test_linear_ode_matrix_exponential(D, backend, seed):
    A = torch.randn(D, D, dtype=f64) / math.sqrt(D) - 0.5 * torch.eye(D, dtype=f64)
    f = linear_field(A)
    y0 = torch.randn(4, D, dtype=f64)
    t = torch.linspace(0, 3, 7, dtype=f64)
    with torch.no_grad():
        y = hf.odeint(f, y0, t, rtol=1e-11, atol=1e-13, backend=backend)
    exact = torch.stack([y0 @ torch.linalg.matrix_exp(A * tk).T for tk in t])
    torch.testing.assert_close(y, exact, rtol=1e-8, atol=1e-10)


def test_linear_mlp_layer_matrix_exponential(backend, seed):
    """A single linear MaskedMLP layer: dz/dt = W z + b, solved via the augmented matrix exponential."""
    D = 3
    mlp = hf.MaskedMLP(D, D, hidden=()).double()
    with torch.no_grad():
        mlp.layers[0].weight.copy_(torch.randn(D, D, dtype=f64) * 0.5 - torch.eye(D, dtype=f64))
    f = hf.HybridField(nn=mlp)
    W, b = mlp.layers[0].weight.detach(), mlp.layers[0].bias.detach()
    M = torch.zeros(D + 1, D + 1, dtype=f64)
    M[:D, :D], M[:D, D] = W, b
    y0 = torch.randn(2, D, dtype=f64)
    t = torch.tensor([0.0, 0.5, 2.0], dtype=f64)
    with torch.no_grad():
        y = hf.odeint(f, y0, t, rtol=1e-11, atol=1e-13, backend=backend)
    aug = torch.cat([y0, torch.ones(2, 1, dtype=f64)], 1)
    exact = torch.stack([(aug @ torch.linalg.matrix_exp(M * tk).T)[:, :D] for tk in t])
    torch.testing.assert_close(y, exact, rtol=1e-8, atol=1e-10)


def decay_field(k=0.7):
    return hf.HybridField(mech=hf.MechanisticGraph(1, [hf.Linear(0, None, k)], dtype=f64))


def test_exponential_decay_two_doses(backend):
    k = 0.7
    f = decay_field(k)
    ev = hf.Events(
        times=torch.tensor([[1.0, 2.5, float("inf")]]), states=torch.tensor([[0, 0, 0]]), amounts=torch.tensor([[2.0, 3.0, 0.0]], dtype=f64)
    )
    t = torch.tensor([0.0, 0.5, 1.0, 1.7, 2.5, 3.0, 4.0], dtype=f64)
    y0 = torch.tensor([[1.0]], dtype=f64)
    with torch.no_grad():
        y, st = hf.odeint(f, y0, t, rtol=1e-10, atol=1e-12, events=ev, backend=backend, return_stats=True)

    def exact(tk):
        v = math.exp(-k * tk)
        if tk > 1.0:
            v += 2.0 * math.exp(-k * (tk - 1.0))
        if tk > 2.5:
            v += 3.0 * math.exp(-k * (tk - 2.5))
        return v

    # outputs at a dose time are pre-dose (left limit)
    ref = torch.tensor([exact(float(tk)) for tk in t], dtype=f64)
    torch.testing.assert_close(y[:, 0, 0], ref, rtol=1e-8, atol=1e-10)
    assert int(st.status) == 0


def test_dose_at_t0_and_multiple_same_time(backend):
    f = decay_field(0.5)
    ev = hf.Events(times=[[0.0, 1.0, 1.0]], states=[[0, 0, 0]], amounts=torch.tensor([[1.0, 0.5, 0.25]], dtype=f64))
    t = torch.tensor([0.0, 1.0, 2.0], dtype=f64)
    with torch.no_grad():
        y = hf.odeint(f, torch.tensor([[1.0]], dtype=f64), t, events=ev, rtol=1e-10, atol=1e-12, backend=backend)
    e = math.exp(-0.5)
    ref = torch.tensor([1.0, 2.0 * e, (2.0 * e + 0.75) * e], dtype=f64)
    torch.testing.assert_close(y[:, 0, 0], ref, rtol=1e-8, atol=1e-10)


def test_piecewise_constant_input(backend):
    """dz/dt = -k z + r u(t), u = 0, 2, 0 on [0,1), [1,2), [2, inf)."""
    k, r = 0.4, 1.5
    mech = hf.MechanisticGraph(1, [hf.Linear(0, None, k), hf.Input(0, 0, r)], n_inputs=1, dtype=f64)
    f = hf.HybridField(mech=mech)
    inp = hf.Inputs(times=[[1.0, 2.0]], values=torch.tensor([[[2.0], [0.0]]], dtype=f64))
    t = torch.tensor([0.0, 1.0, 1.5, 2.0, 3.0], dtype=f64)
    with torch.no_grad():
        y = hf.odeint(f, torch.tensor([[0.5]], dtype=f64), t, inputs=inp, rtol=1e-10, atol=1e-12, backend=backend)
    ss = r * 2.0 / k

    def exact(tk):
        if tk <= 1:
            return 0.5 * math.exp(-k * tk)
        z1 = 0.5 * math.exp(-k)
        if tk <= 2:
            return ss + (z1 - ss) * math.exp(-k * (tk - 1))
        z2 = ss + (z1 - ss) * math.exp(-k)
        return z2 * math.exp(-k * (tk - 2))

    ref = torch.tensor([exact(float(tk)) for tk in t], dtype=f64)
    torch.testing.assert_close(y[:, 0, 0], ref, rtol=1e-8, atol=1e-10)


def test_per_trajectory_time_grids_equal_separate_solves(backend, seed):
    f = random_field(D=3, hidden=(8,))
    y0 = torch.rand(3, 3, dtype=f64)
    t = torch.stack(
        [torch.linspace(0, 2, 5, dtype=f64), torch.linspace(0.5, 4, 5, dtype=f64), torch.tensor([0.0, 0.1, 0.2, 3.0, 3.5], dtype=f64)]
    )
    # The compiled backends solve each trajectory alone: bitwise batch-invariant. The reference
    # evaluates the field with batched torch ops, which are not (exp/log/matmul differ by ~1 ulp
    # between a batch of 3 and of 1); over a 15-step solve that grows to 1.6e-12 relative
    # (seed 400910361; worst of 150 other seeds 1.2e-12). Step counts must match exactly either way.
    tol = dict(rtol=0, atol=0) if backend != "reference" else dict(rtol=1e-11, atol=1e-13)
    with torch.no_grad():
        y, st = hf.odeint(f, y0, t, backend=backend, return_stats=True)
        for b in range(3):
            yb, sb = hf.odeint(f, y0[b : b + 1], t[b], backend=backend, return_stats=True)
            torch.testing.assert_close(y[:, b], yb[:, 0], **tol)
            assert int(st.n_steps[b]) == int(sb.n_steps[0])
            assert int(st.nfe[b]) == int(sb.nfe[0])


def test_batch_of_one_and_unbatched(backend, seed):
    f = random_field(D=3, hidden=(5,))
    y0 = torch.rand(3, dtype=f64)
    t = torch.linspace(0, 1, 4, dtype=f64)
    with torch.no_grad():
        y1 = hf.odeint(f, y0, t, backend=backend)
        y2 = hf.odeint(f, y0[None], t, backend=backend)
    assert y1.shape == (4, 3) and y2.shape == (4, 1, 3)
    torch.testing.assert_close(y1, y2[:, 0], rtol=0, atol=0)


def test_fully_masked_network(backend, seed):
    f = random_field(D=3, hidden=(6, 6))
    f.nn.set_mask(0, torch.zeros(6, 3, dtype=torch.bool))
    y0 = torch.rand(2, 3, dtype=f64)
    t = torch.linspace(0, 1, 3, dtype=f64)
    with torch.no_grad():
        y = hf.odeint(f, y0, t, backend=backend, rtol=1e-10, atol=1e-12)
        yr = hf.odeint(f, y0, t, backend="reference", rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(y, yr, rtol=1e-12, atol=1e-14)
    assert torch.isfinite(y).all()


def test_blow_up_gets_status_and_nan_others_finish(backend):
    """dz/dt = z^2 blows up at t = 1/z0; the row with z0 = 1 fails, z0 = 0.1 finishes."""
    f = hf.HybridField(mech=hf.MechanisticGraph(1, [hf.MassAction((0, 0), 0, 1.0, consume=False)], dtype=f64))
    y0 = torch.tensor([[1.0], [0.1]], dtype=f64)
    t = torch.tensor([0.0, 0.5, 2.0, 3.0], dtype=f64)
    with torch.no_grad():
        y, st = hf.odeint(f, y0, t, backend=backend, return_stats=True)
    assert int(st.status[0]) in (1, 2, 3) and int(st.status[1]) == 0
    assert torch.isnan(y[2:, 0]).all() and torch.isfinite(y[:2, 0]).all()
    torch.testing.assert_close(y[:, 1, 0], 0.1 / (1 - 0.1 * t), rtol=1e-5, atol=1e-7)


def test_max_steps_status(backend, seed):
    f = random_field(D=2, hidden=(4,))
    with torch.no_grad():
        y, st = hf.odeint(
            f, torch.rand(2, 2, dtype=f64), torch.linspace(0, 50, 6, dtype=f64), max_steps=5, backend=backend, return_stats=True
        )
    assert (st.status == 1).all()
    assert (st.n_steps + st.n_rejected == 5).all()
    assert torch.isnan(y[-1]).all()


def test_nonfinite_field_status_3():
    def bad(t, y):
        return torch.sqrt(y - 1.0)  # NaN for y < 1

    with torch.no_grad():
        y, st = hf.odeint(
            bad, torch.tensor([[0.5], [2.0]], dtype=f64), torch.tensor([0.0, 1.0], dtype=f64), step_mode="per_sample", return_stats=True
        )
    assert int(st.status[0]) == 3 and int(st.status[1]) == 0
    assert torch.isnan(y[1, 0]).all() and torch.isfinite(y[1, 1]).all()


def test_shared_step_mode_accuracy_and_torchdiffeq_parity():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    f = random_field(D=3, hidden=(8,))
    y0 = torch.rand(5, 3, dtype=f64)
    t = torch.linspace(0, 2, 6, dtype=f64)
    with torch.no_grad():
        ys, st = hf.odeint(f, y0, t, step_mode="shared", rtol=1e-9, atol=1e-11, return_stats=True)
        yp = hf.odeint(f, y0, t, step_mode="per_sample", rtol=1e-9, atol=1e-11)
        ytd = torchdiffeq.odeint(f, y0, t, rtol=1e-9, atol=1e-11, method="dopri5")
    assert len(set(st.n_steps.tolist())) == 1
    # global errors of two different controllers at rtol 1e-9: agreement to ~1e-6
    torch.testing.assert_close(ys, ytd, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(ys, yp, rtol=1e-6, atol=1e-8)


def test_plain_callable_drop_in_for_torchdiffeq():
    torchdiffeq = pytest.importorskip("torchdiffeq")

    def spiral(t, y):  # written for torchdiffeq: y (D,), scalar t
        return torch.stack([-0.1 * y[0] + 2.0 * y[1], -2.0 * y[0] - 0.1 * y[1]]) * torch.cos(t) ** 2

    y0 = torch.tensor([2.0, 0.0], dtype=f64)
    t = torch.linspace(0, 5, 11, dtype=f64)
    y = hf.odeint(spiral, y0, t, rtol=1e-9, atol=1e-11)
    ytd = torchdiffeq.odeint(spiral, y0, t, rtol=1e-9, atol=1e-11)
    assert y.shape == ytd.shape == (11, 2)
    torch.testing.assert_close(y, ytd, rtol=1e-7, atol=1e-9)


def test_float32_against_float64(backend, seed):
    f = random_field(D=3, hidden=(8, 8))
    y0 = torch.rand(4, 3, dtype=f64)
    t = torch.linspace(0, 2, 5, dtype=f64)
    with torch.no_grad():
        y64 = hf.odeint(f, y0, t, rtol=1e-5, atol=1e-7, backend=backend)
        y32 = hf.odeint(f.float(), y0.float(), t.float(), rtol=1e-5, atol=1e-7, backend=backend)
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-5)


def test_stats_fields(backend, seed):
    f = random_field(D=2, hidden=(4,))
    with torch.no_grad():
        _, st = hf.odeint(f, torch.rand(3, 2, dtype=f64), torch.linspace(0, 1, 3, dtype=f64), backend=backend, return_stats=True)
    for name in ("n_steps", "n_rejected", "nfe", "status"):
        v = getattr(st, name)
        assert v.shape == (3,) and v.dtype == torch.int64
    assert (st.nfe == 2 + 6 * (st.n_steps + st.n_rejected)).all()
    assert "Stats(" in repr(st)


def test_unknown_or_unbuilt_backend():
    f = decay_field()
    y0, t = torch.ones(1, 1, dtype=f64), torch.tensor([0.0, 1.0], dtype=f64)
    with pytest.raises(ValueError, match="backend"):
        hf.odeint(f, y0, t, backend="gpu")
    from hnode_fast import backends

    missing = [b for b in ("cpu", "cuda", "triton") if b not in backends.available()]
    for b in missing:
        with pytest.raises(NotImplementedError, match=b):
            hf.odeint(f, y0, t, backend=b)
