"""``hf.odeint`` as a drop-in for ``torchdiffeq.odeint``: the same func objects, shapes and defaults
give torchdiffeq's answers (to the solvers' tolerance: the controllers and dense outputs differ),
gradients reach ``t``, the backsolve adjoint re-anchors at the output times."""

import math

import pytest
import torch

import hnode_fast as hf

torchdiffeq = pytest.importorskip("torchdiffeq")
f64, f32 = torch.float64, torch.float32


# ----------------------------------------------------------------------------- test problems
# (the kinds of torchdiffeq's own test problems: scalar states, time-dependent right-hand sides,
# a state that is not a vector, an exact solution to compare with)
class Constant(torch.nn.Module):
    """dy/dt = a + (y - (a t + b))^5, y(t) = a t + b (a 0-dim state; stiff away from the line)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.3))
        self.b = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, t, y):
        return self.a + (y - (self.a * t + self.b)) ** 5

    def exact(self, t):
        return self.a * t + self.b


class Sine(torch.nn.Module):
    """dy/dt = 2 y / t + t^4 sin(2t) - t^2 + 4 t^3 on t >= 1 (0-dim state, time-dependent)."""

    def forward(self, t, y):
        return 2 * y / t + t**4 * torch.sin(2 * t) - t**2 + 4 * t**3

    def exact(self, t):
        c, s = torch.cos(2 * t), torch.sin(2 * t)
        return -0.5 * t**4 * c + 0.5 * t**3 * s + 0.25 * t**2 * c - t**3 + 2 * t**4 + (math.pi - 0.25) * t**2


class Linear(torch.nn.Module):
    """dy/dt = A y with a (dim,) state read as a (dim, 1) column, A skew plus damping."""

    def __init__(self, dim=6):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        U = torch.randn(dim, dim, generator=g) * 0.3
        self.A = torch.nn.Parameter(U - U.t() - 0.1 * torch.eye(dim))

    def forward(self, t, y):
        return (self.A @ y.reshape(-1, 1)).reshape(-1)

    def exact(self, t):
        y0 = torch.ones(self.A.shape[0], dtype=self.A.dtype)
        return torch.stack([torch.linalg.matrix_exp(self.A * (ti - t[0])) @ y0 for ti in t])


class Exp(torch.nn.Module):
    """dy/dt = k * y for a (2, 3) state: y(t) = y0 exp(k (t - t0)) elementwise."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor([[0.5, -0.2, 0.1], [0.0, -1.0, 0.3]]))

    def forward(self, t, y):
        return self.k * y

    def exact(self, t):
        y0 = torch.ones(2, 3, dtype=self.k.dtype)
        return torch.stack([y0 * torch.exp(self.k * (ti - t[0])) for ti in t])


PROBLEMS = {"constant": Constant, "sine": Sine, "linear": Linear, "exp": Exp}


def _problem(name, dtype):
    f = PROBLEMS[name]().to(dtype)
    t = torch.linspace(1.0, 4.0, 7, dtype=dtype)
    with torch.no_grad():
        sol = f.exact(t)
    return f, sol[0].clone(), t, sol


# ----------------------------------------------------------------------------- same answers
@pytest.mark.parametrize("dtype", [f64, f32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_problems_match_torchdiffeq_and_the_exact_solution(name, dtype):
    """Default arguments on both sides (torchdiffeq's tolerances 1e-7 / 1e-9): same shapes, both
    close to the exact solution and to each other."""
    f, y0, t, sol = _problem(name, dtype)
    with torch.no_grad():
        y = hf.odeint(f, y0, t)
        yt = torchdiffeq.odeint(f, y0, t)
    assert y.shape == yt.shape == sol.shape
    assert y.dtype == dtype
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == f64 else dict(rtol=2e-4, atol=1e-4)
    torch.testing.assert_close(y, sol, **tol)
    torch.testing.assert_close(y, yt, **tol)


def test_zero_dim_state_gets_zero_dim_t_and_y():
    seen = []

    def f(t, y):
        seen.append((t.dim(), tuple(y.shape)))
        return -y

    y = hf.odeint(f, torch.tensor(2.0, dtype=f64), torch.linspace(0, 1, 4, dtype=f64))
    assert y.shape == (4,)
    assert set(seen) == {(0, ())}
    torch.testing.assert_close(y, 2.0 * torch.exp(-torch.linspace(0, 1, 4, dtype=f64)), rtol=1e-6, atol=1e-8)


def test_coupled_column_state_is_one_state_not_a_batch():
    """``A @ y`` with y0 (2, 1): the two rows are coupled. Before, the first dimension was split
    off as a batch and the answer was wrong by 3.6 with no error."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(2, 2, generator=g, dtype=f64)
    y0 = torch.randn(2, 1, generator=g, dtype=f64)
    t = torch.linspace(0, 1, 6, dtype=f64)
    f = lambda t, y: A @ y  # noqa: E731
    y = hf.odeint(f, y0, t, rtol=1e-10, atol=1e-12)
    exact = torch.stack([torch.linalg.matrix_exp(A * ti) @ y0 for ti in t])
    assert y.shape == (6, 2, 1)
    torch.testing.assert_close(y, exact, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(y, torchdiffeq.odeint(f, y0, t, rtol=1e-10, atol=1e-12), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("B", [3, 4])
def test_time_dependent_func_over_a_2d_state(B):
    """``cos(t) * y`` with y0 (B, 3): t is 0-dim, so B == 3 cannot broadcast over the wrong axis."""
    y0 = torch.rand(B, 3, dtype=f64) + 0.5
    t = torch.linspace(0, 2, 5, dtype=f64)
    f = lambda t, y: torch.cos(t) * y  # noqa: E731
    y = hf.odeint(f, y0, t, rtol=1e-10, atol=1e-12)
    exact = y0[None] * torch.exp(torch.sin(t))[:, None, None]
    torch.testing.assert_close(y, exact, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(y, torchdiffeq.odeint(f, y0, t, rtol=1e-10, atol=1e-12), rtol=1e-8, atol=1e-10)


def test_ode_demo_batch_shape():
    """torchdiffeq's examples/ode_demo.py trains on y0 of shape (20, 1, 2) with a network applied
    to y**3 (one state of that shape, one step size)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 50), torch.nn.Tanh(), torch.nn.Linear(50, 2)).double()
    f = lambda t, y: net(y**3)  # noqa: E731
    y0 = torch.rand(20, 1, 2, dtype=f64) * 2 - 1
    t = torch.linspace(0, 1, 10, dtype=f64)
    y = hf.odeint(f, y0, t)
    yt = torchdiffeq.odeint(f, y0, t)
    assert y.shape == yt.shape == (10, 20, 1, 2)
    torch.testing.assert_close(y, yt, rtol=1e-5, atol=1e-7)
    y.pow(2).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_wrong_output_shape_raises_naming_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 1\).*\(4, 2\)"):
        hf.odeint(lambda t, y: y[:, :1], torch.rand(4, 2, dtype=f64), torch.linspace(0, 1, 3, dtype=f64))
    with pytest.raises(ValueError, match=r"\(4, 1\).*\(4, 2\)"):
        hf.odeint(lambda t, y: y[:, :1], torch.rand(4, 2, dtype=f64), torch.linspace(0, 1, 3, dtype=f64), step_mode="per_sample")
    with pytest.raises(ValueError, match="torch.Tensor"):
        hf.odeint(lambda t, y: 1.0, torch.rand(2, dtype=f64), torch.linspace(0, 1, 3, dtype=f64))


def test_per_sample_is_opt_in_and_gets_batched_t():
    """``step_mode="per_sample"`` asked for: each row its own trajectory, func gets t of shape (B,)."""
    shapes = []

    def f(t, y):
        shapes.append((tuple(t.shape), tuple(y.shape)))
        return -y * (1 + t[:, None])

    y0 = torch.rand(5, 2, dtype=f64)
    t = torch.linspace(0, 1, 3, dtype=f64)
    y, st = hf.odeint(f, y0, t, step_mode="per_sample", return_stats=True)
    assert set(shapes) == {((5,), (5, 2))}
    assert st.n_steps.shape == (5,)
    exact = y0[None] * torch.exp(-(t + t**2 / 2))[:, None, None]
    torch.testing.assert_close(y, exact, rtol=1e-6, atol=1e-8)


def test_defaults_are_torchdiffeqs():
    import inspect

    sig = inspect.signature(hf.odeint)
    assert sig.parameters["rtol"].default == 1e-7 and sig.parameters["atol"].default == 1e-9
    assert sig.parameters["method"].default is None


def test_options_max_num_steps_and_first_step():
    f = lambda t, y: -y  # noqa: E731
    y0 = torch.ones(2, dtype=f64)
    t = torch.linspace(0, 10, 3, dtype=f64)
    _, st = hf.odeint(f, y0, t, options=dict(max_num_steps=3), return_stats=True)
    assert int(st.status) == 1 and int(st.n_steps + st.n_rejected) == 3
    _, st1 = hf.odeint(f, y0, t, options=dict(first_step=1e-4), return_stats=True)
    _, st2 = hf.odeint(f, y0, t, return_stats=True)
    assert int(st1.nfe) != int(st2.nfe)  # the first step is the user's, not the heuristic's
    y = hf.odeint(f, y0, t, options=dict(first_step=1e-4))
    torch.testing.assert_close(y, torch.exp(-t)[:, None].expand(3, 2), rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", sorted(PROBLEMS))
@pytest.mark.parametrize("adjoint", ["discrete", "backsolve"])
def test_gradcheck_y0_and_t(name, adjoint):
    """torchdiffeq's own gradient test: gradcheck over (y0, t) at tight tolerances (t's gradient
    is the dense-output interpolant's time derivative at t_i, -dL/dy0 . f(t0, y0) at t0)."""
    f, y0, t, _ = _problem(name, f64)
    y0 = y0.requires_grad_(True)
    t = t[:4].detach().mul(0.5).add(0.5).requires_grad_(True)  # 4 times in [1, 1.75]: fewer, shorter solves
    fn = lambda y0, t: hf.odeint(f, y0, t, rtol=1e-10, atol=1e-10, adjoint=adjoint)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (y0, t), atol=1e-5, rtol=1e-4)


def test_t_gradient_matches_torchdiffeq():
    f, y0, t, _ = _problem("sine", f64)
    gs = []
    for solver in (hf.odeint, torchdiffeq.odeint):
        tt = t.detach().requires_grad_(True)
        yy0 = y0.detach().requires_grad_(True)
        (solver(f, yy0, tt, rtol=1e-11, atol=1e-11) ** 2).sum().backward()
        gs.append((tt.grad, yy0.grad))
    torch.testing.assert_close(gs[0][0], gs[1][0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gs[0][1], gs[1][1], rtol=1e-6, atol=1e-6)


class Lorenz(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.tensor([10.0, 28.0, 8.0 / 3.0], dtype=f64))

    def forward(self, t, y):
        s, r, b = self.p
        x, v, z = y[..., 0], y[..., 1], y[..., 2]
        return torch.stack([s * (v - x), x * (r - z) - v, x * v - b * z], -1)


def test_backsolve_reanchors_at_outputs_lorenz():
    """Lorenz, learnable parameters, 11 outputs on [0, 2], rtol = atol = 1e-9: the backsolve
    gradient within 1e-4 of the discrete adjoint (it was 115% off when y was re-integrated
    backwards over the whole span) and of torchdiffeq's odeint_adjoint."""
    m = Lorenz()
    t = torch.linspace(0, 2, 11, dtype=f64)
    grads = {}
    for adj in ("discrete", "backsolve"):
        y0 = torch.tensor([1.0, 1.0, 1.0], dtype=f64, requires_grad=True)
        y = hf.odeint(m, y0, t, rtol=1e-9, atol=1e-9, adjoint=adj)
        grads[adj] = torch.autograd.grad(y.pow(2).sum(), [y0, m.p])
    y0 = torch.tensor([1.0, 1.0, 1.0], dtype=f64, requires_grad=True)
    yt = torchdiffeq.odeint_adjoint(m, y0, t, rtol=1e-9, atol=1e-9)
    grads["torchdiffeq"] = torch.autograd.grad(yt.pow(2).sum(), [y0, m.p])
    for other in ("backsolve", "torchdiffeq"):
        for a, b in zip(grads[other], grads["discrete"]):
            assert float((a - b).abs().max() / b.abs().max()) < 1e-4, other


@pytest.mark.parametrize("func", ["constant_rate", "no_params"])
def test_backsolve_funcs_without_parameters_or_y_dependence(func):
    """A func independent of y (and with no parameters) used to crash the backsolve adjoint."""
    if func == "constant_rate":
        f = lambda t, y: torch.ones_like(y) * torch.cos(t)  # noqa: E731
    else:
        f = lambda t, y: -2.0 * y  # noqa: E731
    y0 = torch.rand(3, dtype=f64, requires_grad=True)
    t = torch.linspace(0, 1, 4, dtype=f64)
    g = {}
    for adj in ("discrete", "backsolve"):
        (gy0,) = torch.autograd.grad(hf.odeint(f, y0, t, adjoint=adj).sum(), [y0])
        g[adj] = gy0
    torch.testing.assert_close(g["backsolve"], g["discrete"], rtol=1e-6, atol=1e-8)
