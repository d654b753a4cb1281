"""``backend="triton", adjoint="backsolve"``: the continuous adjoint with the Triton kernels.

Same algorithm as :mod:`hnode_fast.reference.backsolve` (O(1) memory, approximate gradient):

* forward: the Triton adaptive loop (:func:`.solver.integrate`) without storing a graph;
* backward: integrate in reversed time ``tau = -t`` the augmented system::

      dy/dtau = -f(y),    da/dtau = a^T df/dy,    dg/dtau = a^T df/dtheta

  from ``(y(t_end), dL/dy(t_end))`` to ``t0`` with the reference engine's adaptive DP5
  (:func:`hnode_fast.reference.engine.integrate`: per-sample steps, error control on ``(y, a)``,
  stops at earlier output times (``a += dL/dy(t_j)``), doses (``y -= amount``) and input
  switches, inputs read as left limits; at output times the state is reset to the forward
  output, as torchdiffeq's ``odeint_adjoint``). ``g`` is the same quadrature as the reference's
  (``sum_i h b_i a_i^T df/dtheta(y_i)`` over the stages of each accepted step), left out of the
  error norm.

Only the kernels differ from the reference: every evaluation of the augmented right-hand side is
one Triton field launch (``f(y)``) plus one field-VJP launch (``a^T df/dy``); the parameter
quadrature is one more field-VJP launch per accepted step over the 5 stages with ``b_i != 0``
stacked along the batch (``5 B`` rows, cotangents ``h b_i a_i``, reduced over the batch by the
kernel's atomics into gradients of the plan tensors). No autograd graph of the network is built;
the plan-tensor gradients reach the module's parameters through ``build_plan``'s differentiable
construction (the plan tensors are inputs of the autograd Function). Dose amounts get no
gradient (like the reference).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, List

import torch

from ...reference import dopri5 as dp
from ...reference.engine import integrate as ref_integrate
from ...reference.problem import dose_delta
from . import ops
from .solver import integrate as triton_integrate

_STAGES = [i for i in range(dp.N_STAGES) if dp.B[i] != 0.0]


class TritonBacksolveFunction(torch.autograd.Function):
    """``(prob, plan, allow_tf32, sync_every, holder, y0, *plan.tensors) -> y (T, B, D)``."""

    @staticmethod
    def forward(ctx, prob, plan, allow_tf32, sync_every, holder, y0, *tensors):
        fplan = dataclasses.replace(plan, tensors=[t.detach() for t in tensors])
        with torch.no_grad():
            out, yT, stats = triton_integrate(dataclasses.replace(prob, y0=y0.detach()), fplan, allow_tf32, sync_every)
        holder.append(stats)
        ctx.prob, ctx.plan, ctx.allow_tf32 = prob, fplan, allow_tf32
        ctx.save_for_backward(yT, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        yT, fwd_out = ctx.saved_tensors
        prob, plan, allow_tf32 = ctx.prob, ctx.plan, ctx.allow_tf32
        n_t = len(plan.tensors)
        want = [bool(x) for x in ctx.needs_input_grad[6 : 6 + n_t]]
        B, D = yT.shape
        dtype = yT.dtype
        out_t = prob.out_t
        T = out_t.shape[1]
        grad_out = torch.nan_to_num(grad_out, nan=0.0)  # no output beyond a failure
        if T == 1:
            return (None,) * 5 + (grad_out[0],) + (None,) * n_t
        inputs = prob.inputs
        need_params = any(want)
        g_acc = [torch.zeros_like(x) for x in plan.tensors]

        def u_left(tau_seg):  # inputs at the step start in reversed time, i.e. u(t-)
            return inputs.at(-tau_seg, left=True).to(dtype) if inputs is not None else None

        def aug(tau, Z, tau_seg):
            y, a = Z[:, :D], Z[:, D:]
            u = u_left(tau_seg)
            f = ops.field_forward(plan, y, u, None, allow_tf32)
            vj, _ = ops.field_backward(plan, y, u, a, None, allow_tf32)
            return torch.cat([-f, vj], dim=1)

        def on_accept(accept, tau, h, Ys, K):
            if not need_params or not bool(accept.any()):
                return
            acc2 = accept[:, None]
            zero = torch.zeros((), dtype=dtype, device=yT.device)
            ys, cots = [], []
            for i in _STAGES:
                w = (h * dp.B[i]).to(dtype)[:, None]
                ys.append(torch.where(acc2, Ys[i][:, :D], zero))  # masked rows: finite, zero cotangent
                cots.append(torch.where(acc2, Ys[i][:, D:] * w, zero))
            u = u_left(tau)
            if u is not None:
                u = u.repeat(len(_STAGES), 1)
            _, grads = ops.field_backward(plan, torch.cat(ys), u, torch.cat(cots), None, allow_tf32)
            for g, gi in zip(g_acc, grads):
                g.add_(gi)

        # breakpoints in reversed time: earlier outputs, doses, input switches
        parts = [-out_t[:, :-1]]
        if prob.events is not None:
            et = prob.events.times.to(out_t.device)
            parts.append(torch.where(torch.isfinite(et) & (et < out_t[:, -1:]), -et, torch.full_like(et, float("inf"))))
        if inputs is not None:
            it = inputs.times.to(out_t.device)
            parts.append(torch.where(torch.isfinite(it), -it, torch.full_like(it, float("inf"))))
        stops = torch.sort(torch.cat(parts, dim=1), dim=1).values

        def jump(Z, tau, hit):
            y, a = Z[:, :D], Z[:, D:]
            if prob.events is not None:
                y = y + dose_delta(prob.events, -tau, hit, y.shape, y.dtype, sign=-1.0)
            sel = (-out_t[:, :-1] == tau[:, None]) & hit[:, None]
            if bool(sel.any()):
                bb, jj = torch.nonzero(sel, as_tuple=True)
                a = a.index_put((bb,), grad_out[jj, bb], accumulate=True)
                anchor = fwd_out[jj, bb]  # re-anchor to the forward output (finite rows), as the reference
                ok = torch.isfinite(anchor).all(dim=1)
                y = y.index_put((bb[ok],), anchor[ok])
            return torch.cat([y, a], dim=1)

        Z0 = torch.cat([yT, grad_out[-1]], dim=1)
        tau_grid = torch.stack([-out_t[:, -1], -out_t[:, 0]], dim=1)
        with torch.no_grad():
            zout, _, st = ref_integrate(aug, Z0, tau_grid, prob.rtol, prob.atol, "per_sample", prob.max_steps, stops, jump, on_accept)
        if bool((st.status != 0).any()):
            warnings.warn(
                "backsolve adjoint: the backward solve failed for some trajectories "
                f"(status {st.status.tolist()}); their gradients are NaN",
                RuntimeWarning,
            )
        grad_y0 = zout[-1][:, D:] + grad_out[0]
        grads = [g if w else None for g, w in zip(g_acc, want)]
        return (None,) * 5 + (grad_y0,) + tuple(grads)


def solve_backsolve(prob, plan, allow_tf32: bool = False, sync_every: int = 8):
    """``Problem -> (y (T, B, D), Stats)``; gradients by the continuous adjoint (see the module)."""
    holder: List[Any] = []
    y = TritonBacksolveFunction.apply(prob, plan, bool(allow_tf32), int(sync_every), holder, prob.y0, *plan.tensors)
    return y, holder[0]
