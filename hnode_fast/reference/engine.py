"""The reference adaptive loop: every trajectory steps on its own (or all share one step).

``integrate`` is written for clarity and as the oracle, not for speed: each iteration
evaluates the whole batch (finished rows are carried along and frozen) and syncs the host.
Gradients flow through the stages and dense output by autograd (the discrete adjoint of the
reference); step sizes, times and accept/reject decisions are detached constants.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ..types import NONFINITE_STREAK as _NONFINITE_STREAK
from ..types import Stats, Status
from . import dopri5 as dp

STATUS_OK, STATUS_MAX_STEPS, STATUS_DT_UNDERFLOW, STATUS_NONFINITE = (int(s) for s in Status)


def integrate(
    fun: Callable,
    y0: torch.Tensor,
    out_t: torch.Tensor,
    rtol: float,
    atol: float,
    step_mode: str = "per_sample",
    max_steps: int = 10_000,
    stops: Optional[torch.Tensor] = None,
    jump: Optional[Callable] = None,
    on_accept: Optional[Callable] = None,
    first_step: Optional[float] = None,
    slopes_out: Optional[list] = None,
):
    """Integrate ``dy/dt = fun(t, y, t_seg)`` per row over ``out_t[b, 0] .. out_t[b, -1]``.

    Args:
        fun: ``(t (B,) f64, y (B, N), t_seg (B,) f64) -> (B, N)``; ``t_seg`` is the start of
            the current step (inputs are looked up there, so a step never straddles a switch).
        y0: ``(B, N)`` initial states.
        out_t: float64 ``(B, T)`` strictly increasing output times; ``out_t[:, 0]`` is ``t0``.
        stops: float64 ``(B, S)`` sorted breakpoints (``+inf`` padded): the step is clipped to
            land on each, then ``jump(y, t, hit) -> y`` is applied to the rows ``hit`` and
            the integrator restarts (fresh ``f`` and initial step). Outputs at a stop report
            the state before the jump. Stops equal to ``t0`` jump before the first step.
        on_accept: optional ``(accept (B,) bool, t_old, h, Ys, K) -> None`` after each attempt.
        first_step: the size of the first step (torchdiffeq's ``options["first_step"]``) instead
            of the initial-step heuristic; later restarts (after stops) use the heuristic.
        slopes_out: a list to which the ``(T, B, N)`` time derivatives of the dense-output
            interpolant at the output times are appended (detached; row 0 zeros, NaN after a
            failure): the derivative of the computed solution with respect to ``out_t``.

    Returns ``(out (T, B, N), y_final (B, N), Stats)``; outputs of failed rows after the failure
    are NaN.
    """
    B, N = y0.shape
    dev = y0.device
    T = out_t.shape[1]
    norm = dp.rms_rows if step_mode == "per_sample" else dp.rms_shared
    shared = step_mode != "per_sample"
    f64 = torch.float64
    t = out_t[:, 0].clone()
    t_end = out_t[:, -1].clone()
    if stops is None:
        stops = torch.full((B, 1), float("inf"), dtype=f64, device=dev)
    stops = torch.cat([stops, torch.full((B, 1), float("inf"), dtype=f64, device=dev)], dim=1)

    out_b, out_j, out_v, out_s = [], [], [], []
    out_b.append(torch.arange(B, device=dev))
    out_j.append(torch.zeros(B, dtype=torch.long, device=dev))
    out_v.append(y0)
    if slopes_out is not None:
        out_s.append(torch.zeros_like(y0.detach()))

    y = y0
    if jump is not None:
        hit0 = (stops == t[:, None]).any(dim=1)
        if bool(hit0.any()):
            y = jump(y, t, hit0)
    ptr = (stops <= t[:, None]).sum(dim=1)  # index of the next stop

    status = torch.zeros(B, dtype=torch.long, device=dev)
    n_steps = torch.zeros(B, dtype=torch.long, device=dev)
    n_rej = torch.zeros(B, dtype=torch.long, device=dev)
    nfe = torch.zeros(B, dtype=torch.long, device=dev)
    active = t < t_end
    need_init = active.clone()
    fresh = torch.ones(B, dtype=torch.bool, device=dev)  # first attempt of a step
    rejected = torch.zeros(B, dtype=torch.bool, device=dev)
    bad_streak = torch.zeros(B, dtype=torch.long, device=dev)
    h_abs = torch.zeros(B, dtype=f64, device=dev)
    f = torch.zeros_like(y)
    step_times = []

    def seg_end_now():
        nxt = stops.gather(1, ptr[:, None]).squeeze(1)
        e = torch.minimum(nxt, t_end)
        if shared:
            e = torch.where(active, e, torch.full_like(e, float("inf"))).min().expand(B)
        return e

    while bool(active.any()):
        if bool(need_init.any()):
            seg_end = seg_end_now()
            f_new = fun(t, y, t)
            if first_step is not None:  # the user's first step (one evaluation, no heuristic), clipped
                h0 = torch.minimum(torch.full_like(t, float(first_step)), seg_end - t)
                first_step = None  # restarts after stops use the heuristic
                n_init = 1
            else:
                h0 = dp.initial_step(fun, t, y, f_new, seg_end - t, rtol, atol, norm, t)
                n_init = 2
            ni = need_init[:, None]
            f = torch.where(ni, f_new, f)
            h_abs = torch.where(need_init, h0, h_abs)
            nfe = nfe + n_init * need_init.long()
            finite0 = torch.isfinite(f_new.detach()).all(dim=1)
            if shared:
                finite0 = finite0.all().expand(B)
            fail0 = need_init & ~finite0
            status = torch.where(fail0, torch.full_like(status, STATUS_NONFINITE), status)
            active = active & ~fail0
            fresh = fresh | need_init
            rejected = rejected & ~need_init
            need_init = torch.zeros_like(need_init)
            if not bool(active.any()):
                break
        seg_end = seg_end_now()
        min_step = 10 * (torch.nextafter(t, torch.full_like(t, float("inf"))) - t).abs()
        h_abs = torch.where(fresh, torch.maximum(h_abs, min_step), h_abs)
        under = active & (h_abs < min_step)
        if bool(under.any()):
            code = torch.where(bad_streak > 0, STATUS_NONFINITE, STATUS_DT_UNDERFLOW)
            status = torch.where(under, code, status)
            active = active & ~under
            if not bool(active.any()):
                break
        t_new = t + h_abs
        t_new = torch.where(t_new > seg_end, seg_end, t_new)
        h = torch.where(active, t_new - t, torch.zeros_like(t))
        y_new, K, Ys = dp.rk_step(fun, t, y, f, h, t)
        if shared:  # RMS over the rows still integrating, one value for all

            def err_norm(x):
                return dp.rms_shared(x[active])[0].expand(B)
        else:
            err_norm = norm
        err = dp.error_norm(K, h, y, y_new, rtol, atol, err_norm)
        nfe = nfe + 6 * active.long()
        finite = torch.isfinite(err)
        accept = active & finite & (err < 1)
        reject = active & ~accept
        safe_err = torch.where(finite & (err > 0), err, torch.ones_like(err))
        grow = torch.where(
            err == 0, torch.full_like(err, dp.MAX_FACTOR), torch.clamp(dp.SAFETY * safe_err**dp.ERROR_EXPONENT, max=dp.MAX_FACTOR)
        )
        grow = torch.where(rejected, torch.clamp(grow, max=1.0), grow)
        shrink = torch.where(
            finite, torch.clamp(dp.SAFETY * safe_err**dp.ERROR_EXPONENT, min=dp.MIN_FACTOR), torch.full_like(err, dp.MIN_FACTOR)
        )
        habs_step = h.abs()
        h_abs = torch.where(accept, habs_step * grow, torch.where(reject, habs_step * shrink, h_abs))
        bad_streak = torch.where(active & ~finite, bad_streak + 1, torch.where(active, 0, bad_streak))
        if on_accept is not None:
            on_accept(accept, t, h, Ys, K)

        # dense output for requested times in (t, t_new]
        sel = accept[:, None] & (out_t > t[:, None]) & (out_t <= t_new[:, None])
        if bool(sel.any()):
            bb, jj = torch.nonzero(sel, as_tuple=True)
            tq = out_t[bb, jj]
            x = (tq - t[bb]) / h[bb]
            vals = dp.dense_output([k[bb] for k in K], y[bb], h[bb], x)
            at_end = (tq == t_new[bb])[:, None]
            vals = torch.where(at_end, y_new[bb], vals)
            out_b.append(bb)
            out_j.append(jj)
            out_v.append(vals)
            if slopes_out is not None:
                with torch.no_grad():
                    out_s.append(dp.dense_slope([k[bb].detach() for k in K], x))

        acc2 = accept[:, None]
        y = torch.where(acc2, y_new, y)
        f = torch.where(acc2, K[6], f)
        t = torch.where(accept, t_new, t)
        n_steps = n_steps + accept.long()
        n_rej = n_rej + reject.long()
        fresh = accept
        rejected = torch.where(accept, torch.zeros_like(rejected), rejected | reject)
        step_times.append(torch.where(accept, t, torch.full_like(t, float("nan"))))

        done = accept & (t >= t_end)
        active = active & ~done
        hit = accept & active & (t >= seg_end)
        if bool(hit.any()):
            if jump is not None:
                hit_jump = hit & (stops.gather(1, ptr[:, None]).squeeze(1) == t)
                if bool(hit_jump.any()):
                    y = jump(y, t, hit_jump)
            ptr = torch.where(hit, (stops <= t[:, None]).sum(dim=1), ptr)
            need_init = hit if not shared else hit.any().expand(B) & active
        nonfinite_fail = active & (bad_streak >= _NONFINITE_STREAK)
        over = active & (n_steps + n_rej >= max_steps)
        status = torch.where(nonfinite_fail, torch.full_like(status, STATUS_NONFINITE), status)
        status = torch.where(over & ~nonfinite_fail, torch.full_like(status, STATUS_MAX_STEPS), status)
        if shared and bool((nonfinite_fail | over).any()):
            code = status.max()
            status = torch.where(active, code.expand(B), status)
            active = torch.zeros_like(active)
        active = active & ~(nonfinite_fail | over)

    bb = torch.cat(out_b)
    jj = torch.cat(out_j)
    vv = torch.cat(out_v)
    out = torch.full((T, B, N), float("nan"), dtype=y0.dtype, device=dev)
    out = out.index_put((jj, bb), vv)
    if slopes_out is not None:
        slopes = torch.full((T, B, N), float("nan"), dtype=y0.dtype, device=dev)
        slopes_out.append(slopes.index_put((jj, bb), torch.cat(out_s)))
    st = torch.stack(step_times, 1) if step_times else torch.zeros(B, 0, dtype=f64, device=dev)
    # drop columns where no row accepted
    if st.numel():
        keep = ~torch.isnan(st).all(dim=0)
        st = st[:, keep]
    stats = Stats(n_steps=n_steps, n_rejected=n_rej, nfe=nfe, status=status, step_times=st)
    return out, y, stats
