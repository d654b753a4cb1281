"""Small random hybrid fields for the Triton tests (own copy: tests/conftest.py is not importable
from here under pytest's conftest handling)."""

import torch

import hnode_fast as hf
from hnode_fast.fields.spec import FieldSpec
from hnode_fast.reference import dopri5 as dp
from hnode_fast.reference.spec_eval import eval_spec

f64 = torch.float64


def make_field(
    D=3,
    hidden=(8,),
    activation="tanh",
    n_inputs=0,
    mech=True,
    nn=True,
    nn_inputs=False,
    mask_density=None,
    dtype=f64,
    scale=0.5,
    full_terms=True,
):
    terms = []
    if mech:
        for i in range(D):
            terms.append(hf.Linear(i, (i + 1) % D if D > 1 else None, 0.3 + 0.2 * float(torch.rand(()))))
        terms.append(hf.Constant(0, 0.1))
        if full_terms:
            terms.append(hf.MichaelisMenten(D - 1, None, 0.5, 0.7))
            terms.append(hf.Hill(0, D - 1, 0.4, 0.8, 2.0))
            terms.append(hf.Hill(D - 1, 0, 0.3, 0.6, 1.5, repress=True))
            terms.append(hf.MassAction((0, D - 1), None, 0.05))
        for k in range(n_inputs):
            terms.append(hf.Input(k, k % D, 0.7))
    m = hf.MechanisticGraph(D, terms, n_inputs=n_inputs, dtype=dtype) if mech else None
    net = None
    if nn:
        net = hf.MaskedMLP(D + (n_inputs if nn_inputs else 0), D, hidden=hidden, activation=activation)
        with torch.no_grad():
            for layer in net.layers:
                layer.weight.mul_(scale)
        if mask_density is not None:
            for i, layer in enumerate(net.layers):
                net.set_mask(i, torch.rand(layer.weight.shape) < mask_density)
    f = hf.HybridField(mech=m, nn=net, n_states=D, n_inputs=n_inputs if (n_inputs and not mech) else None)
    return f.to(dtype)


def leaf_spec(field, dtype=f64, device="cpu"):
    spec = field.compile()
    p = spec.params.detach().to(dtype=dtype, device=device).clone().requires_grad_(True)
    return FieldSpec(spec.ints, p)


def ref_step(spec, y, u, h, rtol, atol):
    """Reference DP5 step with a DIFFERENTIABLE error norm (the engine's is detached)."""

    def fun(t, yy, ts):
        return eval_spec(spec, yy, u)

    t = torch.zeros(y.shape[0], dtype=f64, device=y.device)
    f0 = fun(t, y, t)
    y1, K, Ys = dp.rk_step(fun, t, y, f0, h, t)
    err = K[0] * dp.E[0]
    for j in range(1, 7):
        if dp.E[j] != 0.0:
            err = err + K[j] * dp.E[j]
    err = err * h.to(y.dtype)[:, None]
    scale = atol + torch.maximum(y.abs(), y1.abs()) * rtol
    en = dp.rms_rows(err / scale)
    return y1, en, K, Ys


def stage_noise(field_eval, spec, Ys, K, u=None):
    """Per-element rounding noise of the field at the stage points (B, D): ``max_i |f_impl(Y_i) - K_i|``.

    A hybrid field is itself a cancelling sum (mechanistic terms plus an MLP output of order 0.1
    can add up to 1e-4), so two correct implementations of it differ by ~eps times the size of its
    terms, not of its value; this measures that difference for the implementation under test.
    """
    with torch.no_grad():
        return torch.stack([(field_eval(spec, Y.detach(), u) - k.detach()).abs() for Y, k in zip(Ys, K)]).amax(0)


def error_norm_rounding(K, h, y, y1, rtol, atol, noise=None):
    """Per-row size of the rounding in the error norm (B,):
    ``rms(h * sum_i |E_i| (eps |K_i| + noise) / scale)``.

    The estimate ``h * sum_i E_i K_i`` cancels to a tiny value; two correct implementations that
    order their sums differently agree only to ``eps`` times this uncancelled magnitude, plus what
    the stage values themselves differ by (``noise``, from :func:`stage_noise`).
    """
    with torch.no_grad():
        eps = torch.finfo(y.dtype).eps
        extra = 0.0 if noise is None else noise
        mag = sum(abs(e) * (eps * k.detach().abs() + extra) for e, k in zip(dp.E, K) if e != 0.0)
        scale = atol + torch.maximum(y.detach().abs(), y1.detach().abs()) * rtol
        return dp.rms_rows(mag * h.to(y.dtype)[:, None] / scale)
