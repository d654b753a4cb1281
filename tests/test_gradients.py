"""Gradients: gradcheck in float64 (y0, network weights, mechanistic rates; both adjoints),
backends against autograd through the reference, masks, dose amounts."""

import math

import pytest
import torch
from conftest import ROUGH_HILL, SMOOTH_HILL, random_field
from torch.func import functional_call

import hnode_fast as hf

f64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)


class Solve(torch.nn.Module):
    def __init__(self, field, t, **kw):
        super().__init__()
        self.field, self.t, self.kw = field, t, kw

    def forward(self, y0):
        return hf.odeint(self.field, y0, self.t, **{**TOL, **self.kw})


def small_problem(**kw):
    f = random_field(D=2, hidden=(3,), activation="tanh", mask_density=0.8, **kw)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=f64)
    y0 = (torch.rand(2, 2, dtype=f64) + 0.2).requires_grad_(True)
    return f, t, y0


@pytest.mark.parametrize("adjoint", ["discrete", "backsolve"])
@pytest.mark.parametrize("wrt", ["y0", "nn.layers.0.weight", "nn.layers.1.bias", "mech.params"])
def test_gradcheck(adjoint, wrt, backend, seed):
    if backend != "reference" and adjoint == "backsolve":
        from hnode_fast import backends

        if not backends.supports(backend, adjoint="backsolve"):
            pytest.skip(f"backend {backend} has no backsolve adjoint in this build")
    # the continuous adjoint approximates the exact solution's gradient: it needs a field whose
    # Jacobian is Lipschitz along the trajectory to agree with differences of the computed one;
    # the discrete adjoint is the computed solution's exact gradient, so it also takes the
    # non-smooth Hill exponent
    f, t, y0 = small_problem(hill_n=SMOOTH_HILL if adjoint == "backsolve" else ROUGH_HILL)
    # central differences of an adaptive solve see its error change with the step sequence: noise
    # ~ solver error / eps. At rtol 1e-10 that is ~1e-5 relative (CI seed 1450965800: 1.5e-5 even
    # for the discrete adjoint's exact gradient); the backsolve parameter check runs at rtol 1e-12 (~1e-7)
    tol = dict(rtol=1e-12, atol=1e-14) if adjoint == "backsolve" and wrt != "y0" else {}
    model = Solve(f, t, adjoint=adjoint, backend=backend, **tol)
    if wrt == "y0":
        assert torch.autograd.gradcheck(lambda y: model(y), (y0,), eps=1e-6, atol=1e-5, rtol=1e-4)
        return
    param = dict(model.named_parameters())["field." + wrt]
    y0d = y0.detach()
    if adjoint == "backsolve":
        # the continuous adjoint re-evaluates the module in backward, after functional_call has
        # restored the parameters, so check it by central differences of in-place perturbations
        w = torch.randn_like(model(y0d))
        (g,) = torch.autograd.grad((model(y0d) * w).sum(), param)
        for _ in range(3):
            v = torch.randn_like(param)
            eps = 1e-5
            with torch.no_grad():
                param.add_(eps * v)
                lp = (model(y0d) * w).sum()
                param.sub_(2 * eps * v)
                lm = (model(y0d) * w).sum()
                param.add_(eps * v)
            fd = (lp - lm) / (2 * eps)
            assert (g * v).sum().item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-8)
        return
    p0 = param.detach().clone().requires_grad_(True)

    def fn(p):
        return functional_call(model, {"field." + wrt: p}, (y0d,))

    assert torch.autograd.gradcheck(fn, (p0,), eps=1e-6, atol=1e-5, rtol=1e-4)


def _grads(f, y0, t, backend, adjoint="discrete", **kw):
    y = hf.odeint(f, y0, t, backend=backend, adjoint=adjoint, **TOL, **kw)
    loss = (y.nan_to_num() ** 2).sum() + y[-1].sum()
    params = [p for p in f.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, [y0] + params, allow_unused=True)


# (rtol of the solution, rtol of the gradients). Rough: where a state crosses 0 the Hill term
# max(z, 0)**1.5 has d2f/dz2 ~ z**-0.5, so the two implementations' ~1e-16 rounding differences
# grow: 1.4e-12 in the solution and 8.9e-9 in the y0 gradient measured on CI seed 1177352614
# (3e-16 and 1.2e-12 with the smooth exponents on the same seed). The Jacobian there moves like
# sqrt of the state difference, so gradients get rtol 1e-6; a wrong adjoint is off by O(1).
HILL_CASES = {"smooth": (SMOOTH_HILL, 1e-13, 1e-11), "rough": (ROUGH_HILL, 1e-10, 1e-6)}


@pytest.mark.parametrize("hill", list(HILL_CASES))
def test_backend_gradients_equal_reference_autograd(backend, hill, seed):
    hill_n, y_rtol, g_rtol = HILL_CASES[hill]
    f = random_field(D=3, hidden=(6, 5), mask_density=0.7, n_inputs=1, nn_inputs=True, hill_n=hill_n)
    y0 = torch.rand(4, 3, dtype=f64, requires_grad=True)
    t = torch.linspace(0, 2, 5, dtype=f64)
    ev = hf.Events(times=[[0.7, float("inf")]] * 4, states=[[1, 0]] * 4, amounts=torch.tensor([[0.5, 0.0]] * 4, dtype=f64))
    inp = hf.Inputs(times=[[0.0, 1.3]] * 4, values=torch.tensor([[[1.0], [0.2]]] * 4, dtype=f64))
    kw = dict(events=ev, inputs=inp, **TOL)
    y = hf.odeint(f, y0, t, backend=backend, **kw)
    torch.testing.assert_close(y, hf.odeint(f, y0, t, backend="reference", **kw), rtol=y_rtol, atol=y_rtol)
    g = _grads(f, y0, t, backend, events=ev, inputs=inp)
    r = _grads(f, y0, t, "reference", events=ev, inputs=inp)
    for a, b in zip(g, r):
        if b is None:
            assert a is None or torch.all(a == 0)
            continue
        torch.testing.assert_close(a, b, rtol=g_rtol, atol=g_rtol * 1e-2)


def test_backsolve_close_to_discrete(seed):
    f = random_field(D=3, hidden=(6,), hill_n=SMOOTH_HILL)
    y0 = torch.rand(3, 3, dtype=f64, requires_grad=True)
    t = torch.linspace(0, 2, 4, dtype=f64)
    g1 = _grads(f, y0, t, "reference", adjoint="discrete")
    g2 = _grads(f, y0, t, "reference", adjoint="backsolve")
    for a, b in zip(g1, g2):
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9)


def test_masked_weights_zero_grad_through_solve(backend, seed):
    f = random_field(D=3, hidden=(5,), mask_density=0.5)
    y0 = torch.rand(2, 3, dtype=f64)
    y = hf.odeint(f, y0, torch.linspace(0, 1, 3, dtype=f64), backend=backend)
    y.sum().backward()
    for layer, m in zip(f.nn.layers, f.nn.masks):
        assert torch.all(layer.weight.grad[~m] == 0)


def test_dose_amount_gradient(backend):
    """z(t) = (z0 + a 1[t > 1] e^{k}) e^{-kt}: dz(2)/da = e^{-k}."""
    k = 0.6
    f = hf.HybridField(mech=hf.MechanisticGraph(1, [hf.Linear(0, None, k)], dtype=f64))
    amt = torch.tensor([[1.5]], dtype=f64, requires_grad=True)
    ev = hf.Events(times=[[1.0]], states=[[0]], amounts=amt)
    y = hf.odeint(f, torch.ones(1, 1, dtype=f64), torch.tensor([0.0, 2.0], dtype=f64), events=ev, backend=backend, **TOL)
    (g,) = torch.autograd.grad(y[-1].sum(), amt)
    assert g.item() == pytest.approx(math.exp(-k), rel=1e-8)


# ---------------------------------------------------------------- gradients with respect to t
@pytest.mark.parametrize("adjoint", ["discrete", "backsolve"])
@pytest.mark.parametrize("grid", ["shared", "per_trajectory"])
def test_gradcheck_t_hybrid_field(adjoint, grid, backend, seed):
    """HybridField on the reference and cpu backends: gradcheck over (y0, t) (t shared (T,) or
    per trajectory (B, T)); outputs at t_i move along the dense-output interpolant, t_0 as
    ``-dL/dy0 . f(t0, y0)``."""
    f, _, y0 = small_problem()
    if grid == "shared":
        t = torch.tensor([0.0, 0.3, 0.8, 1.0], dtype=f64, requires_grad=True)
    else:
        t = (torch.rand(2, 4, dtype=f64) * 0.4 + 0.1).cumsum(1).requires_grad_(True)
    fn = lambda y0, t: hf.odeint(f, y0, t, backend=backend, adjoint=adjoint, **TOL)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (y0, t), atol=1e-6, rtol=1e-5)


def test_t_gradient_equal_on_reference_and_cpu(seed):
    from hnode_fast import backends

    if "cpu" not in backends.available():
        pytest.skip("CPU solver not built")
    f, _, y0 = small_problem(n_inputs=1)
    inputs = hf.Inputs(times=[[0.0, 0.5]] * 2, values=[[[1.0], [-0.5]]] * 2)
    g = {}
    for b in ("reference", "cpu"):
        t = torch.tensor([0.1, 0.3, 0.8, 1.0], dtype=f64, requires_grad=True)
        y = hf.odeint(f, y0, t, backend=b, inputs=inputs, **TOL)
        (g[b],) = torch.autograd.grad((y * torch.arange(1.0, 1.0 + y.numel(), dtype=f64).reshape(y.shape)).sum(), [t])
    torch.testing.assert_close(g["cpu"], g["reference"], rtol=1e-9, atol=1e-11)
    assert g["cpu"].abs().min() > 0


def test_t_gradient_never_silently_none():
    f, t, y0 = small_problem()
    t = t.clone().requires_grad_(True)
    ev = hf.Events(times=[[0.5]] * 2, states=[[0]] * 2, amounts=[[1.0]] * 2)
    with pytest.raises(NotImplementedError, match="events"):
        hf.odeint(f, y0, t, events=ev)
    from hnode_fast import backends

    assert backends.supports_time_grad("reference")
    assert not backends.supports_time_grad("cuda") and not backends.supports_time_grad("triton")


def test_leading_batch_shape_for_fields(backend):
    f = random_field(D=3, hidden=(4,))
    y0 = torch.rand(2, 5, 3, dtype=f64)
    t = torch.linspace(0, 1, 4, dtype=f64)
    with torch.no_grad():
        y = hf.odeint(f, y0, t, backend=backend, **TOL)
        flat = hf.odeint(f, y0.reshape(10, 3), t, backend=backend, **TOL)
    assert y.shape == (4, 2, 5, 3)
    assert torch.equal(y.reshape(4, 10, 3), flat)
