"""A small sparse truth for the HGS tests: a prior graph with spurious edges and states.

Truth (inputs u1, u2 uniform in [0, 1], switching every time unit)::

    da/dt = u1 - a        db/dt = a - 0.5 b        dc/dt = tanh(2 b) - 0.5 c

observed a, b, c (plus noise). The prior also has two latent states driven by the irrelevant
input u2 — d (-> c) and e (-> b) — and the closure adds the shortcut a -> c. HGS should keep
every true edge and drop the spurious ones (and with them the states d and e).
"""

import numpy as np
import torch

from hnode_fast.hgs import HGSGraph, Windows

TRUE_EDGES = {("u1", "a"), ("a", "a"), ("a", "b"), ("b", "b"), ("b", "c"), ("c", "c")}
SPURIOUS_EDGES = {("u2", "d"), ("d", "d"), ("d", "c"), ("u2", "e"), ("e", "e"), ("e", "b"), ("a", "c"), ("e", "c")}


def prior() -> HGSGraph:
    edges = sorted(TRUE_EDGES | SPURIOUS_EDGES - {("a", "c"), ("e", "c")})
    return HGSGraph(states=["a", "b", "c", "d", "e"], inputs=["u1", "u2"], observables=["a", "b", "c"], edges=edges)


def records(n_sub: int, seed: int, T: float = 40.0, dt: float = 0.5, burn: float = 10.0, noise: float = 0.01):
    """``n_sub`` records (subject, times, obs (N, 3), input times, input values (M, 2)),
    simulated by RK4 (step 0.01) after a burn-in of ``burn`` time units from rest."""
    g = torch.Generator().manual_seed(seed)
    it = np.arange(-burn, T, 1.0)
    iv = torch.rand(n_sub, len(it), 2, generator=g, dtype=torch.float64)
    z = torch.zeros(n_sub, 3, dtype=torch.float64)
    h, t, out = 0.01, -burn, []
    n_obs = int(round(T / dt)) + 1

    def f(t, z):
        j = min(int(np.floor(t - (-burn) + 1e-9)), len(it) - 1)
        u = iv[:, j]
        a, b, c = z.unbind(1)
        return torch.stack([u[:, 0] - a, a - 0.5 * b, torch.tanh(2 * b) - 0.5 * c], 1)

    for k in range(int(round((T + burn) / h)) + 1):
        t = -burn + k * h
        if t > -1e-9 and abs(t / dt - round(t / dt)) < 1e-6 and len(out) < n_obs:
            out.append(z.clone())
        # RK4 with the input frozen over the step (switches lie on the step grid)
        k1 = f(t, z)
        k2 = f(t, z + h / 2 * k1)
        k3 = f(t, z + h / 2 * k2)
        k4 = f(t, z + h * k3)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    Z = torch.stack(out, 1)  # (n_sub, N, 3)
    Y = Z + noise * torch.randn(Z.shape, generator=g, dtype=torch.float64)
    times = np.arange(n_obs) * dt
    keep = it >= 0
    # the value in force at t = 0 comes from the last switch before it
    return [(f"s{s}", times, Y[s].numpy(), it[keep], iv[s][torch.as_tensor(keep)].numpy()) for s in range(n_sub)]


def windows(n_sub: int, seed: int, horizon: int = 10) -> Windows:
    return Windows.from_series(records(n_sub, seed), context=1, horizon=horizon)
