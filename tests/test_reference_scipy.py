"""The reference solver makes scipy RK45's every decision: same first step, same accepted steps."""

import numpy as np
import pytest
import torch
from conftest import random_field
from scipy.integrate import RK45, solve_ivp
from scipy.integrate._ivp.common import select_initial_step

import hnode_fast as hf
from hnode_fast.reference import dopri5 as dp

f64 = torch.float64


def lotka_volterra(t, y):
    a, b, c, d = 1.5, 1.0, 3.0, 1.0
    return torch.stack([a * y[..., 0] - b * y[..., 0] * y[..., 1], -c * y[..., 1] + d * y[..., 0] * y[..., 1]], -1)


def test_tableau_matches_scipy():
    np.testing.assert_array_equal(np.array(dp.C), RK45.C)
    np.testing.assert_array_equal(np.array(dp.B), RK45.B)
    np.testing.assert_array_equal(np.array(dp.E), RK45.E)
    np.testing.assert_allclose(np.array(dp.P), RK45.P, rtol=1e-15, atol=0)
    for s in range(1, 6):
        np.testing.assert_array_equal(np.array(dp.A[s]), RK45.A[s, :s])


def _scipy_steps(fun_np, y0, t_bound, rtol, atol, n):
    s = RK45(fun_np, 0.0, y0, t_bound, rtol=rtol, atol=atol)
    ts, ys = [0.0], [np.array(y0, dtype=float)]
    while s.status == "running" and len(ts) <= n:
        s.step()
        ts.append(s.t)
        ys.append(s.y.copy())
    return np.array(ts), np.array(ys), s


def _problem(name):
    if name == "lotka_volterra":
        return lotka_volterra, torch.tensor([1.0, 1.0], dtype=f64) + 0.5 * torch.rand(2, dtype=f64)
    # oscillating hybrid: Lotka-Volterra written as mechanistic terms + a random tanh MLP
    mech = hf.MechanisticGraph(
        2,
        [
            hf.Linear(0, 0, 1.5, consume=False),
            hf.MassAction((0, 1), 0, -1.0, consume=False),
            hf.Linear(1, 1, -3.0, consume=False),
            hf.MassAction((0, 1), 1, 1.0, consume=False),
        ],
        dtype=f64,
    )
    net = hf.MaskedMLP(2, 2, hidden=(16, 16), activation="tanh").double()
    with torch.no_grad():
        net.layers[-1].weight.mul_(0.2)
    return hf.HybridField(mech=mech, nn=net), torch.tensor([1.0, 1.0], dtype=f64) + 0.5 * torch.rand(2, dtype=f64)


def _np_fun(func):
    def fun_np(t, y):
        with torch.no_grad():
            return func(torch.tensor(t, dtype=f64), torch.tensor(y, dtype=f64).reshape(1, -1)).reshape(-1).numpy()

    return fun_np


@pytest.mark.parametrize("problem", ["lotka_volterra", "mlp_field"])
def test_each_step_from_scipys_state(problem, seed):
    """From scipy's exact (t_n, y_n, f_n, h_n): same y_n+1 to ~1e-14, same accept decision."""
    rtol, atol, n = 1e-6, 1e-9, 50
    func, y0 = _problem(problem)
    fun_np = _np_fun(func)
    s = RK45(fun_np, 0.0, y0.numpy(), 1e6, rtol=rtol, atol=atol)
    fun = lambda t, y, ts_: func(t, y)  # noqa: E731
    # same first step (scipy's select_initial_step)
    f0 = fun_np(0.0, y0.numpy())
    h_scipy = select_initial_step(fun_np, 0.0, y0.numpy(), 1e6, np.inf, f0, 1, 4, rtol, atol)
    with torch.no_grad():
        h_ours = dp.initial_step(
            fun,
            torch.zeros(1, dtype=f64),
            y0[None],
            torch.tensor(f0)[None],
            torch.full((1,), 1e6, dtype=f64),
            rtol,
            atol,
            dp.rms_rows,
            torch.zeros(1, dtype=f64),
        )
    assert h_ours.item() == pytest.approx(h_scipy, rel=1e-15)
    worst_y = 0.0
    for _ in range(n):
        t_n, y_n, f_n = s.t, s.y.copy(), s.f.copy()
        s.step()
        h = torch.tensor([s.h_previous], dtype=f64)
        with torch.no_grad():
            y_new, K, _ = dp.rk_step(
                fun, torch.tensor([t_n], dtype=f64), torch.tensor(y_n)[None], torch.tensor(f_n)[None], h, torch.tensor([t_n], dtype=f64)
            )
            err = dp.error_norm(K, h, torch.tensor(y_n)[None], y_new, rtol, atol, dp.rms_rows)
        assert float(err) < 1.0  # scipy accepted this step, so do we
        rel = np.max(np.abs(y_new[0].numpy() - s.y) / (np.abs(s.y) + 1e-300))
        worst_y = max(worst_y, rel)
    assert worst_y < 1e-13, worst_y


@pytest.mark.parametrize("problem", ["lotka_volterra", "mlp_field"])
def test_first_50_steps_vs_scipy_rk45(problem, seed):
    """A whole run makes scipy's decisions: same accepted and rejected steps, same NFE.

    Step times agree to ~1e-9, not 1e-12: the embedded error estimate sum_i E_i k_i cancels
    to ~1e-7 of |k|, so the last bits of its summation order (numpy BLAS vs ours) reach the
    next step size through err^(-1/5). States are compared at scipy's step ends.
    """
    rtol, atol, n = 1e-6, 1e-9, 50
    func, y0 = _problem(problem)
    ts, ys, s = _scipy_steps(_np_fun(func), y0.numpy(), 1e6, rtol, atol, n)
    assert len(ts) == n + 1
    attempts = (s.nfev - 2) // 6  # accepted + rejected attempts scipy made in n steps
    # integrate far past scipy's last step and stop after exactly that many attempts: if we made
    # the same accept/reject decisions, that is n accepted steps
    out_t = torch.tensor(list(ts[:-1]) + [ts[-1] * 10 + 10.0])
    with torch.no_grad():
        y, st = hf.odeint(func, y0, out_t, rtol=rtol, atol=atol, backend="reference", return_stats=True, max_steps=attempts)
    assert int(st.status) == 1
    assert int(st.n_steps) == n and int(st.n_rejected) == attempts - n
    np.testing.assert_allclose(st.step_times[0].numpy(), ts[1:], rtol=1e-8, atol=0)
    np.testing.assert_allclose(y[:-1].numpy(), ys[:-1], rtol=1e-8, atol=1e-12)


def test_whole_solve_vs_dop853(backend, seed):
    func = random_field(D=4, hidden=(12, 12), activation="tanh")
    y0 = torch.rand(4, dtype=f64)
    t = torch.linspace(0, 4, 9, dtype=f64)
    with torch.no_grad():
        y = hf.odeint(func, y0, t, rtol=1e-11, atol=1e-13, backend=backend)
    sol = solve_ivp(_np_fun(func), (0, 4), y0.numpy(), method="DOP853", t_eval=t.numpy(), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(y.numpy(), sol.y.T, rtol=1e-8, atol=1e-10)
