"""The reference backend: the plain-PyTorch solver (any callable, both adjoints)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import torch

from ..reference.backsolve import BacksolveFunction
from ..reference.engine import integrate
from ..reference.problem import build_stops, dose_delta, make_fun
from .caps import CAPS


def _engine_args(prob, left: bool = False):
    """``(fun, stops, jump)`` of the engine for a validated Problem."""
    fun = make_fun(prob.func, prob.field_like, prob.inputs, prob.state_shape, prob.y0.dtype, left=left)
    stops = build_stops(prob.out_t, prob.events, prob.inputs)
    jump = None
    if prob.events is not None:

        def jump(y, t, hit):
            return y + dose_delta(prob.events, t, hit, y.shape, y.dtype)

    return fun, stops, jump


def solve(prob):
    """``Problem -> (y (T, B, D), Stats)``."""
    CAPS["reference"].require(prob)
    fun, stops, jump = _engine_args(prob)
    if prob.adjoint == "discrete":
        y, _, stats = integrate(
            fun, prob.y0, prob.out_t, prob.rtol, prob.atol, prob.step_mode, prob.max_steps, stops, jump, first_step=prob.first_step
        )
        return y, stats
    params = [p for p in prob.func.parameters() if p.requires_grad] if isinstance(prob.func, torch.nn.Module) else []
    # the backsolve adjoint's own record (the Problem stays as validated): the engine callbacks,
    # the parameters to differentiate, and a slot for the forward's stats
    run = SimpleNamespace(**{f.name: getattr(prob, f.name) for f in dataclasses.fields(prob)})
    run.fun, run.fun_left = fun, _engine_args(prob, left=True)[0]
    run.stops, run.jump, run.params, run.stats = stops, jump, params, None
    y = BacksolveFunction.apply(run, prob.y0, *params)
    return y, run.stats


def output_slopes(prob):
    """``(T, B, N)`` time derivatives of the dense-output interpolant at the output times (a
    forward solve without gradients; the same steps as ``solve``)."""
    fun, stops, jump = _engine_args(prob)
    slopes: list = []
    with torch.no_grad():
        integrate(
            fun,
            prob.y0.detach(),
            prob.out_t,
            prob.rtol,
            prob.atol,
            prob.step_mode,
            prob.max_steps,
            stops,
            jump,
            first_step=prob.first_step,
            slopes_out=slopes,
        )
    return slopes[0]
