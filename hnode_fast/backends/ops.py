"""The compiled solver's ``torch.library`` ops: one schema per kernel, with one fake (meta)
implementation and one registered autograd; each device registers its own implementation
(``backends/cpu.py`` for ``"cpu"``, ``backends/cuda.py`` for ``"cuda"``), as bitsandbytes does.
A device with no implementation gets ``NotImplementedError`` from the default body below.

* ``hnode_fast::solve(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol,
  max_steps, n_threads, ckpt_cap=0, checks=None, check_msgs="") -> (y (T, B, D), stats (B, 4)
  int64, ck_t, ck_tn, ck_y, ck_jump, ck_n)``: the whole-trajectory DP5 solve
  (``csrc/include/hnode/solve.h``). The ten tensors are described in :mod:`.args`. ``stats``
  columns: ``[n_steps, n_rejected, nfe, status]``. Up to ``ckpt_cap`` accepted steps per
  trajectory are stored for the backward (:func:`.args.ck_empty`; on CUDA ``ck_n[b] = -1`` when
  trajectory ``b`` did not fit). ``n_threads``: the CPU kernel's threads (0: torch's count when
  the op runs; unused on CUDA). ``checks`` (bool ``(N,)``) and ``check_msgs`` (N lines):
  ``hf.odeint``'s data-dependent validation computed inside a ``torch.compile`` graph; the op
  raises ``ValueError(<line i>)`` for the first false entry.
* ``hnode_fast::solve_backward(grad_y, <ten tensors>, rtol, atol, max_steps, n_threads, stats,
  ck_t, ck_tn, ck_y, ck_jump, ck_n) -> (grad_params (P,), grad_y0 (B, D), grad_ev_a (B, E))``: the
  discrete adjoint: the reverse pass over the stored (or re-solved) accepted steps, recomputing
  stages, with step sizes and accept decisions constants as in the reference, so the gradient
  equals autograd through the reference solver.
* ``hnode_fast::backsolve(grad_y, <ten tensors>, y_out, rtol, atol, max_steps, n_threads) ->
  (grad_params (P,), grad_y0 (B, D), backward stats (B, 4))``: the continuous adjoint
  (``csrc/include/hnode/backsolve.h``, the algorithm of ``reference/backsolve.py``), integrated
  backwards from ``y_out[-1]`` and re-anchored to ``y_out[j]`` at every output time. CPU only.

The autograd of ``solve`` is ``solve_backward`` (gradients to ``params``, ``y0``, ``ev_a``);
``backsolve`` is used by the backends' ``adjoint="backsolve"`` autograd.Function instead.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .args import ck_empty

# index of the first scalar argument of ``solve`` (after the ten tensors) and of its inputs
N_TENSORS = 10
N_SOLVE_INPUTS = 17


def _no_kernel(op: str, t: Tensor) -> NotImplementedError:
    return NotImplementedError(f"hnode_fast::{op} has no kernel for {t.device.type} tensors (see hf.build_info())")


@torch.library.custom_op("hnode_fast::solve", mutates_args=())
def solve(
    ints: Tensor,
    params: Tensor,
    y0: Tensor,
    out_t: Tensor,
    stops: Tensor,
    ev_t: Tensor,
    ev_s: Tensor,
    ev_a: Tensor,
    in_t: Tensor,
    in_v: Tensor,
    rtol: float,
    atol: float,
    max_steps: int,
    n_threads: int,
    ckpt_cap: int = 0,
    checks: Optional[Tensor] = None,
    check_msgs: str = "",
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    raise _no_kernel("solve", y0)


@solve.register_fake
def _(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, n_threads, ckpt_cap=0, checks=None, msgs=""):
    B, D = y0.shape
    return (y0.new_empty(out_t.shape[1], B, D), y0.new_empty(B, 4, dtype=torch.int64)) + ck_empty(
        B, D, max(int(ckpt_cap), 0), y0.dtype, like=y0
    )


@torch.library.custom_op("hnode_fast::solve_backward", mutates_args=())
def solve_backward(
    grad_y: Tensor,
    ints: Tensor,
    params: Tensor,
    y0: Tensor,
    out_t: Tensor,
    stops: Tensor,
    ev_t: Tensor,
    ev_s: Tensor,
    ev_a: Tensor,
    in_t: Tensor,
    in_v: Tensor,
    rtol: float,
    atol: float,
    max_steps: int,
    n_threads: int,
    stats: Tensor,
    ck_t: Tensor,
    ck_tn: Tensor,
    ck_y: Tensor,
    ck_jump: Tensor,
    ck_n: Tensor,
) -> Tuple[Tensor, Tensor, Tensor]:
    raise _no_kernel("solve_backward", y0)


@solve_backward.register_fake
def _(grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, n_threads, stats, *ck):
    return params.new_empty(params.shape), y0.new_empty(y0.shape), ev_a.new_empty(ev_a.shape)


@torch.library.custom_op("hnode_fast::backsolve", mutates_args=())
def backsolve(
    grad_y: Tensor,
    ints: Tensor,
    params: Tensor,
    y0: Tensor,
    out_t: Tensor,
    stops: Tensor,
    ev_t: Tensor,
    ev_s: Tensor,
    ev_a: Tensor,
    in_t: Tensor,
    in_v: Tensor,
    y_out: Tensor,
    rtol: float,
    atol: float,
    max_steps: int,
    n_threads: int,
) -> Tuple[Tensor, Tensor, Tensor]:
    raise _no_kernel("backsolve", y0)


@backsolve.register_fake
def _(grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, y_out, rtol, atol, max_steps, n_threads):
    return params.new_empty(params.shape), y0.new_empty(y0.shape), y0.new_empty(y0.shape[0], 4, dtype=torch.int64)


def setup_context(ctx, inputs, output) -> None:
    """Saves ``solve``'s ten tensor inputs, its stats and checkpoints (``output[1:]``) and its
    scalars (rtol, atol, max_steps, n_threads); shared with the CPU's eager twin (``cpu._Discrete``)."""
    ctx.save_for_backward(*inputs[:N_TENSORS], *output[1:])
    ctx.scalars = tuple(inputs[N_TENSORS : N_TENSORS + 4])


def discrete_grads(ctx, grad_y, bwd):
    """``(grad_params, grad_y0, grad_amounts)`` from what :func:`setup_context` saved; ``bwd``: the
    ``solve_backward`` op or a device's implementation of it."""
    saved = ctx.saved_tensors
    y0, out_t = saved[2], saved[3]
    if grad_y is None:
        grad_y = torch.zeros(out_t.shape[1], y0.shape[0], y0.shape[1], dtype=y0.dtype, device=y0.device)
    return bwd(grad_y, *saved[:N_TENSORS], *ctx.scalars, *saved[N_TENSORS:])


def _backward(ctx, grad_y, *unused):
    gp, gy0, gev = discrete_grads(ctx, grad_y, torch.ops.hnode_fast.solve_backward)
    return (None, gp, gy0, None, None, None, None, gev) + (None,) * (N_SOLVE_INPUTS - 8)


solve.register_autograd(_backward, setup_context=setup_context)
