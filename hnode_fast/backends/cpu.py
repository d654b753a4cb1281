"""The CPU backend: the compiled whole-trajectory DP5 solver (``csrc/include/hnode/solve.h``)
run over trajectories in parallel (OpenMP), with its discrete and continuous adjoints.

The CPU implementations of the ops of :mod:`.ops` (``hnode_fast::solve``, ``::solve_backward``,
``::backsolve``; schemas, fakes and autograd there), registered for ``"cpu"`` at import, and the
backend's entry point :func:`solve` (``Problem -> (y, Stats)``). The discrete adjoint re-runs
the (deterministic) forward for trajectories whose accepted steps did not fit the checkpoints,
then does the reverse pass (recomputed stages, VJP through the stage combination, the dense
outputs and every stage).

``solve`` under ``torch.compile`` traces into one graph with the op (docs/compile.md): the
FieldSpec structure is a graph constant (:mod:`.specs`), its parameters are gathered by traced ops.
Eager calls skip the dispatcher (:class:`_Discrete`, :class:`_Backsolve` call the same bodies).

Gradients reach the field's parameters through ``field.compile()`` (differentiable), ``y0``
and (discrete adjoint only) ``events.amounts``. What the backend supports is declared once in
:data:`.caps.CAPS` (``"cpu"``).
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor

from .. import _native
from ..fields.spec import H_D, H_K, H_P
from ..types import Stats
from . import args as A
from . import ops
from .caps import CAPS
from .specs import spec_for
from .threads import op_threads

_OP = "hnode_fast::solve"


def _lib():
    lib = _native._C
    if lib is None or not hasattr(lib, "cpu_solve"):
        raise NotImplementedError("backend='cpu' needs the compiled extension with the CPU solver; see hf.build_info()")
    return lib


def is_available() -> bool:
    return _native._C is not None and hasattr(_native._C, "cpu_solve")


def supports(prob) -> bool:
    """Whether ``backend="auto"`` may use this backend for ``prob``."""
    return CAPS["cpu"].admits(prob)


def _solve_impl(
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
    """``hnode_fast::solve`` on the CPU: ``(y, stats, ck_t, ck_tn, ck_y, ck_jump, ck_n)``; ``(y,
    stats)`` when ``with_ck`` is False (the no-gradient call, which skips the dispatcher).
    ``slopes``: an optional ``(T, B, D)`` tensor the dense-output interpolant's time derivatives at
    the outputs are written to (``Traj::out_dot``; for :func:`output_slopes`)."""
    A.raise_failed_checks(checks, check_msgs)
    A.check(_OP, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, max_steps)
    ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v = A.contig(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v)
    B, D = y0.shape
    y = torch.empty(out_t.shape[1], B, D, dtype=y0.dtype)
    stats = torch.empty(B, 4, dtype=torch.int64)
    ck = A.ck_empty(B, D, max(int(ckpt_cap), 0), y0.dtype) if with_ck or ckpt_cap > 0 else ()
    if B > 0:
        a = A.pack(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, n_threads)
        if ckpt_cap > 0:
            a.update(A.pack_ck(*ck))
        if slopes is not None:
            a["out_dot"] = slopes.data_ptr()
        _lib().cpu_solve(a, y0.dtype == torch.float64, y.data_ptr(), stats.data_ptr())
    return (y, stats) + ck


def _solve_kernel(*args):
    """The registered CPU kernel: the op's 17 arguments (``_solve_impl`` with checkpoints)."""
    return _solve_impl(*args)


def _solve_backward_impl(
    grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, n_threads, stats, *ck
):
    """``hnode_fast::solve_backward`` on the CPU: ``(grad_params, grad_y0, grad_amounts)``
    (``stats`` unused: the CPU kernel re-solves any trajectory whose steps were not stored)."""
    op = "hnode_fast::solve_backward"
    A.check(op, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, max_steps)
    A.check_grad_y(op, grad_y, y0, out_t)
    grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v = A.contig(
        grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v
    )
    B, D = y0.shape
    gp = torch.zeros(params.shape, dtype=params.dtype)
    gy0 = torch.zeros(B, D, dtype=y0.dtype)
    gev = torch.zeros(ev_a.shape, dtype=y0.dtype)
    if B > 0:
        a = A.pack(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, n_threads)
        if A.check_ckpts(op, y0, *ck) > 0:
            a.update(A.pack_ck(*A.contig(*ck)))
        _lib().cpu_solve_backward(a, y0.dtype == torch.float64, grad_y.data_ptr(), gp.data_ptr(), gy0.data_ptr(), gev.data_ptr())
    return gp, gy0, gev.to(ev_a.dtype)


def _backsolve_impl(grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, y_out, rtol, atol, max_steps, n_threads):
    """``hnode_fast::backsolve`` on the CPU: ``(grad_params (P,), grad_y0 (B, D), backward stats
    (B, 4))``. Rows of ``y_out[-1]`` that are not finite (failed forwards) are re-solved to find
    where they stopped. Non-finite ``grad_y`` must already be replaced (``torch.nan_to_num``).
    ``grad_y0`` is NaN where the backward solve failed."""
    op = "hnode_fast::backsolve"
    A.check(op, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, max_steps)
    A.check_grad_y(op, grad_y, y0, out_t)
    A.check_grad_y(op, y_out, y0, out_t, "y_out")
    grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, y_out = A.contig(
        grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, y_out
    )
    B, D = y0.shape
    gp = torch.zeros(params.shape, dtype=params.dtype)
    gy0 = torch.zeros(B, D, dtype=y0.dtype)
    bst = torch.zeros(B, 4, dtype=torch.int64)
    if B > 0:
        a = A.pack(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, n_threads)
        _lib().cpu_solve_backsolve(
            a, y0.dtype == torch.float64, grad_y.data_ptr(), y_out.data_ptr(), gp.data_ptr(), gy0.data_ptr(), bst.data_ptr()
        )
    return gp, gy0, bst


ops.solve.register_kernel("cpu")(_solve_kernel)
ops.solve_backward.register_kernel("cpu")(_solve_backward_impl)
ops.backsolve.register_kernel("cpu")(_backsolve_impl)


class _Discrete(torch.autograd.Function):
    """Eager twin of ``hnode_fast::solve`` with its registered autograd (discrete adjoint): the
    same CPU bodies called without the dispatcher and torch.library's autograd wrapper, which
    cost more than the kernels at small batch (batch 1, D=8: ~0.4 ms per forward+backward,
    measured). Under torch.compile :func:`solve` uses the op, whose fake the tracer needs."""

    @staticmethod
    def forward(ctx, *inputs):  # solve's first 14 arguments, then the checkpoint capacity
        outs = _solve_impl(*inputs)
        ops.setup_context(ctx, inputs, outs)
        ctx.mark_non_differentiable(outs[1])
        return outs[0], outs[1]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, _grad_st):
        gp, gy0, gev = ops.discrete_grads(ctx, grad_y, _solve_backward_impl)
        n = ctx.needs_input_grad
        return (None, gp if n[1] else None, gy0 if n[2] else None, None, None, None, None, gev if n[7] else None) + (None,) * 7


class _Backsolve(torch.autograd.Function):
    """Forward: ``hnode_fast::solve`` without checkpoints; backward: ``hnode_fast::backsolve``
    (the continuous adjoint of reference/backsolve.py). Gradients to ``params`` and ``y0`` only."""

    @staticmethod
    def forward(
        ctx, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, n_threads, checks=None, check_msgs=""
    ):
        fwd = torch.ops.hnode_fast.solve if torch.compiler.is_compiling() else _solve_impl  # eager: no dispatcher
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
        bwd = torch.ops.hnode_fast.backsolve if torch.compiler.is_compiling() else _backsolve_impl
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
        spec = spec_for(prob.func, None, prob.module_tensors)
        params = spec.params.detach().to(prob.y0.dtype)
        out_t, stops, ev_t, ev_s, ev_a, in_t, in_v = A.problem_tensors(prob, spec)
        y0 = prob.y0.detach()
        slopes = torch.empty(out_t.shape[1], *y0.shape, dtype=y0.dtype)
        args = (spec.ints, params, y0, out_t, stops, ev_t, ev_s, ev_a.detach(), in_t, in_v, prob.rtol, prob.atol, prob.max_steps, 0)
        _solve_impl(*args, with_ck=False, slopes=slopes)
    return slopes


def solve(prob):
    """``Problem -> (y (T, B, D), Stats)`` on the CPU kernels.

    Under ``torch.compile`` the checks ``hf.odeint`` could not evaluate while tracing
    (``prob.checks``: NaN/inf in y0, t or parameters, t not increasing, masks changed ...) are
    computed in the graph and passed to the op, which raises ``ValueError`` before solving.
    """
    CAPS["cpu"].require(prob)
    _lib()
    compiling = torch.compiler.is_compiling()
    checks = prob.checks if compiling else None
    args = A.solve_args(prob, checks, "cpu", op_threads)  # the op resolves it against torch's threads
    params, ev_a = args[1], args[7]
    chk, msgs = A.stack_checks(checks)
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
            y, st = torch.ops.hnode_fast.solve(*args, cap, chk, msgs)[:2]
        else:
            y, st = _Discrete.apply(*args, cap)
    else:  # nothing to differentiate and not tracing: skip the dispatcher (tens of us per call)
        y, st = _solve_impl(*args, with_ck=False)[:2]
    n_steps, n_rejected, nfe, status = st.unbind(1)
    stats = Stats(n_steps=n_steps, n_rejected=n_rejected, nfe=nfe, status=status, step_times=None)
    return y, stats


def _field_args(op: str, ints: Tensor, params: Tensor, z: Tensor, u: Optional[Tensor]):
    """Checked contiguous ``(ints, params, z, u)`` of the field ops (``u``: zeros ``(B, K)`` when
    None, a 1-element dummy when the field has no inputs)."""
    if not (z.dim() == 2 and z.dtype in (torch.float32, torch.float64) and z.is_cpu):
        raise ValueError(f"{op}: z must be a (B, D) float32/float64 CPU tensor")
    if not (ints.is_cpu and ints.dim() == 1 and ints.dtype == torch.int32 and ints.numel() >= 12):
        raise ValueError(f"{op}: ints must be a FieldSpec int32 CPU table")
    hdr = ints[:12].tolist()
    B, D = z.shape
    if not (params.dim() == 1 and params.dtype == z.dtype and params.is_cpu and hdr[H_D] == D and hdr[H_P] == params.numel()):
        raise ValueError(f"{op}: params must be the FieldSpec's (P,) vector with z's dtype, and z (B, D) its D states")
    K = hdr[H_K]
    if K > 0:
        u = z.new_zeros(B, K) if u is None else u
        if not (u.shape == (B, K) and u.dtype == z.dtype and u.is_cpu):
            raise ValueError(f"{op}: u must be (B, K={K}) with z's dtype")
    else:
        u = z.new_zeros(1)
    return ints.contiguous(), params.contiguous(), z.contiguous(), u.contiguous()


@ops.eval_field.register_kernel("cpu")
def _eval_field_impl(ints, params, z, u=None, n_threads=1, repeat=1):
    ints, params, z, u = _field_args("hnode_fast::eval_field", ints, params, z, u)
    B, D = z.shape
    out = torch.empty_like(z)
    if B > 0:
        _lib().cpu_eval_field(
            z.dtype == torch.float64, ints.data_ptr(), ints.numel(), params.data_ptr(), params.numel(),
            z.data_ptr(), u.data_ptr(), B, D, out.data_ptr(), int(n_threads), int(repeat),
        )  # fmt: skip
    return out


@ops.vjp_field.register_kernel("cpu")
def _vjp_field_impl(ints, params, z, u, a):
    op = "hnode_fast::vjp_field"
    ints, params, z, u = _field_args(op, ints, params, z, u)
    if a.shape != z.shape or a.dtype != z.dtype or not a.is_cpu:
        raise ValueError(f"{op}: a must have z's shape and dtype")
    a = a.contiguous()
    B, D = z.shape
    gz = torch.zeros_like(z)
    gp = torch.zeros_like(params)
    if B > 0:
        _lib().cpu_vjp_field(
            z.dtype == torch.float64, ints.data_ptr(), ints.numel(), params.data_ptr(), params.numel(),
            z.data_ptr(), u.data_ptr(), a.data_ptr(), B, D, gz.data_ptr(), gp.data_ptr(),
        )  # fmt: skip
    return gz, gp


def eval_field(spec, z: Tensor, u=None, repeat: int = 1, n_threads: int = 1) -> Tensor:
    """``dz/dt`` of a FieldSpec by the compiled kernel: ``(B, D) -> (B, D)`` (the op
    ``hnode_fast::eval_field``: differentiable w.r.t. ``z`` and ``spec.params``)."""
    return torch.ops.hnode_fast.eval_field(spec.ints, spec.params.to(z.dtype), z, None if u is None else u.to(z.dtype), n_threads, repeat)


def vjp_field(spec, z: Tensor, a: Tensor, u=None):
    """``(J_z^T a (B, D), sum_b J_params^T a (P,))`` by the compiled kernel (``hnode_fast::vjp_field``)."""
    params = spec.params.detach().to(z.dtype)
    return torch.ops.hnode_fast.vjp_field(spec.ints, params, z, None if u is None else u.to(z.dtype), a.to(z.dtype))
