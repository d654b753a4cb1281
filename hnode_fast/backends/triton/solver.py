"""``backend="triton"``: the adaptive loop driven from Python, one fused step launch per iteration.

Same rules as :func:`hnode_fast.reference.engine.integrate` (per-sample steps, scipy RK45
controller, dense output, stops/doses, status codes) but without a host sync per step:

* the fused kernel returns ``y1``, ``k7`` (FSAL), the dense-output coefficients ``Q``, the
  error norm, the proposed ``h`` and the accept flag in one launch;
* dense output and dose jumps are masked tensor updates (no ``nonzero``);
* rows that need a (re)start after a stop wait, frozen, until the next periodic check
  (every ``sync_every`` iterations), which also asks "all finished?" — the only syncs.

Gradients (``adjoint="discrete"``): autograd through each step's fused op, whose backward
kernel recomputes the stages (exact gradient of the computed solution, like the reference).
``adjoint="backsolve"``: :mod:`.backsolve` (this loop under ``no_grad``, then the continuous
adjoint integrated backwards with the Triton field and field-VJP kernels). The backend entry
point that picks one of the two is :mod:`.backend` (this module imports neither).
"""

from __future__ import annotations

import os

import torch

from ...events import build_stops
from ...reference import dopri5 as dp
from ...types import NONFINITE_STREAK, Stats, Status
from . import ops

SYNC_EVERY = int(os.environ.get("HNODE_TRITON_SYNC_EVERY", "8"))


def _dose(events, t, hit, y):
    """Sync-free bolus jump: add the amounts of doses given exactly at ``t`` to rows ``hit``."""
    sel = (events.times.to(t.device) == t[:, None]) & hit[:, None]
    amt = torch.where(sel, events.amounts.to(device=y.device, dtype=y.dtype), torch.zeros((), dtype=y.dtype, device=y.device))
    return y + torch.zeros_like(y).scatter_add(1, events.states.to(y.device), amt)


def integrate(prob, plan, allow_tf32: bool = False, sync_every: int = SYNC_EVERY):
    """The adaptive loop: ``(out (T, B, D), y_final (B, D), Stats)``; ``y_final`` is the state
    where each row stopped (``y(t_end)`` for rows with status 0), as the reference engine's."""
    y0 = prob.y0
    B, N = y0.shape
    dev, dtype = y0.device, y0.dtype
    f64 = torch.float64
    inputs = prob.inputs
    rtol, atol = prob.rtol, prob.atol
    out_t = prob.out_t
    T = out_t.shape[1]
    norm = dp.rms_rows

    def u_at(t):
        return inputs.at(t).to(dtype) if inputs is not None else None

    def fun_nograd(t, y, t_seg):
        with torch.no_grad():
            return ops.field_forward(plan, y, u_at(t_seg), [x.detach() for x in plan.tensors], allow_tf32)

    t = out_t[:, 0].clone()
    t_end = out_t[:, -1].clone()
    stops = build_stops(out_t, prob.events, inputs)
    if stops is None:
        stops = torch.full((B, 1), float("inf"), dtype=f64, device=dev)
    stops = torch.cat([stops, torch.full((B, 1), float("inf"), dtype=f64, device=dev)], dim=1)
    out = torch.full((T, B, N), float("nan"), dtype=dtype, device=dev)
    out = torch.where((torch.arange(T, device=dev) == 0)[:, None, None], y0[None], out)

    y = y0
    if prob.events is not None:
        hit0 = (stops == t[:, None]).any(dim=1)
        y = _dose(prob.events, t, hit0, y)
    ptr = (stops <= t[:, None]).sum(dim=1)

    status = torch.zeros(B, dtype=torch.long, device=dev)
    n_steps = torch.zeros(B, dtype=torch.long, device=dev)
    n_rej = torch.zeros(B, dtype=torch.long, device=dev)
    nfe = torch.zeros(B, dtype=torch.long, device=dev)
    active = t < t_end
    need_init = active.clone()
    fresh = torch.ones(B, dtype=torch.bool, device=dev)
    rejected = torch.zeros(B, dtype=torch.bool, device=dev)
    bad_streak = torch.zeros(B, dtype=torch.long, device=dev)
    h_abs = torch.zeros(B, dtype=f64, device=dev)
    f = torch.zeros_like(y)
    step_times = []
    zero_d = torch.zeros((), dtype=dtype, device=dev)

    def seg_end_now():
        return torch.minimum(stops.gather(1, ptr[:, None]).squeeze(1), t_end)

    it = 0
    while True:
        if it % max(1, sync_every) == 0:
            if not bool(active.any()):  # the periodic "all finished?" check
                break
            if bool((need_init & active).any()):
                seg_end = seg_end_now()
                u0 = u_at(t)
                f_new = ops.field_eval(plan, y, u0, allow_tf32)
                h0 = dp.initial_step(fun_nograd, t, y, f_new, seg_end - t, rtol, atol, norm, t)
                ni = need_init & active
                f = torch.where(ni[:, None], f_new, f)
                h_abs = torch.where(ni, h0, h_abs)
                nfe = nfe + 2 * ni.long()
                finite0 = torch.isfinite(f_new.detach()).all(dim=1)
                fail0 = ni & ~finite0
                status = torch.where(fail0, torch.full_like(status, int(Status.NONFINITE)), status)
                active = active & ~fail0
                fresh = fresh | ni
                rejected = rejected & ~ni
                need_init = torch.zeros_like(need_init)
        it += 1
        go = active & ~need_init  # rows stepping in this iteration
        seg_end = seg_end_now()
        min_step = 10 * (torch.nextafter(t, torch.full_like(t, float("inf"))) - t).abs()
        h_abs = torch.where(fresh & go, torch.maximum(h_abs, min_step), h_abs)
        under = go & (h_abs < min_step)
        code = torch.where(bad_streak > 0, int(Status.NONFINITE), int(Status.DT_UNDERFLOW))
        status = torch.where(under, code, status)
        active = active & ~under
        go = go & ~under
        t_new = t + h_abs
        t_new = torch.where(t_new > seg_end, seg_end, t_new)
        h = torch.where(go, t_new - t, torch.zeros_like(t))
        y_new, k7, q, err, hn, acc_k, _ = ops.dp_step_apply(plan, y, f, u_at(t), h, rtol, atol, rejected, allow_tf32=allow_tf32)
        nfe = nfe + 6 * go.long()
        finite = torch.isfinite(err)
        accept = go & acc_k
        reject = go & ~accept
        h_abs = torch.where(go, hn, h_abs)
        bad_streak = torch.where(go & ~finite, bad_streak + 1, torch.where(go, 0, bad_streak))

        # dense output for requested times in (t, t_new] (masked, no sync)
        sel = accept[:, None] & (out_t > t[:, None]) & (out_t <= t_new[:, None])  # (B, T)
        x = torch.where(sel, (out_t - t[:, None]) / torch.where(h > 0, h, 1.0)[:, None], 0.0).t().to(dtype)
        x = x[:, :, None]  # (T, B, 1)
        hd = h.to(dtype)[None, :, None]
        vals = y[None] + hd * (x * (q[0][None] + x * (q[1][None] + x * (q[2][None] + x * q[3][None]))))
        at_end = (out_t == t_new[:, None]).t()[:, :, None]
        vals = torch.where(at_end, y_new[None], vals)
        out = torch.where(sel.t()[:, :, None], vals, out)

        acc2 = accept[:, None]
        y = torch.where(acc2, y_new, y)
        f = torch.where(acc2, k7, f)
        t = torch.where(accept, t_new, t)
        n_steps = n_steps + accept.long()
        n_rej = n_rej + reject.long()
        fresh = torch.where(go, accept, fresh)
        rejected = torch.where(accept, torch.zeros_like(rejected), rejected | reject)
        step_times.append(torch.where(accept, t, torch.full_like(t, float("nan"))))

        done = accept & (t >= t_end)
        active = active & ~done
        hit = accept & active & (t >= seg_end)
        if prob.events is not None:
            hit_jump = hit & (stops.gather(1, ptr[:, None]).squeeze(1) == t)
            y = _dose(prob.events, t, hit_jump, y)
        ptr = torch.where(hit, (stops <= t[:, None]).sum(dim=1), ptr)
        need_init = need_init | hit
        nonfinite_fail = active & (bad_streak >= NONFINITE_STREAK)
        over = active & (n_steps + n_rej >= prob.max_steps)
        status = torch.where(nonfinite_fail, torch.full_like(status, int(Status.NONFINITE)), status)
        status = torch.where(over & ~nonfinite_fail, torch.full_like(status, int(Status.MAX_STEPS)), status)
        active = active & ~(nonfinite_fail | over)

    st = torch.stack(step_times, 1) if step_times else torch.zeros(B, 0, dtype=f64, device=dev)
    if st.numel():
        st = st[:, ~torch.isnan(st).all(dim=0)]
    del zero_d
    return out, y, Stats(n_steps=n_steps, n_rejected=n_rej, nfe=nfe, status=status, step_times=st)
