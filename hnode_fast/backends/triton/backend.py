"""``backend="triton"``'s entry point: checks the problem, builds the plan, and runs the solve loop
(:mod:`.solver`, discrete adjoint through the fused step's autograd) or the continuous adjoint
(:mod:`.backsolve`, which itself drives :mod:`.solver`'s loop): no import cycle between them."""

from __future__ import annotations

import torch

from ..caps import CAPS
from . import ops
from .backsolve import solve_backsolve
from .plan import build_plan
from .solver import SYNC_EVERY, integrate


def _check(prob) -> None:
    CAPS["triton"].require(prob)
    if prob.y0.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"y0: backend='triton' supports float32/float64, got {prob.y0.dtype}")
    ops._check_device(prob.y0)


def solve(prob, allow_tf32: bool = False, sync_every: int = SYNC_EVERY):
    """``Problem -> (y (T, B, D), Stats)`` with the Triton kernels."""
    _check(prob)
    plan = build_plan(prob.func.compile(), prob.y0.dtype, prob.y0.device)
    if prob.adjoint == "backsolve":
        return solve_backsolve(prob, plan, allow_tf32, sync_every)
    out, _, stats = integrate(prob, plan, allow_tf32, sync_every)
    return out, stats
