"""Continuous (backsolve) adjoint for the reference solver: O(1) memory, approximate.

Forward: solve without storing the graph. Backward: integrate, in reversed time
``tau = -t``, the augmented system::

    dy/dtau = -f(y),    da/dtau = a^T df/dy,    dg/dtau = a^T df/dtheta

from ``tau = -t_end`` (``y(t_end)``, ``a = dL/dy(t_end)``) to ``tau = -t0`` with the same
adaptive DP5 (error control on ``(y, a)``; ``g`` is integrated by the same quadrature and
left out of the error norm). At every earlier output time ``a += dL/dy(t_j)`` and ``y`` is reset
to the forward solution stored there (torchdiffeq's ``odeint_adjoint`` does the same: the
backward re-integration of ``y`` is unstable over long spans); at every dose ``y -= amount``.
The gradient is that of the exact ODE solution, approximated to the solver tolerance: it is NOT
the exact gradient of the computed forward solution (use ``adjoint="discrete"`` for that). Dose
amounts get no gradient here.
"""

from __future__ import annotations

import warnings

import torch

from . import dopri5 as dp
from .engine import integrate
from .problem import dose_delta


class BacksolveFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, prob, y0, *params):
        with torch.no_grad():
            out, yT, stats = integrate(
                prob.fun,
                y0,
                prob.out_t,
                prob.rtol,
                prob.atol,
                prob.step_mode,
                prob.max_steps,
                prob.stops,
                prob.jump,
                first_step=getattr(prob, "first_step", None),
            )
        prob.stats = stats
        ctx.prob = prob
        ctx.save_for_backward(yT, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        yT, fwd_out = ctx.saved_tensors
        prob = ctx.prob
        params = prob.params
        B, D = yT.shape
        T = prob.out_t.shape[1]
        grad_out = torch.nan_to_num(grad_out, nan=0.0)  # no output beyond a failure
        if T == 1:
            return (None, grad_out[0]) + tuple(None for _ in params)
        out_t = prob.out_t
        fun_left = prob.fun_left
        g_acc = [torch.zeros_like(p) for p in params]

        def aug(tau, Z, tau_seg):
            y, a = Z[:, :D], Z[:, D:]
            with torch.enable_grad():
                yv = y.detach().requires_grad_(True)
                fy = fun_left(-tau, yv, -tau_seg)
                # a func independent of y (and of any parameter) gives an output without grad
                (vj,) = torch.autograd.grad(fy, yv, a, allow_unused=True) if fy.requires_grad else (None,)
            if vj is None:
                vj = torch.zeros_like(a)
            return torch.cat([-fy.detach(), vj], dim=1)

        stage_ids = [i for i in range(dp.N_STAGES) if dp.B[i] != 0.0]

        def on_accept(accept, tau, h, Ys, K):
            if not params or not bool(accept.any()):
                return
            outs, cots = [], []
            with torch.enable_grad():
                for i in stage_ids:
                    w = (h * dp.B[i] * accept.to(h.dtype)).to(yT.dtype)[:, None]
                    yi = Ys[i][:, :D].detach()
                    o = fun_left(-(tau + dp.C[i] * h), yi, -tau)
                    if o.requires_grad:
                        outs.append(o)
                        cots.append(Ys[i][:, D:].detach() * w)
                if not outs:
                    return
                gs = torch.autograd.grad(outs, params, cots, allow_unused=True)
            for acc, gi in zip(g_acc, gs):
                if gi is not None:
                    acc.add_(gi)

        # breakpoints in reversed time: earlier outputs, doses, input switches
        parts = [-out_t[:, :-1]]
        if prob.events is not None:
            et = prob.events.times.to(out_t.device)
            parts.append(torch.where(torch.isfinite(et) & (et < out_t[:, -1:]), -et, torch.full_like(et, float("inf"))))
        if prob.inputs is not None:
            it = prob.inputs.times.to(out_t.device)
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
                # re-anchor (as torchdiffeq's odeint_adjoint): the state is reset to the stored
                # forward output (the pre-dose left limit at a dose time); rows whose forward
                # output is not finite (a failed forward) keep the backward state
                anchor = fwd_out[jj, bb]
                ok = torch.isfinite(anchor).all(dim=1)
                y = y.index_put((bb[ok],), anchor[ok])
            return torch.cat([y, a], dim=1)

        Z0 = torch.cat([yT, grad_out[-1]], dim=1)
        tau_grid = torch.stack([-out_t[:, -1], -out_t[:, 0]], dim=1)
        with torch.no_grad():
            zout, _, st = integrate(aug, Z0, tau_grid, prob.rtol, prob.atol, prob.step_mode, prob.max_steps, stops, jump, on_accept)
        if bool((st.status != 0).any()):
            warnings.warn(
                "backsolve adjoint: the backward solve failed for some trajectories "
                f"(status {st.status.tolist()}); their gradients are NaN",
                RuntimeWarning,
            )
        grad_y0 = zout[-1][:, D:] + grad_out[0]
        return (None, grad_y0) + tuple(g_acc)
