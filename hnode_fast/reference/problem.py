"""Turn (func, y0, t, events, inputs) into the engine's ``fun``, stops and jump."""

from __future__ import annotations

from typing import Optional

import torch

from ..events import Events, Inputs, build_stops  # noqa: F401  (build_stops: re-exported)


def make_fun(func, field_like: bool, inputs: Optional[Inputs], state_shape, dtype, left: bool = False):
    """Engine callback ``(t (B,) f64, y (B, N), t_seg (B,) f64) -> (B, N)`` in forward time.

    HybridFields get ``u`` looked up at the step start ``t_seg`` (``left=True``: the left limit,
    used when integrating backwards in time). Plain callables: with ``state_shape`` (one state of
    that shape, ``B = 1``: torchdiffeq's semantics) ``func`` gets a 0-dim ``t`` and ``y`` of
    ``state_shape``; else (``step_mode="per_sample"``) ``t`` of shape ``(B,)`` and ``y (B, N)``
    (torchode's convention). ``t`` has the state's dtype. The first evaluation checks that
    ``func`` returns a tensor of the state's shape (``ValueError`` naming both shapes).
    """
    if field_like:

        def field_fun(t, y, t_seg):
            u = inputs.at(t_seg, left=left).to(y.dtype) if inputs is not None else None
            return func.eval_u(y, u)

        return field_fun

    checked = [False]

    def check(out, want):
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"func must return a torch.Tensor, got {type(out).__name__}")
        if out.shape != want:
            raise ValueError(
                f"func returned a tensor of shape {tuple(out.shape)} for a state of shape {tuple(want)}: "
                "dy/dt must have the state's shape (no broadcasting)"
            )
        checked[0] = True

    if state_shape is not None:

        def fun_one(t, y, t_seg):
            ys = y.reshape(state_shape)
            out = func(t[0].to(dtype), ys)
            if not checked[0]:
                check(out, ys.shape)
            return out.reshape(1, -1)

        return fun_one

    def fun(t, y, t_seg):
        out = func(t.to(dtype), y)
        if not checked[0]:
            check(out, y.shape)
        return out

    return fun


def dose_delta(events: Events, t: torch.Tensor, hit: torch.Tensor, shape, dtype, sign: float = 1.0):
    """``(B, N)`` sum of the amounts of the doses of rows ``hit`` given exactly at ``t``."""
    sel = (events.times.to(t.device) == t[:, None]) & hit[:, None]
    delta = torch.zeros(shape, dtype=dtype, device=t.device)
    if bool(sel.any()):
        bb, kk = torch.nonzero(sel, as_tuple=True)
        amounts = events.amounts.to(device=t.device, dtype=dtype)[bb, kk]
        delta = delta.index_put((bb, events.states.to(t.device)[bb, kk]), sign * amounts, accumulate=True)
    return delta
