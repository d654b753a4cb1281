"""Local regularization of Pal, Edelman & Rackauckas (ICML 2023).

At times ``t_reg`` (uniform in the span, or drawn from accepted step times), from the DETACHED
state ``y(t_reg)`` take ONE Dormand–Prince step with the automatic initial step ``h``
(detached) and penalise ``E_est * h``, ``E_est`` the RMS error estimate
``RMS(h sum_i e_i k_i / (atol + rtol max(|y|, |y_1|)))`` (the scale is detached, as in the
solver). ``k_1`` is detached too: gradients reach the parameters through ``k_2 .. k_7`` only.
Optional stiffness term ``rho = ||k_7 - k_6|| / ||y_1 - g_6|| / 3.3066`` (``g_6`` the 6th stage's
argument; 0 where the denominator is 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..reference import dopri5 as dp
from ..types import Stats

DP5_STABILITY_SIZE = 3.3066


def local_error(
    field,
    y: torch.Tensor,
    t: torch.Tensor,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    stiffness: bool = False,
    inputs=None,
    return_parts: bool = False,
):
    """``mean_b(E_est_b * h_b)`` (``+ mean_b(rho_b * h_b)`` with ``stiffness``).

    Args:
        field: a :class:`hf.HybridField` (or any ``func(t, y)`` on ``(B, D)``).
        y: ``(B, D)`` states at the sampled times (detached here).
        t: ``(B,)`` or scalar sampled times.
    Returns a scalar (or ``(E (B,), h (B,), rho (B,) or None)`` with ``return_parts``).
    """
    if y.dim() != 2:
        raise ValueError(f"y must have shape (B, D), got {tuple(y.shape)}")
    y = y.detach()
    B = y.shape[0]
    tt = torch.as_tensor(t, dtype=torch.float64, device=y.device).reshape(-1).expand(B).contiguous()
    from ..fields.hybrid import HybridField

    if isinstance(field, HybridField):

        def fun(ts, ys, tseg):
            u = inputs.at(tseg).to(ys.dtype) if inputs is not None else None
            return field.eval_u(ys, u)
    else:

        def fun(ts, ys, tseg):
            return field(ts.to(ys.dtype), ys)

    with torch.no_grad():
        f0 = fun(tt, y, tt)
        h = dp.initial_step(fun, tt, y, f0, torch.full_like(tt, float("inf")), rtol, atol, dp.rms_rows, tt)
    y1, K, Ys = dp.rk_step(fun, tt, y, f0.detach(), h, tt)
    hd = h.to(y.dtype)[:, None]
    err = K[0] * dp.E[0]
    for j in range(1, 7):
        if dp.E[j] != 0.0:
            err = err + K[j] * dp.E[j]
    err = err * hd
    scale = atol + torch.maximum(y.abs(), y1.detach().abs()) * rtol
    E = dp.rms_rows(err / scale)
    rho = None
    if stiffness:
        num = torch.linalg.vector_norm(K[6] - K[5], dim=1)
        den = torch.linalg.vector_norm(Ys[6] - Ys[5], dim=1)
        rho = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))
        rho = rho / DP5_STABILITY_SIZE
    if return_parts:
        return E, h, rho
    hval = h.to(y.dtype)
    out = (E * hval).mean()
    if stiffness:
        out = out + (rho * hval).mean()
    return out


def sample_t_reg(
    out_t: torch.Tensor, generator: Optional[torch.Generator] = None, mode: str = "uniform", stats: Optional[Stats] = None
) -> torch.Tensor:
    """Sample one ``t_reg`` per trajectory: ``(B,)`` float64.

    ``mode="uniform"``: ``U(t0, t1)`` of each trajectory's span (unbiased). ``mode="steps"``: one
    of the trajectory's accepted step times excluding the last (biased; needs ``stats`` from a
    solve with ``return_stats=True``); falls back to uniform for rows with fewer than 2 steps.
    """
    out_t = torch.as_tensor(out_t, dtype=torch.float64)
    if out_t.dim() == 1:
        out_t = out_t[None]
    t0, t1 = out_t[:, 0], out_t[:, -1]
    u = torch.rand(t0.shape, generator=generator, dtype=torch.float64)
    tr = t0 + u * (t1 - t0)
    if mode == "uniform":
        return tr
    if mode != "steps":
        raise ValueError(f"mode must be 'uniform' or 'steps', got {mode!r}")
    if stats is None or stats.step_times is None:
        raise ValueError("mode='steps' needs stats with step_times from odeint(..., return_stats=True)")
    st = stats.step_times.to(torch.float64).cpu()
    B = tr.shape[0] if tr.shape[0] == st.shape[0] else st.shape[0]
    out = tr.expand(B).clone()
    for b in range(B):
        times = st[b][~torch.isnan(st[b])]
        if times.numel() >= 2:
            times = torch.cat([out_t[min(b, out_t.shape[0] - 1), :1], times[:-1]])  # step start times
            j = int(torch.randint(times.numel(), (1,), generator=generator))
            out[b] = times[j]
    return out


@dataclass
class LocalRegularizer:
    """Pal et al.'s local regularizer as :func:`hf.fit` runs it (``fit(..., local=...)``).

    Loss term at epoch ``e`` of ``E``: ``lambda_e * mean_b(E_est_b h_b [+ rho_b h_b])`` at one
    ``t_reg`` per trajectory, ``lambda_e = weight * (weight_end / weight) ** (e / (E - 1))``
    (exponential decay; constant when ``weight_end`` is None). The paper's Physionet schedule
    is ``weight=100, weight_end=10``.

    Args:
        weight, weight_end: start and end weight (``> 0``).
        sampler: ``"uniform"`` (unbiased: ``t_reg ~ U(t0, t1)``) or ``"steps"`` (biased: one of
            the accepted step start times of the previous epoch's solve of the same
            trajectory; uniform at the first epoch).
        stiffness: add the stiffness estimate ``rho h`` (:func:`local_error`).
        rtol, atol: tolerances of the error estimate (default: ``fit``'s).
    """

    weight: float = 100.0
    weight_end: Optional[float] = 10.0
    sampler: str = "uniform"
    stiffness: bool = False
    rtol: Optional[float] = None
    atol: Optional[float] = None

    def __post_init__(self) -> None:
        for name in ("weight", "weight_end"):
            v = getattr(self, name)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise ValueError(f"LocalRegularizer.{name} must be finite and > 0, got {v}")
        if self.sampler not in ("uniform", "steps"):
            raise ValueError(f"LocalRegularizer.sampler must be 'uniform' or 'steps', got {self.sampler!r}")

    def weight_at(self, epoch: int, epochs: int) -> float:
        """``lambda_e`` (see the class docstring)."""
        if self.weight_end is None or epochs <= 1:
            return float(self.weight)
        frac = min(1.0, max(0.0, epoch / (epochs - 1)))
        return float(self.weight * (self.weight_end / self.weight) ** frac)


def with_t_reg(t_grid: torch.Tensor, t_reg: torch.Tensor):
    """Insert one ``t_reg`` per row into ``t_grid (B, T)``: returns ``(grid (B, T + 1), pos
    (B, T + 1))`` with ``pos[b, k]`` the column of original point ``k`` (``k = T``: ``t_reg``).
    A ``t_reg`` equal to a grid time moves by ``1e-9`` of the span (up; down at the last time)
    to keep the grid strictly increasing."""
    B, T = t_grid.shape
    tr = t_reg.to(t_grid.dtype).reshape(B, 1)
    clash = (t_grid == tr).any(dim=1, keepdim=True)
    step = 1e-9 * (t_grid[:, -1:] - t_grid[:, :1]).abs()
    step = torch.where(tr >= t_grid[:, -1:], -step, step)
    tr = torch.where(clash, tr + step, tr)
    grid, order = torch.sort(torch.cat([t_grid, tr], dim=1), dim=1)
    return grid, torch.argsort(order, dim=1)
