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
  the op runs, ``-n``: at most ``n`` of them; unused on CUDA). ``checks`` (bool ``(N,)``) and ``check_msgs`` (N lines):
  ``hf.odeint``'s data-dependent validation computed inside a ``torch.compile`` graph; the op
  raises ``ValueError(<line i>)`` for the first false entry.
* ``hnode_fast::solve_backward(grad_y, <ten tensors>, rtol, atol, max_steps, n_threads, stats,
  ck_t, ck_tn, ck_y, ck_jump, ck_n) -> (grad_params (P,), grad_y0 (B, D), grad_ev_a (B, E))``: the
  discrete adjoint: the reverse pass over the stored (or re-solved) accepted steps, recomputing
  stages, with step sizes and accept decisions constants as in the reference, so the gradient
  equals autograd through the reference solver.
* ``hnode_fast::eval_field(ints, params, z (B, D), u (B, K) or None, n_threads=1, repeat=1) -> dz/dt
  (B, D)``: one field evaluation (``repeat`` times, for benchmarks); differentiable w.r.t. ``z``
  and ``params`` through
* ``hnode_fast::vjp_field(ints, params, z, u, a (B, D)) -> (J_z^T a (B, D), sum_b J_params^T a (P,))``.
* ``hnode_fast::backsolve(grad_y, <ten tensors>, y_out, rtol, atol, max_steps, n_threads) ->
  (grad_params (P,), grad_y0 (B, D), backward stats (B, 4))``: the continuous adjoint
  (``csrc/include/hnode/backsolve.h``, the algorithm of ``reference/backsolve.py``), integrated
  backwards from ``y_out[-1]`` and re-anchored to ``y_out[j]`` at every output time. CPU only.

The autograd of ``solve`` is ``solve_backward`` (gradients to ``params``, ``y0``, ``ev_a``);
``backsolve`` is used by the backends' ``adjoint="backsolve"`` autograd.Function instead.
"""

from __future__ import annotations

import torch

from .args import NAMES, ck_empty

# index of the first scalar argument of ``solve`` (after the ten tensors) and its argument count
N_TENSORS = 10
N_SOLVE_INPUTS = 17

# The schemas, written once (the ten tensors are described in backends/args.py)
_TENSORS = ", ".join(f"Tensor {name}" for name in NAMES)
_SCALARS = "float rtol, float atol, int max_steps, int n_threads"
_CKPTS = "Tensor stats, Tensor ck_t, Tensor ck_tn, Tensor ck_y, Tensor ck_jump, Tensor ck_n"
SCHEMAS = {
    "solve": f'({_TENSORS}, {_SCALARS}, int ckpt_cap=0, Tensor? checks=None, str check_msgs="") -> '
    "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    "solve_backward": f"(Tensor grad_y, {_TENSORS}, {_SCALARS}, {_CKPTS}) -> (Tensor, Tensor, Tensor)",
    "backsolve": f"(Tensor grad_y, {_TENSORS}, Tensor y_out, {_SCALARS}) -> (Tensor, Tensor, Tensor)",
    "eval_field": "(Tensor ints, Tensor params, Tensor z, Tensor? u, int n_threads=1, int repeat=1) -> Tensor",
    "vjp_field": "(Tensor ints, Tensor params, Tensor z, Tensor? u, Tensor a) -> (Tensor, Tensor)",
}


def _define(name: str, device_arg: int):
    """The op ``hnode_fast::<name>`` with its schema; its default body (a device with no
    implementation) raises ``NotImplementedError`` naming the device of argument ``device_arg``."""

    def no_kernel(*args, **kwargs):
        dev = args[device_arg].device.type if len(args) > device_arg else "?"
        raise NotImplementedError(f"hnode_fast::{name} has no kernel for {dev} tensors (see hf.build_info())")

    return torch.library.custom_op(f"hnode_fast::{name}", no_kernel, mutates_args=(), schema=SCHEMAS[name])


solve = _define("solve", 2)
solve_backward = _define("solve_backward", 3)
backsolve = _define("backsolve", 3)
eval_field = _define("eval_field", 2)
vjp_field = _define("vjp_field", 2)


@solve.register_fake
def _(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, n_threads, ckpt_cap=0, checks=None, msgs=""):
    B, D = y0.shape
    return (y0.new_empty(out_t.shape[1], B, D), y0.new_empty(B, 4, dtype=torch.int64)) + ck_empty(
        B, D, max(int(ckpt_cap), 0), y0.dtype, like=y0
    )


@solve_backward.register_fake
def _(grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, *scalars_and_ckpts):
    return params.new_empty(params.shape), y0.new_empty(y0.shape), ev_a.new_empty(ev_a.shape)


@backsolve.register_fake
def _(grad_y, ints, params, y0, *rest):
    return params.new_empty(params.shape), y0.new_empty(y0.shape), y0.new_empty(y0.shape[0], 4, dtype=torch.int64)


@eval_field.register_fake
def _(ints, params, z, u, n_threads=1, repeat=1):
    return torch.empty_like(z)


@vjp_field.register_fake
def _(ints, params, z, u, a):
    return torch.empty_like(z), params.new_empty(params.shape)


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


def _eval_field_setup(ctx, inputs, output):
    ints, params, z, u = inputs[:4]
    ctx.save_for_backward(ints, params, z, u)
    ctx.u_grad = u is not None and ctx.needs_input_grad[3]


def _eval_field_backward(ctx, grad):
    ints, params, z, u = ctx.saved_tensors
    if ctx.u_grad:
        raise NotImplementedError("hnode_fast::eval_field gives no gradient to the inputs u; use the reference field")
    gz, gp = torch.ops.hnode_fast.vjp_field(ints, params, z, u, grad)
    return None, gp, gz, None, None, None


eval_field.register_autograd(_eval_field_backward, setup_context=_eval_field_setup)
