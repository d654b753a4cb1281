"""Dormand–Prince 5(4) primitives in plain PyTorch, mirroring scipy's ``RK45`` exactly.

Shapes: ``y`` is ``(B, N)``; times and step sizes are float64 ``(B,)`` tensors; ``norm`` maps
``(B, N) -> (B,)`` (per-trajectory RMS, or the batch RMS broadcast in ``step_mode="shared"``).
Step-size decisions are computed on detached values: they are constants for differentiation.
"""

from __future__ import annotations

from fractions import Fraction as F

import torch

ORDER = 5
ERROR_ESTIMATOR_ORDER = 4
N_STAGES = 6
SAFETY = 0.9
MIN_FACTOR = 0.2
MAX_FACTOR = 10.0
ERROR_EXPONENT = -1.0 / (ERROR_ESTIMATOR_ORDER + 1)

C = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0]
A = [
    [],
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
]
B = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]
E = [-71 / 57600, 0.0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40]
P = [
    [1.0, float(F(-8048581381, 2820520608)), float(F(8663915743, 2820520608)), float(F(-12715105075, 11282082432))],
    [0.0, 0.0, 0.0, 0.0],
    [0.0, float(F(131558114200, 32700410799)), float(F(-68118460800, 10900136933)), float(F(87487479700, 32700410799))],
    [0.0, float(F(-1754552775, 470086768)), float(F(14199869525, 1410260304)), float(F(-10690763975, 1880347072))],
    [0.0, float(F(127303824393, 49829197408)), float(F(-318862633887, 49829197408)), float(F(701980252875, 199316789632))],
    [0.0, float(F(-282668133, 205662961)), float(F(2019193451, 616988883)), float(F(-1453857185, 822651844))],
    [0.0, float(F(40617522, 29380423)), float(F(-110615467, 29380423)), float(F(69997945, 29380423))],
]


def rms_rows(x: torch.Tensor) -> torch.Tensor:
    """Per-row RMS: ``(B, N) -> (B,)`` (scipy's ``norm(x) / sqrt(N)``)."""
    return torch.linalg.vector_norm(x, dim=1) / (x.shape[1] ** 0.5)


def rms_shared(x: torch.Tensor) -> torch.Tensor:
    """RMS over the whole batch tensor, broadcast to ``(B,)`` (torchdiffeq's norm)."""
    return (torch.linalg.vector_norm(x) / (x.numel() ** 0.5)).expand(x.shape[0])


def rk_step(fun, t, y, f, h, t_seg):
    """One DP5 step from ``(t, y)`` with ``f = fun(t, y)`` and float64 step ``h`` ``(B,)``.

    Returns ``(y_new, K, Ys)``: ``K`` the 7 stage derivatives (``K[6] = fun(t+h, y_new)``, FSAL)
    and ``Ys`` the 7 stage arguments (``Ys[0] = y``, ``Ys[6] = y_new``).
    """
    hd = h.to(y.dtype)[:, None]
    K = [f]
    Ys = [y]
    for s in range(1, N_STAGES):
        acc = K[0] * A[s][0]
        for j in range(1, s):
            acc = acc + K[j] * A[s][j]
        ys = y + acc * hd
        Ys.append(ys)
        K.append(fun(t + C[s] * h, ys, t_seg))
    acc = K[0] * B[0]
    for j in range(1, N_STAGES):
        if B[j] != 0.0:
            acc = acc + K[j] * B[j]
    y_new = y + hd * acc
    K.append(fun(t + h, y_new, t_seg))
    Ys.append(y_new)
    return y_new, K, Ys


def error_norm(K, h, y, y_new, rtol, atol, norm):
    """``norm(h * sum_i E_i K_i / (atol + rtol * max(|y|, |y_new|)))`` on detached values."""
    with torch.no_grad():
        err = K[0].detach() * E[0]
        for j in range(1, 7):
            if E[j] != 0.0:
                err = err + K[j].detach() * E[j]
        err = err * h.to(y.dtype)[:, None]
        scale = atol + torch.maximum(y.detach().abs(), y_new.detach().abs()) * rtol
        return norm(err / scale).to(torch.float64)


def initial_step(fun, t, y, f0, span, rtol, atol, norm, t_seg):
    """Hairer's heuristic (scipy ``select_initial_step``) per row; one extra evaluation.

    ``span`` (float64 ``(B,)``) is the distance to the end of the current segment.
    """
    with torch.no_grad():
        y, f0 = y.detach(), f0.detach()
        scale = atol + y.abs() * rtol
        d0 = norm(y / scale).to(torch.float64)
        d1 = norm(f0 / scale).to(torch.float64)
        small = (d0 < 1e-5) | (d1 < 1e-5)
        h0 = torch.where(small, torch.full_like(d0, 1e-6), 0.01 * d0 / torch.where(small, torch.ones_like(d1), d1))
        h0 = torch.minimum(h0, span)
        h0 = torch.where(h0 > 0, h0, torch.full_like(h0, 1e-6))  # zero-length segments are skipped anyway
        y1 = y + h0.to(y.dtype)[:, None] * f0
        f1 = fun(t + h0, y1, t_seg).detach()
        d2 = (norm((f1 - f0) / scale).to(torch.float64)) / h0
        tiny = (d1 <= 1e-15) & (d2 <= 1e-15)
        h1 = torch.where(
            tiny,
            torch.clamp(h0 * 1e-3, min=1e-6),
            (0.01 / torch.clamp(torch.maximum(d1, d2), min=1e-300)) ** (1.0 / (ERROR_ESTIMATOR_ORDER + 1)),
        )
        return torch.minimum(torch.minimum(100 * h0, h1), span)


def _combine_stages(K, xp):
    """``sum_j K_j (xp @ P[j])``: ``K`` the gathered stage list (each ``(M, N)``), ``xp (M, 4)``
    powers of ``x`` (or their derivatives) in the state dtype."""
    acc = None
    for j in range(7):
        coef = xp @ torch.tensor(P[j], dtype=xp.dtype, device=xp.device)  # (M,)
        term = K[j] * coef[:, None]
        acc = term if acc is None else acc + term
    return acc


def dense_output(K, y_old, h, x):
    """scipy ``RkDenseOutput``: ``y_old + h * (K^T P) [x, x^2, x^3, x^4]``.

    ``K`` stage list gathered to the ``M`` requested points (each ``(M, N)``), ``y_old``
    ``(M, N)``, ``h`` and ``x = (t - t_old) / h`` float64 ``(M,)``.
    """
    dtype = y_old.dtype
    xp = torch.stack([x, x * x, x**3, x**4], dim=1).to(dtype)  # (M, 4)
    return y_old + h.to(dtype)[:, None] * _combine_stages(K, xp)


def dense_slope(K, x):
    """Time derivative of :func:`dense_output` at ``x``: ``sum_j K_j sum_m (m + 1) x^m P[j, m]``
    (``h`` cancels). ``K`` gathered stage list (each ``(M, N)``), ``x`` float64 ``(M,)``."""
    xp = torch.stack([torch.ones_like(x), 2 * x, 3 * x * x, 4 * x**3], dim=1).to(K[0].dtype)  # (M, 4)
    return _combine_stages(K, xp)
