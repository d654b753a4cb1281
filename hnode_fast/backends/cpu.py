"""The CPU backend: the compiled whole-trajectory DP5 solver (``csrc/include/hnode/solve.h``)
run over trajectories in parallel, with its discrete adjoint.

Two ``torch.library`` custom ops (with fake implementations, so they trace under
``torch.compile``):

* ``hnode_fast::cpu_solve(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v,
  rtol, atol, max_steps, n_threads, ckpt_cap=0, checks=None, check_msgs="") -> (y (T, B, D),
  stats (B, 4) int64, <checkpoints>)``; stats columns are ``[n_steps, n_rejected, nfe, status]``.
  ``n_threads=0``: torch's thread count when the op runs. ``checks`` (bool ``(N,)``) and
  ``check_msgs`` (N lines): ``hf.odeint``'s data-dependent validation computed inside a
  ``torch.compile`` graph; the op raises ``ValueError(<line i>)`` for the first false entry.
* ``hnode_fast::cpu_solve_backward(grad_y, <same inputs>) -> (grad_params (P,), grad_y0 (B, D),
  grad_ev_a (B, E))``: the discrete adjoint. It re-runs the (deterministic) forward solve
  recording the accepted steps, then does the reverse pass (recomputed stages, VJP through the
  stage combination, the dense outputs and every stage). Step sizes and accept decisions are
  constants, as in the reference, so the gradient equals autograd through the reference.

* ``hnode_fast::cpu_solve_backsolve(grad_y, <same inputs>, y_out) -> (grad_params, grad_y0,
  stats (B, 4))``: the continuous (backsolve) adjoint (``csrc/include/hnode/backsolve.h``, the
  algorithm of ``reference/backsolve.py``): the augmented system ``[y, a]`` integrated
  backwards from the final states by the same adaptive DP5; O(1) memory, gradient of the exact
  ODE solution to the solver tolerance. Used by ``adjoint="backsolve"`` (``_Backsolve``).

``solve`` under ``torch.compile`` traces into one graph with the op (docs/compile.md): the FieldSpec
structure is a graph constant (``_traced_structure``), its parameters are gathered by traced ops.

Gradients reach the field's parameters through ``field.compile()`` (differentiable), ``y0``
and (discrete adjoint only) ``events.amounts``. Supported: ``hf.HybridField`` funcs,
``step_mode="per_sample"``, ``adjoint="discrete"`` or ``"backsolve"``; anything else raises
``NotImplementedError``.
"""

from __future__ import annotations

import sys
import warnings
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _hostcheck, _native
from ..events import build_stops
from ..fields.spec import H_D, H_K, H_P, FieldSpec, SpecStructure, gather_params, spec_structure, structure_matches
from ..types import Stats


def _lib():
    lib = _native._C
    if lib is None or not hasattr(lib, "cpu_solve"):
        raise NotImplementedError("backend='cpu' needs the compiled extension with the CPU solver; see hf.build_info()")
    return lib


def is_available() -> bool:
    return _native._C is not None and hasattr(_native._C, "cpu_solve")


def supports(prob) -> bool:
    """Whether ``backend="auto"`` may use this backend for ``prob``."""
    return prob.field_like and prob.y0.device.type == "cpu" and prob.step_mode == "per_sample" and prob.adjoint in ("discrete", "backsolve")


def _args(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, n_threads):
    B, D = y0.shape
    return dict(
        ints=ints.data_ptr(),
        n_ints=ints.numel(),
        params=params.data_ptr(),
        P=params.numel(),
        y0=y0.data_ptr(),
        B=B,
        D=D,
        out_t=out_t.data_ptr(),
        T=out_t.shape[1],
        stops=stops.data_ptr(),
        S=stops.shape[1],
        ev_t=ev_t.data_ptr(),
        ev_s=ev_s.data_ptr(),
        ev_a=ev_a.data_ptr(),
        E=ev_t.shape[1],
        in_t=in_t.data_ptr(),
        in_v=in_v.data_ptr(),
        J=in_t.shape[1],
        rtol=float(rtol),
        atol=float(atol),
        max_steps=int(max_steps),
        n_threads=int(n_threads) if n_threads > 0 else torch.get_num_threads(),
    )  # 0: torch's current count


def _ck_args(ck_t, ck_tn, ck_y, ck_jump, ck_n):
    return dict(
        ck_cap=ck_t.shape[1],
        ck_t=ck_t.data_ptr(),
        ck_tn=ck_tn.data_ptr(),
        ck_y=ck_y.data_ptr(),
        ck_jump=ck_jump.data_ptr(),
        ck_n=ck_n.data_ptr(),
    )


def _ck_empty(B, D, cap, dtype, like=None, device="cpu"):
    """Checkpoint outputs ``(ck_t, ck_tn, ck_y, ck_jump, ck_n)``: uninitialised like ``like``
    (fake impls), else zero-filled on ``device`` so that slots past a trajectory's last step hold
    defined values and the op's outputs are deterministic (opcheck compares them)."""
    mk = (
        (lambda *s, dtype: like.new_empty(s, dtype=dtype))
        if like is not None
        else (lambda *s, dtype: torch.zeros(s, dtype=dtype, device=device))
    )
    return (
        mk(B, cap, dtype=torch.float64),
        mk(B, cap, dtype=torch.float64),
        mk(B, cap, D, dtype=dtype),
        mk(B, cap, dtype=torch.uint8),
        mk(B, dtype=torch.int64),
    )


def _contig(*ts):
    return [t.contiguous() for t in ts]


def _check(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, max_steps):
    """Shapes, dtypes and devices of the op's arguments (ValueError naming the argument)."""

    def need(cond, msg):
        if not cond:
            raise ValueError(f"hnode_fast::cpu_solve: {msg}")

    need(y0.dim() == 2 and y0.dtype in (torch.float32, torch.float64), "y0 must be (B, D) float32/float64")
    B, D = y0.shape
    for name, x in (
        ("ints", ints),
        ("params", params),
        ("y0", y0),
        ("out_t", out_t),
        ("stops", stops),
        ("ev_t", ev_t),
        ("ev_s", ev_s),
        ("ev_a", ev_a),
        ("in_t", in_t),
        ("in_v", in_v),
    ):
        need(x.is_cpu, f"{name} must be a CPU tensor")  # (x.device.type costs ~1 us per tensor)
    need(ints.dim() == 1 and ints.dtype == torch.int32 and ints.numel() >= 12, "ints must be a FieldSpec int32 table")
    need(params.dim() == 1 and params.dtype == y0.dtype, "params must be 1-D with y0's dtype")
    hdr = ints[:12].tolist()  # one read of the header (each int(ints[i]) is a torch op)
    need(hdr[H_D] == D and hdr[H_P] == params.numel(), "ints/params do not match y0 (D) or each other (P)")
    need(out_t.dim() == 2 and out_t.shape[0] == B and out_t.shape[1] >= 1 and out_t.dtype == torch.float64, "out_t must be float64 (B, T)")
    need(stops.dim() == 2 and stops.shape[0] == B and stops.dtype == torch.float64, "stops must be float64 (B, S)")
    need(ev_t.dim() == 2 and ev_t.shape[0] == B and ev_t.dtype == torch.float64, "ev_t must be float64 (B, E)")
    need(ev_s.shape == ev_t.shape and ev_s.dtype == torch.int32, "ev_s must be int32 with ev_t's shape")
    need(ev_a.shape == ev_t.shape and ev_a.dtype == y0.dtype, "ev_a must have ev_t's shape and y0's dtype")
    if ev_s.numel():
        need(bool(((ev_s >= 0) & (ev_s < D)).all()), "ev_s must hold state indices in [0, D)")
    K = hdr[H_K]
    need(in_t.dim() == 2 and in_t.shape[0] == B and in_t.dtype == torch.float64, "in_t must be float64 (B, J)")
    need(
        in_v.dim() == 3 and in_v.shape[:2] == in_t.shape and in_v.dtype == y0.dtype and (in_v.shape[2] == K or in_t.shape[1] == 0),
        "in_v must be (B, J, K) with y0's dtype",
    )
    need(max_steps >= 1, "max_steps must be >= 1")


def _raise_failed_checks(checks: Optional[Tensor], check_msgs: str) -> None:
    """``checks``: bool ``(N,)`` computed in the (compiled) graph by ``hf.odeint``'s validation;
    ``check_msgs``: their N messages, one per line. Raises ``ValueError`` with the first failed one."""
    if checks is None or checks.numel() == 0:
        return
    bad = torch.nonzero(~checks.reshape(-1).to(torch.bool))
    if bad.numel():
        msgs = check_msgs.split("\n")
        i = int(bad[0, 0])
        raise ValueError(msgs[i] if i < len(msgs) else "hf.odeint: invalid input")


def _cpu_solve_impl(
    ints,
    params,
    y0,
    out_t,
    stops,
    ev_t,
    ev_s,
    ev_a,
    in_t,
    in_v,
    rtol,
    atol,
    max_steps,
    n_threads,
    ckpt_cap=0,
    checks=None,
    check_msgs="",
    with_ck=True,
    slopes=None,
):
    """The op's body: ``(y, stats, ck_t, ck_tn, ck_y, ck_jump, ck_n)``; ``(y, stats)`` when
    ``with_ck`` is False (the no-gradient call, which skips the dispatcher). ``slopes``: an
    optional ``(T, B, D)`` tensor the dense-output interpolant's time derivatives at the outputs
    are written to (``Traj::out_dot``; for ``output_slopes``)."""
    _raise_failed_checks(checks, check_msgs)
    _check(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, max_steps)
    ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v = _contig(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v)
    B, D = y0.shape
    y = torch.empty(out_t.shape[1], B, D, dtype=y0.dtype)
    stats = torch.empty(B, 4, dtype=torch.int64)
    ck = _ck_empty(B, D, max(int(ckpt_cap), 0), y0.dtype) if with_ck or ckpt_cap > 0 else ()
    if B > 0:
        a = _args(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, n_threads)
        if ckpt_cap > 0:
            a.update(_ck_args(*ck))
        if slopes is not None:
            a["out_dot"] = slopes.data_ptr()
        _lib().cpu_solve(a, y0.dtype == torch.float64, y.data_ptr(), stats.data_ptr())
    return (y, stats) + ck


@torch.library.custom_op("hnode_fast::cpu_solve", mutates_args=())
def cpu_solve(
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
    return _cpu_solve_impl(
        ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, n_threads, ckpt_cap, checks, check_msgs
    )


@cpu_solve.register_fake
def _(
    ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, n_threads, ckpt_cap=0, checks=None, check_msgs=""
):
    B, D = y0.shape
    return (y0.new_empty(out_t.shape[1], B, D), y0.new_empty(B, 4, dtype=torch.int64)) + _ck_empty(
        B, D, max(int(ckpt_cap), 0), y0.dtype, like=y0
    )


def _cpu_solve_backward_impl(
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
    ck_t: Tensor,
    ck_tn: Tensor,
    ck_y: Tensor,
    ck_jump: Tensor,
    ck_n: Tensor,
) -> Tuple[Tensor, Tensor, Tensor]:
    """The body of the ``cpu_solve_backward`` op: ``(grad_params, grad_y0, grad_amounts)``."""
    _check(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, max_steps)
    if grad_y.shape != (out_t.shape[1],) + tuple(y0.shape) or grad_y.dtype != y0.dtype:
        raise ValueError("hnode_fast::cpu_solve_backward: grad_y must be (T, B, D) with y0's dtype")
    grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v = _contig(
        grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v
    )
    B, D = y0.shape
    gp = torch.zeros(params.shape, dtype=params.dtype)
    gy0 = torch.zeros(B, D, dtype=y0.dtype)
    gev = torch.zeros(ev_a.shape, dtype=y0.dtype)
    if B > 0:
        a = _args(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, n_threads)
        cap = ck_t.shape[1] if ck_t.dim() == 2 else 0
        if cap > 0:
            if not (
                ck_t.shape == ck_tn.shape == ck_jump.shape == (B, cap)
                and ck_y.shape == (B, cap, D)
                and ck_n.shape == (B,)
                and ck_t.dtype == ck_tn.dtype == torch.float64
                and ck_y.dtype == y0.dtype
                and ck_jump.dtype == torch.uint8
                and ck_n.dtype == torch.int64
            ):
                raise ValueError("hnode_fast::cpu_solve_backward: bad checkpoint tensors")
            if bool((ck_n > cap).any()):
                raise ValueError("hnode_fast::cpu_solve_backward: ck_n exceeds the checkpoint capacity")
            a.update(_ck_args(*_contig(ck_t, ck_tn, ck_y, ck_jump, ck_n)))
        _lib().cpu_solve_backward(a, y0.dtype == torch.float64, grad_y.data_ptr(), gp.data_ptr(), gy0.data_ptr(), gev.data_ptr())
    return gp, gy0, gev.to(ev_a.dtype)


# the op is the body itself (same signature; eager callers call _cpu_solve_backward_impl directly)
cpu_solve_backward = torch.library.custom_op("hnode_fast::cpu_solve_backward", _cpu_solve_backward_impl, mutates_args=())


@cpu_solve_backward.register_fake
def _(
    grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, n_threads, ck_t, ck_tn, ck_y, ck_jump, ck_n
):
    return params.new_empty(params.shape), y0.new_empty(y0.shape), ev_a.new_empty(ev_a.shape)


def _setup_context(ctx, inputs, output):
    """Saves the ten tensor inputs and the checkpoints (``output[2:]``) of ``cpu_solve``, and its
    scalars (rtol, atol, max_steps, n_threads); shared by the op and :class:`_Discrete`."""
    ctx.save_for_backward(*inputs[:10], *output[2:])
    ctx.scalars = tuple(inputs[10:14])


def _discrete_grads(ctx, grad_y, bwd):
    """``(grad_params, grad_y0, grad_amounts)`` from what :func:`_setup_context` saved;
    ``bwd``: the ``cpu_solve_backward`` op or its body."""
    saved = ctx.saved_tensors
    y0, out_t = saved[2], saved[3]
    if grad_y is None:
        grad_y = torch.zeros(out_t.shape[1], y0.shape[0], y0.shape[1], dtype=y0.dtype)
    return bwd(grad_y, *saved[:10], *ctx.scalars, *saved[10:])


def _backward(ctx, grad_y, *unused):
    gp, gy0, gev = _discrete_grads(ctx, grad_y, torch.ops.hnode_fast.cpu_solve_backward)
    return (None, gp, gy0, None, None, None, None, gev) + (None,) * 9


cpu_solve.register_autograd(_backward, setup_context=_setup_context)


def _cpu_solve_backsolve_impl(
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
    """Continuous adjoint: ``(grad_params (P,), grad_y0 (B, D), backward stats (B, 4))``.

    ``y_out``: the forward's outputs ``(T, B, D)``. The backward solve starts from ``y_out[-1]``
    (rows that are not finite, i.e. failed forwards, are re-solved to find where they stopped)
    and resets the state to ``y_out[j]`` at every earlier output time (re-anchoring, as
    torchdiffeq's ``odeint_adjoint``). Non-finite ``grad_y`` must already be replaced
    (``torch.nan_to_num``). ``grad_y0`` is NaN where the backward solve failed.
    """
    _check(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, max_steps)
    if grad_y.shape != (out_t.shape[1],) + tuple(y0.shape) or grad_y.dtype != y0.dtype:
        raise ValueError("hnode_fast::cpu_solve_backsolve: grad_y must be (T, B, D) with y0's dtype")
    if y_out.shape != grad_y.shape or y_out.dtype != y0.dtype:
        raise ValueError("hnode_fast::cpu_solve_backsolve: y_out must be (T, B, D) with y0's dtype")
    grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, y_out = _contig(
        grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, y_out
    )
    B, D = y0.shape
    gp = torch.zeros(params.shape, dtype=params.dtype)
    gy0 = torch.zeros(B, D, dtype=y0.dtype)
    bst = torch.zeros(B, 4, dtype=torch.int64)
    if B > 0:
        a = _args(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, n_threads)
        _lib().cpu_solve_backsolve(
            a, y0.dtype == torch.float64, grad_y.data_ptr(), y_out.data_ptr(), gp.data_ptr(), gy0.data_ptr(), bst.data_ptr()
        )
    return gp, gy0, bst


# the op is the body itself (same signature; eager callers call _cpu_solve_backsolve_impl directly)
cpu_solve_backsolve = torch.library.custom_op("hnode_fast::cpu_solve_backsolve", _cpu_solve_backsolve_impl, mutates_args=())


@cpu_solve_backsolve.register_fake
def _(grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, y_out, rtol, atol, max_steps, n_threads):
    return params.new_empty(params.shape), y0.new_empty(y0.shape), y0.new_empty(y0.shape[0], 4, dtype=torch.int64)


class _Discrete(torch.autograd.Function):
    """Eager twin of the ``cpu_solve`` op with its registered autograd (discrete adjoint): the
    same bodies (``_cpu_solve_impl`` with checkpoints, ``_cpu_solve_backward_impl``) called
    without the dispatcher and torch.library's autograd wrapper, which cost more than the
    kernels at small batch (batch 1, D=8: ~0.4 ms per forward+backward, measured). Under
    torch.compile ``solve`` uses the op, whose fake implementation the tracer needs."""

    @staticmethod
    def forward(ctx, *inputs):  # cpu_solve's first 14 arguments, then the checkpoint capacity
        outs = _cpu_solve_impl(*inputs)
        _setup_context(ctx, inputs, outs)
        ctx.mark_non_differentiable(outs[1])
        return outs[0], outs[1]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, _grad_st):
        gp, gy0, gev = _discrete_grads(ctx, grad_y, _cpu_solve_backward_impl)
        n = ctx.needs_input_grad
        return (None, gp if n[1] else None, gy0 if n[2] else None, None, None, None, None, gev if n[7] else None) + (None,) * 7


class _Backsolve(torch.autograd.Function):
    """Forward: ``cpu_solve`` without checkpoints; backward: ``cpu_solve_backsolve`` (the
    continuous adjoint of reference/backsolve.py). Gradients to ``params`` and ``y0`` only."""

    @staticmethod
    def forward(
        ctx, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, n_threads, checks=None, check_msgs=""
    ):
        fwd = torch.ops.hnode_fast.cpu_solve if torch.compiler.is_compiling() else _cpu_solve_impl  # eager: no dispatcher
        args = (ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, n_threads)
        y, st = fwd(*args, 0, checks, check_msgs)[:2]
        ctx.save_for_backward(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, y)
        ctx.scalars = (rtol, atol, max_steps, n_threads)
        ctx.mark_non_differentiable(st)
        return y, st

    @staticmethod
    def backward(ctx, grad_y, _grad_st):
        ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, y = ctx.saved_tensors
        grad_y = torch.nan_to_num(grad_y, nan=0.0)  # no output beyond a failure (as the reference)
        bwd = torch.ops.hnode_fast.cpu_solve_backsolve if torch.compiler.is_compiling() else _cpu_solve_backsolve_impl
        gp, gy0, bst = bwd(grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, y, *ctx.scalars)
        if not torch.compiler.is_compiling() and bool((bst[:, 3] != 0).any()):
            warnings.warn(
                "backsolve adjoint: the backward solve failed for some trajectories "
                f"(status {bst[:, 3].tolist()}); their gradients are NaN",
                RuntimeWarning,
            )
        return (None, gp if ctx.needs_input_grad[1] else None, gy0 if ctx.needs_input_grad[2] else None) + (None,) * 13


def output_slopes(prob) -> Tensor:
    """``(T, B, D)`` time derivatives of the dense-output interpolant at the output times
    (``Traj::out_dot`` of the core; row 0 zeros, NaN after a failure): a forward solve without
    gradients, making the same steps as ``solve``."""
    with torch.no_grad():
        spec = _spec_for(prob.func, None, prob.module_tensors)
        params = spec.params.detach().to(prob.y0.dtype)
        out_t, stops, ev_t, ev_s, ev_a, in_t, in_v = problem_tensors(prob, spec)
        y0 = prob.y0.detach()
        slopes = torch.empty(out_t.shape[1], *y0.shape, dtype=y0.dtype)
        args = (spec.ints, params, y0, out_t, stops, ev_t, ev_s, ev_a.detach(), in_t, in_v, prob.rtol, prob.atol, prob.max_steps, 0)
        _cpu_solve_impl(*args, with_ck=False, slopes=slopes)
    return slopes


def problem_tensors(prob, spec):
    """The op's tensor arguments for a validated :class:`~hnode_fast.solve.Problem`."""
    y0 = prob.y0
    B = y0.shape[0]
    dtype = y0.dtype
    out_t = prob.out_t.to(torch.float64).contiguous()
    stops = build_stops(out_t, prob.events, prob.inputs)
    if stops is None:
        stops = _nothing(B, torch.float64)
    if prob.events is not None:
        ev = prob.events
        ev_t = ev.times.to(torch.float64).contiguous()
        ev_s = ev.states.to(torch.int32).contiguous()
        ev_a = ev.amounts.to(dtype)
    else:
        ev_t = _nothing(B, torch.float64)
        ev_s = _nothing(B, torch.int32)
        ev_a = _nothing(B, dtype)
    if prob.inputs is not None:
        inp = prob.inputs
        if inp.values.requires_grad and torch.is_grad_enabled():
            raise NotImplementedError("backend='cpu' gives no gradient to inputs.values; use backend='reference'")
        in_t = inp.times.to(torch.float64).contiguous()
        in_v = inp.values.detach().to(dtype).contiguous()
    else:
        in_t = _nothing(B, torch.float64)
        in_v = _nothing(B, dtype, max(prob.func.n_inputs if prob.field_like else spec.n_inputs, 0))
    return out_t, stops, ev_t, ev_s, ev_a, in_t, in_v


_NOTHING: dict = {}


def _nothing(B: int, dtype: torch.dtype, K: Optional[int] = None) -> Tensor:
    """A zero-size CPU tensor ``(B, 0)`` (``(B, 0, K)`` with ``K``): no events, inputs or stops.

    Shared between calls (it holds no values, so nothing can be written to it; creating one is
    a few microseconds, several per call at batch 1). Under torch.compile a fresh one."""
    shape = (B, 0) if K is None else (B, 0, K)
    if torch.compiler.is_compiling():
        return torch.zeros(shape, dtype=dtype)
    t = _NOTHING.get((shape, dtype))
    if t is None:
        if len(_NOTHING) > 64:
            _NOTHING.clear()
        with torch.inference_mode(False):  # a normal tensor even if made under inference_mode
            t = _NOTHING[(shape, dtype)] = torch.zeros(shape, dtype=dtype)
    return t


def _structure_refs(field) -> List[Tensor]:
    """The tensors a field's :class:`SpecStructure` is built from (masks, term mask)."""
    refs: List[Tensor] = list(field.nn.masks) if field.nn is not None else []
    if field.mech is not None:
        refs.append(field.mech.term_mask)
    return refs


def _structure_for(field) -> SpecStructure:
    """The field's :class:`SpecStructure` built from its masks only (see ``spec_structure``),
    cached on the field while the masks and the term mask are the same tensors holding the same
    values (compared by value, so writes through ``.data``, which bump no version, are seen)."""
    refs = _structure_refs(field)
    ref = field.nn.layers[0].weight if field.nn is not None else (field.mech.params if field.mech is not None else None)
    cfg = (
        field.n_states,
        field.n_inputs,
        field.nn_uses_inputs,
        None if ref is None else (ref.dtype, ref.device),
        None if field.mech is None else (id(field.mech.terms), len(field.mech.terms)),
    )
    cache = field.__dict__.get("_hnode_structure_cache")
    if (
        cache is not None
        and cache[0] == cfg
        and len(cache[1]) == len(refs)
        and all(a is b for a, b in zip(cache[1], refs))
        and _same_values(cache[2], refs)
    ):
        return cache[3]
    with torch.inference_mode(False):  # cached: its index tensors may later be saved for backward
        st = spec_structure(field.mech, field.nn, field.n_states, field.n_inputs, field.nn_uses_inputs)
    object.__setattr__(field, "_hnode_structure_cache", (cfg, tuple(refs), _snapshot(refs), st))
    return st


def _snapshot(tensors: Sequence[Tensor]) -> Tuple[Tensor, ...]:
    """Detached copies of ``tensors`` (the values a cached result was built from)."""
    return tuple(t.detach().clone() for t in tensors)


def _same_values(snap: Sequence[Tensor], tensors: Sequence[Tensor], fused: Optional[bool] = None) -> bool:
    """``tensors`` hold the values of ``snap`` (same shapes, dtypes, devices; equal elementwise,
    NaN never equal, so a NaN parameter is never served from a cache).

    A by-value check: ``_version`` misses writes through ``.data`` (``p.data += 1`` does not bump
    ``p._version``), after which a version-keyed cache would silently solve the old field.
    ``fused`` (default: when any tensor is off the CPU) reduces all comparisons on the device and
    synchronises once instead of once per tensor."""
    if len(snap) != len(tensors):
        return False
    for a, b in zip(snap, tensors):
        if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
            return False
    if not snap:
        return True
    if fused is None:
        fused = any(b.device.type != "cpu" for b in tensors)
    if fused:
        return bool(torch.stack([(a == b.detach()).all() for a, b in zip(snap, tensors)]).all())
    same = _hostcheck.all_equal(snap, tensors)  # one call into _C for host float/int/bool tensors
    if same is not None:
        return same
    return all(torch.equal(a, b.detach()) for a, b in zip(snap, tensors))


def _assume_constant_result(fn):
    """``torch.compiler.assume_constant_result`` without importing torch._dynamo (and with it
    triton) when hnode_fast is imported: the decorator only sets this attribute. The fullgraph
    tests (tests/test_ecosystem.py) fail if a torch release changes that."""
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True
    return fn


@_assume_constant_result
def _traced_structure(field, versions) -> SpecStructure:
    # Run while torch.compile traces (on the real module); the result is a constant of the graph
    # (int tables, index tensors). ``versions`` (bumped by set_mask / set_term_mask) are read in the
    # traced code, so Dynamo guards on them and recompiles after a change through those methods;
    # the graph also checks that the masks still match (``structure_matches``) and the op raises if
    # they were changed some other way.
    return _structure_for(field)


def _structure_versions(field) -> Tuple[int, int]:
    return (
        getattr(field.nn, "_hnode_structure_version", 0) if field.nn is not None else 0,
        getattr(field.mech, "_hnode_structure_version", 0) if field.mech is not None else 0,
    )


_STRUCTURE_CHANGED = (
    "the field's masks or term mask changed after torch.compile traced this function (its sparsity "
    "structure is a constant of the compiled graph): call torch.compiler.reset() and compile again"
)


def _spec_for(field, checks: Optional[list] = None, module_tensors=None) -> FieldSpec:
    """The field's :class:`FieldSpec` (``field.compile()``), differentiable when a gradient is needed.

    Eager: the int tables are cached while the masks hold the same values (:func:`_structure_for`)
    and the parameter vector is gathered from the current values each call; with no gradient
    needed the whole spec is also cached while every parameter and buffer holds the same values. L0-gated networks
    (structure depends on which gates are exactly 0) are compiled afresh when a gradient is needed.
    ``module_tensors``: the field's ``(parameters, buffers)`` if the caller already listed them
    (``Problem.module_tensors``); listed here otherwise.

    Under ``torch.compile`` the structure (masks only) is a constant of the graph and only the
    gather is traced; a check that the masks are unchanged is appended to ``checks`` (raised by the
    op) or, if ``checks`` is None, evaluated here.
    """
    if torch.compiler.is_compiling():
        mlp = field.nn
        st = _traced_structure(field, _structure_versions(field))
        ok = structure_matches(st, field.mech, mlp)
        if checks is not None:
            checks.append((ok, _STRUCTURE_CHANGED))
        elif not bool(ok):
            raise RuntimeError(_STRUCTURE_CHANGED)
        return FieldSpec(st.ints, gather_params(st, field.mech, mlp))
    ps, bs = module_tensors if module_tensors is not None else _hostcheck.module_tensors(field)
    tensors = ps + bs
    if torch.is_grad_enabled() and any(p.requires_grad for p in tensors):
        mlp = field.nn
        if mlp is not None and mlp.gates is not None:
            return field.compile()
        st = _structure_for(field)
        return FieldSpec(st.ints, gather_params(st, field.mech, mlp))
    # no gradient: reuse the last spec while the field has the same parameter and buffer tensors
    # holding the same values (compared by value: see _same_values)
    cache = field.__dict__.get("_hnode_cpu_spec_cache")
    if (
        cache is not None
        and len(cache[1]) == len(tensors)
        and all(a is b for a, b in zip(cache[1], tensors))
        and _same_values(cache[2], tensors)
    ):
        return cache[0]
    mlp = field.nn
    if mlp is not None and mlp.gates is not None:
        spec = field.compile().detach()
    else:
        st = _structure_for(field)
        spec = FieldSpec(st.ints, gather_params(st, field.mech, mlp).detach())
    object.__setattr__(field, "_hnode_cpu_spec_cache", (spec, tuple(tensors), _snapshot(tensors)))
    return spec


def solve(prob):
    """``Problem -> (y (T, B, D), Stats)`` on the CPU kernels.

    Under ``torch.compile`` the checks ``hf.odeint`` could not evaluate while tracing
    (``prob.checks``: NaN/inf in y0, t or parameters, t not increasing, masks changed ...) are
    computed in the graph and passed to the op, which raises ``ValueError`` before solving.
    """
    if not prob.field_like:
        raise NotImplementedError("backend='cpu' solves hf.HybridField funcs only; use backend='reference' for plain callables")
    if prob.step_mode != "per_sample":
        raise NotImplementedError("backend='cpu' supports step_mode='per_sample' only; use backend='reference' for step_mode='shared'")
    if prob.adjoint not in ("discrete", "backsolve"):
        raise NotImplementedError(f"backend='cpu' has no adjoint={prob.adjoint!r}")
    if prob.adjoint == "backsolve" and prob.events is not None and prob.events.amounts.requires_grad:
        raise NotImplementedError("adjoint='backsolve' gives no gradient to events.amounts; use adjoint='discrete'")
    if prob.y0.device.type != "cpu":
        raise ValueError(f"backend='cpu' needs CPU tensors, y0 is on {prob.y0.device}")
    _lib()
    compiling = torch.compiler.is_compiling()
    checks = prob.checks if compiling else None
    spec = _spec_for(prob.func, checks, prob.module_tensors)
    params = spec.params
    if params.dtype != prob.y0.dtype:
        params = params.to(prob.y0.dtype)
    out_t, stops, ev_t, ev_s, ev_a, in_t, in_v = problem_tensors(prob, spec)
    args = (
        spec.ints,
        params,
        prob.y0,
        out_t,
        stops,
        ev_t,
        ev_s,
        ev_a,
        in_t,
        in_v,
        prob.rtol,
        prob.atol,
        prob.max_steps,
        0 if compiling else torch.get_num_threads(),
    )  # 0: the op reads it at run time
    chk, msgs = None, ""
    if checks:
        chk = torch.stack([c.reshape(()).to(device="cpu", dtype=torch.bool) for c, _ in checks])
        msgs = "\n".join(m.replace("\n", " ") for _, m in checks)
    needs_graph = torch.is_grad_enabled() and (params.requires_grad or prob.y0.requires_grad or ev_a.requires_grad)
    if prob.adjoint == "backsolve" and needs_graph:
        # continuous adjoint: no checkpoints, O(1) memory in the number of steps
        y, st = _Backsolve.apply(*args, chk, msgs)
    elif needs_graph or compiling:
        # store up to ``cap`` accepted steps per trajectory for the backward (those that do
        # not fit are re-solved there); at most ~64 MiB of checkpoints
        B, D = prob.y0.shape
        per = B * (D * prob.y0.element_size() + 17)
        cap = int(min(prob.max_steps, 128, max(8, (64 << 20) // max(per, 1))))
        if compiling:
            y, st = torch.ops.hnode_fast.cpu_solve(*args, cap, chk, msgs)[:2]
        else:
            y, st = _Discrete.apply(*args, cap)
    else:  # nothing to differentiate and not tracing: skip the dispatcher (tens of us per call)
        y, st = _cpu_solve_impl(*args, with_ck=False)[:2]
    n_steps, n_rejected, nfe, status = st.unbind(1)
    stats = Stats(n_steps=n_steps, n_rejected=n_rejected, nfe=nfe, status=status, step_times=None)
    return y, stats


def eval_field(spec, z: Tensor, u=None, repeat: int = 1, n_threads: int = 1) -> Tensor:
    """``dz/dt`` of a FieldSpec by the compiled kernel (no autograd): ``(B, D) -> (B, D)``."""
    lib = _lib()
    z = z.contiguous()
    B, D = z.shape
    params = spec.params.detach().to(z.dtype).contiguous()
    K = spec.n_inputs
    u = (u if u is not None else z.new_zeros(B, K)).to(z.dtype).contiguous() if K > 0 else z.new_zeros(1)
    out = torch.empty_like(z)
    lib.cpu_eval_field(
        z.dtype == torch.float64,
        spec.ints.data_ptr(),
        spec.ints.numel(),
        params.data_ptr(),
        params.numel(),
        z.data_ptr(),
        u.data_ptr(),
        B,
        D,
        out.data_ptr(),
        n_threads,
        repeat,
    )
    return out


def vjp_field(spec, z: Tensor, a: Tensor, u=None):
    """``(J_z^T a (B, D), sum_b J_params^T a (P,))`` by the compiled kernel."""
    lib = _lib()
    z, a = z.contiguous(), a.to(z.dtype).contiguous()
    B, D = z.shape
    params = spec.params.detach().to(z.dtype).contiguous()
    K = spec.n_inputs
    u = (u if u is not None else z.new_zeros(B, K)).to(z.dtype).contiguous() if K > 0 else z.new_zeros(1)
    gz = torch.zeros_like(z)
    gp = torch.zeros_like(params)
    lib.cpu_vjp_field(
        z.dtype == torch.float64,
        spec.ints.data_ptr(),
        spec.ints.numel(),
        params.data_ptr(),
        params.numel(),
        z.data_ptr(),
        u.data_ptr(),
        a.data_ptr(),
        B,
        D,
        gz.data_ptr(),
        gp.data_ptr(),
    )
    return gz, gp
