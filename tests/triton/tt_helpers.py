"""Helpers of the Triton tests: small random hybrid fields (tests/fieldgen.py, the generator the
rest of the suite uses: tests/conftest.py itself is not importable from here, both directories
have a conftest.py), leaf specs, a reference step with a differentiable error norm."""

import torch
from fieldgen import random_field

from hnode_fast.fields.spec import FieldSpec
from hnode_fast.reference import dopri5 as dp
from hnode_fast.reference.spec_eval import eval_spec

f64 = torch.float64


def make_field(D=3, hidden=(8,), full_terms=True, **kw):
    """tests/fieldgen.random_field (every term kind, smooth Hill exponents), hidden (8,) by default."""
    return random_field(D=D, hidden=hidden, full_terms=full_terms, **kw)


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
