"""The reference backend: the plain-PyTorch solver (any callable, both adjoints)."""

from __future__ import annotations

import torch

from ..reference.backsolve import BacksolveFunction
from ..reference.engine import integrate
from ..reference.problem import build_stops, dose_delta, make_fun


def solve(prob):
    """``Problem -> (y (T, B, D), Stats)``."""
    shared = prob.step_mode == "shared"
    fun = make_fun(prob.func, prob.field_like, prob.inputs, prob.squeeze, shared, prob.y0.dtype)
    stops = build_stops(prob.out_t, prob.events, prob.inputs)
    jump = None
    if prob.events is not None:

        def jump(y, t, hit):
            return y + dose_delta(prob.events, t, hit, y.shape, y.dtype)

    if prob.adjoint == "discrete":
        y, _, stats = integrate(fun, prob.y0, prob.out_t, prob.rtol, prob.atol, prob.step_mode, prob.max_steps, stops, jump)
        return y, stats
    if prob.events is not None and prob.events.amounts.requires_grad:
        raise NotImplementedError("adjoint='backsolve' gives no gradient to events.amounts; use adjoint='discrete'")
    params = [p for p in prob.func.parameters() if p.requires_grad] if isinstance(prob.func, torch.nn.Module) else []
    prob.fun = fun
    prob.fun_left = make_fun(prob.func, prob.field_like, prob.inputs, prob.squeeze, shared, prob.y0.dtype, left=True)
    prob.stops = stops
    prob.jump = jump
    prob.params = params
    y = BacksolveFunction.apply(prob, prob.y0, *params)
    return y, prob.stats
