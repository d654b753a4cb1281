"""``torch.library`` custom ops around the Triton kernels (fake impls + autograd), so callers can
be traced by ``torch.compile``:

* ``hnode_fast::triton_field_eval(z, u?, tensors[], tab, meta[], allow_tf32) -> dz``
* ``hnode_fast::triton_dp_step(y, f0, u?, h, rejected, tensors[], tab, meta[], rtol, atol,
  stiffness, allow_tf32) -> (y1, k7, Q, err, h_next, accept, stiff)``

``meta`` = ``[NL, DP, KP, O0, O1, O2, HAS_U, ACT, n_terms, D, K]`` (see :mod:`.plan`). The backward
ops (``*_bwd``) are custom ops too. The kernels themselves are opaque to the compiler.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .plan import Plan

_META_KEYS = ("NL", "DP", "KP", "O0", "O1", "O2", "HAS_U", "ACT")


def plan_meta(plan: Plan) -> List[int]:
    return [int(plan.meta[k]) for k in _META_KEYS] + [plan.n_terms, plan.D, plan.K]


def _plan(tensors, tab, meta) -> Plan:
    m = {k: int(v) for k, v in zip(_META_KEYS, meta)}
    m["HAS_U"] = bool(m["HAS_U"])
    return Plan(tensors=list(tensors), tab=tab, n_terms=int(meta[8]), D=int(meta[9]), K=int(meta[10]), meta=m)


# ----------------------------------------------------------------------------- field eval


@torch.library.custom_op("hnode_fast::triton_field_eval", mutates_args=())
def triton_field_eval(z: Tensor, u: Optional[Tensor], tensors: List[Tensor], tab: Tensor, meta: List[int], allow_tf32: bool) -> Tensor:
    from . import ops

    return ops.field_forward(_plan(tensors, tab, meta), z, u, list(tensors), allow_tf32)


@triton_field_eval.register_fake
def _(z, u, tensors, tab, meta, allow_tf32):
    return torch.empty_like(z)


@torch.library.custom_op("hnode_fast::triton_field_eval_bwd", mutates_args=())
def triton_field_eval_bwd(
    z: Tensor, u: Optional[Tensor], g: Tensor, tensors: List[Tensor], tab: Tensor, meta: List[int], allow_tf32: bool
) -> List[Tensor]:
    from . import ops

    dz, grads = ops.field_backward(_plan(tensors, tab, meta), z, u, g, list(tensors), allow_tf32)
    return [dz] + grads


@triton_field_eval_bwd.register_fake
def _(z, u, g, tensors, tab, meta, allow_tf32):
    return [torch.empty_like(z)] + [torch.empty_like(t) for t in tensors]


def _fe_setup(ctx, inputs, output):
    z, u, tensors, tab, meta, allow_tf32 = inputs
    ctx.save_for_backward(z, u, *tensors)
    ctx.has_u = u is not None
    ctx.tab, ctx.meta, ctx.allow_tf32 = tab, meta, allow_tf32


def _fe_backward(ctx, g):
    z, u, *tensors = ctx.saved_tensors
    res = triton_field_eval_bwd(z, u if ctx.has_u else None, g, tensors, ctx.tab, ctx.meta, ctx.allow_tf32)
    return res[0], None, list(res[1:]), None, None, None


triton_field_eval.register_autograd(_fe_backward, setup_context=_fe_setup)


# ----------------------------------------------------------------------------- fused step


@torch.library.custom_op("hnode_fast::triton_dp_step", mutates_args=())
def triton_dp_step(
    y: Tensor,
    f0: Tensor,
    u: Optional[Tensor],
    h: Tensor,
    rejected: Tensor,
    tensors: List[Tensor],
    tab: Tensor,
    meta: List[int],
    rtol: float,
    atol: float,
    stiffness: bool,
    allow_tf32: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    from . import ops

    y1, k7, q, err, hn, acc, st = ops.dp_step_forward(
        _plan(tensors, tab, meta), y, f0, u, h, rtol, atol, rejected, stiffness, list(tensors), allow_tf32
    )
    if st is None:
        st = torch.zeros(0, dtype=torch.float64, device=y.device)
    return y1, k7, q, err, hn, acc, st


@triton_dp_step.register_fake
def _(y, f0, u, h, rejected, tensors, tab, meta, rtol, atol, stiffness, allow_tf32):
    B, D = y.shape
    f64 = torch.float64
    return (
        torch.empty_like(y),
        torch.empty_like(y),
        y.new_empty((4, B, D)),
        y.new_empty(B, dtype=f64),
        y.new_empty(B, dtype=f64),
        y.new_empty(B, dtype=torch.bool),
        y.new_empty(B if stiffness else 0, dtype=f64),
    )


@torch.library.custom_op("hnode_fast::triton_dp_step_bwd", mutates_args=())
def triton_dp_step_bwd(
    y: Tensor,
    f0: Tensor,
    u: Optional[Tensor],
    h: Tensor,
    tensors: List[Tensor],
    tab: Tensor,
    meta: List[int],
    rtol: float,
    atol: float,
    allow_tf32: bool,
    gy1: Optional[Tensor],
    gk7: Optional[Tensor],
    gq: Optional[Tensor],
    gerr: Optional[Tensor],
) -> List[Tensor]:
    from . import ops

    gy, gf0, grads = ops.dp_step_backward(_plan(tensors, tab, meta), y, f0, u, h, rtol, atol, gy1, gk7, gq, gerr, list(tensors), allow_tf32)
    return [gy, gf0] + grads


@triton_dp_step_bwd.register_fake
def _(y, f0, u, h, tensors, tab, meta, rtol, atol, allow_tf32, gy1, gk7, gq, gerr):
    return [torch.empty_like(y), torch.empty_like(y)] + [torch.empty_like(t) for t in tensors]


def _st_setup(ctx, inputs, output):
    y, f0, u, h, rejected, tensors, tab, meta, rtol, atol, stiffness, allow_tf32 = inputs
    ctx.save_for_backward(y, f0, u, h, *tensors)
    ctx.has_u = u is not None
    ctx.args = (tab, meta, rtol, atol, allow_tf32)
    ctx.mark_non_differentiable(*output[4:])


def _st_backward(ctx, gy1, gk7, gq, gerr, _a, _b, _c):
    y, f0, u, h, *tensors = ctx.saved_tensors
    tab, meta, rtol, atol, allow_tf32 = ctx.args
    res = triton_dp_step_bwd(y, f0, u if ctx.has_u else None, h, tensors, tab, meta, rtol, atol, allow_tf32, gy1, gk7, gq, gerr)
    return res[0], res[1], None, None, None, list(res[2:]), None, None, None, None, None, None


triton_dp_step.register_autograd(_st_backward, setup_context=_st_setup)
