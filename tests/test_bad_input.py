"""Bad input raises ValueError naming the argument; nothing segfaults or hangs."""

import pytest
import torch
from conftest import random_field

import hnode_fast as hf

f64 = torch.float64
nan, inf = float("nan"), float("inf")


def field():
    return random_field(D=2, hidden=(3,))


Y0 = lambda: torch.rand(2, 2, dtype=f64)  # noqa: E731
T = lambda: torch.linspace(0, 1, 3, dtype=f64)  # noqa: E731


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(y0=torch.tensor([[nan, 1.0]], dtype=f64)), "y0"),
        (dict(y0=torch.tensor([[inf, 1.0]], dtype=f64)), "y0"),
        (dict(y0=torch.rand(2, 3, dtype=f64)), "y0"),
        (dict(y0=torch.rand(2, 2, 3, dtype=f64)), "y0"),
        (dict(y0=torch.tensor(1.0, dtype=f64)), "y0"),
        (dict(y0=torch.ones(2, 2, dtype=torch.int64)), "y0"),
        (dict(y0=[[1.0, 2.0]]), "y0"),
        (dict(y0=torch.rand(2, 2, dtype=torch.float32)), "dtype"),
        (dict(t=torch.tensor([0.0, 1.0, 1.0], dtype=f64)), "strictly increasing"),
        (dict(t=torch.tensor([1.0, 0.0], dtype=f64)), "strictly increasing"),
        (dict(t=torch.tensor([0.0, nan], dtype=f64)), "t contains"),
        (dict(t=torch.rand(3, 4, dtype=f64).cumsum(1)), "rows"),
        (dict(t=torch.zeros(0, dtype=f64)), "t must"),
        (dict(rtol=-1e-3), "rtol"),
        (dict(atol=-1.0), "atol"),
        (dict(atol=nan), "atol"),
        (dict(rtol=0.0, atol=0.0), "both"),
        (dict(method="rk45x"), "method"),
        (dict(options=dict(norm=None)), "options"),
        (dict(options=dict(first_step=-1.0)), "first_step"),
        (dict(adjoint="magic"), "adjoint"),
        (dict(step_mode="lockstep"), "step_mode"),
        (dict(max_steps=0), "max_steps"),
        (dict(backend="tpu"), "backend"),
        (dict(step_mode="shared", t=torch.tensor([[0.0, 1.0], [0.0, 2.0]], dtype=f64)), "shared"),
        (dict(events=hf.Events(times=[[0.5]], states=[[7]], amounts=[[1.0]])), "events.states"),
        (dict(events=hf.Events(times=[[-0.5]], states=[[0]], amounts=[[1.0]])), "events.times"),
        (dict(events=hf.Events(times=[[0.5]] * 3, states=[[0]] * 3, amounts=[[1.0]] * 3)), "rows"),
        (dict(inputs=hf.Inputs(times=[[0.0]], values=[[[1.0]]])), "inputs"),
    ],
)
def test_bad_odeint_arguments(kwargs, match):
    args = dict(func=field(), y0=Y0(), t=T())
    args.update(kwargs)
    func = args.pop("func")
    with pytest.raises(ValueError, match=match):
        hf.odeint(func, args.pop("y0"), args.pop("t"), **args)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_nan_parameter_named(backend):
    f = field()
    with torch.no_grad():
        f.nn.layers[0].weight[0, 0] = nan
    with pytest.raises(ValueError, match="nn.layers.0.weight"):
        hf.odeint(f, Y0(), T(), backend=backend)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_bad_parameter_caught_after_clean_solve(backend):
    """Every call checks: a write through .data (no version bump) after a clean solve is still caught."""
    f = field()
    hf.odeint(f, Y0(), T(), backend=backend)
    last = f.nn.layers[-1].bias
    last.data[-1] = -inf
    with pytest.raises(ValueError, match=r"nn.layers.%d.bias" % (len(f.nn.layers) - 1)):
        hf.odeint(f, Y0(), T(), backend=backend)
    last.data[-1] = 0.0
    hf.odeint(f, Y0(), T(), backend=backend)


def test_bad_events_construction():
    with pytest.raises(ValueError, match="same shape"):
        hf.Events(times=[[1.0, 2.0]], states=[[0]], amounts=[[1.0, 1.0]])
    with pytest.raises(ValueError, match="NaN"):
        hf.Events(times=[[nan]], states=[[0]], amounts=[[1.0]])
    with pytest.raises(ValueError, match="finite"):
        hf.Events(times=[[1.0]], states=[[0]], amounts=[[inf]])
    with pytest.raises(ValueError, match="integer"):
        hf.Events(times=[[1.0]], states=[[0.5]], amounts=[[1.0]])


def test_bad_inputs_construction():
    with pytest.raises(ValueError, match="non-decreasing"):
        hf.Inputs(times=[[2.0, 1.0]], values=[[[1.0], [2.0]]])
    with pytest.raises(ValueError, match="shape"):
        hf.Inputs(times=[[1.0, 2.0]], values=[[[1.0]]])


def test_field_with_inputs_needs_inputs():
    mech = hf.MechanisticGraph(1, [hf.Input(0, 0, 1.0)], n_inputs=1, dtype=f64)
    with pytest.raises(ValueError, match="inputs"):
        hf.odeint(hf.HybridField(mech=mech), torch.ones(1, 1, dtype=f64), T())
    with pytest.raises(ValueError, match="K=1"):
        hf.odeint(hf.HybridField(mech=mech), torch.ones(1, 1, dtype=f64), T(), inputs=hf.Inputs(times=[[0.0]], values=[[[1.0, 2.0]]]))


@pytest.mark.parametrize("method", ["rk4", "euler", "tsit5", "dopri8"])
def test_torchdiffeq_methods_not_implemented_name_the_supported_one(method):
    with pytest.raises(NotImplementedError, match="dopri5"):
        hf.odeint(field(), Y0(), T(), method=method)


def test_first_step_option_needs_the_reference_backend():
    with pytest.raises(NotImplementedError, match="first_step"):
        hf.odeint(field(), Y0(), T(), backend="cpu", options=dict(first_step=0.01))
