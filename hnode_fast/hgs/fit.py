"""Training and prediction of an :class:`~hnode_fast.hgs.model.MNODE` on :class:`Windows`.

Loss (normalised units, ``y~ = (y - mean) / std`` per observable)::

    L = mean over observed (b, t > t0, j) of (y~_bjt - z_obs(j)(t))^2
        + lambda1 * sum_(f,g) |w_(f,g)|  +  lambda2 * sum_l ||W_l * M_l||^2

(the paper's loss with a mean instead of a sum of squares, so ``lambda`` does not scale with
the data size). Inputs are divided by their scale (mean absolute value over the training
windows); the encoder features are standardised. Adam, minibatches of windows.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from .. import sparsity as sp
from .._progress import is_terminal, terminal_bar
from ..solve import odeint
from .model import MNODE
from .windows import Windows

__all__ = ["Scaler", "train", "predict", "errors", "Progress"]


class Progress:
    """A tqdm bar when stderr is a terminal, else one line per stage (``stage()``)."""

    def __init__(self, enabled: Optional[bool] = None):
        self.enabled = True if enabled is None else bool(enabled)
        self.tty = self.enabled and is_terminal(sys.stderr)

    def stage(self, msg: str) -> None:
        if self.enabled:
            print(f"hgs: {msg}", file=sys.stderr, flush=True)

    def bar(self, total: int, desc: str):
        return terminal_bar(total, desc) if self.enabled else None


@dataclass
class Scaler:
    """Normalisation fitted on training windows: observables ``(y - y_mean) / y_std``, inputs
    ``u / u_scale``, encoder features ``(ctx - c_mean) / c_std`` (all float64 vectors)."""

    y_mean: torch.Tensor
    y_std: torch.Tensor
    u_scale: torch.Tensor
    c_mean: torch.Tensor
    c_std: torch.Tensor

    @staticmethod
    def fit(w: Windows) -> "Scaler":
        y = w.y.reshape(-1, w.n_obs)
        ym = torch.stack([y[:, j][~torch.isnan(y[:, j])].mean() for j in range(w.n_obs)])
        ys = torch.stack([y[:, j][~torch.isnan(y[:, j])].std() for j in range(w.n_obs)])
        real = torch.isfinite(w.input_times)
        u = w.input_values[real]
        us = u.abs().mean(dim=0) if u.numel() else torch.ones(w.n_inputs, dtype=torch.float64)
        cm, cs = w.ctx.mean(dim=0), w.ctx.std(dim=0) if len(w) > 1 else torch.ones(w.ctx.shape[1], dtype=torch.float64)

        def safe(s):
            return torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))

        return Scaler(ym, safe(ys), safe(us), cm, safe(cs))

    def y(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.y_mean) / self.y_std


def predict(
    model: MNODE, w: Windows, scaler: Scaler, backend: str = "cpu", rtol: float = 1e-5, atol: float = 1e-7, max_steps: int = 10_000
):
    """Normalised predictions ``(B, T, n_obs)`` (``[:, 0]`` is ``y(t0)``) and the solver stats."""
    y0 = scaler.y(w.y[:, 0])
    ctx = (w.ctx - scaler.c_mean) / scaler.c_std
    z0 = model.initial_state(y0, ctx)
    z, st = odeint(
        model.field, z0, w.t, rtol=rtol, atol=atol, backend=backend, inputs=w.inputs(scaler.u_scale), return_stats=True, max_steps=max_steps
    )
    return z[:, :, model.obs_idx].permute(1, 0, 2), st


def _weights_l2(model: MNODE) -> torch.Tensor:
    mlp = model.field.nn
    assert mlp is not None
    return sum(((l.weight * m) ** 2).sum() for l, m in zip(mlp.layers, mlp.masks))  # type: ignore[return-value]


def _mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over observed entries after ``t0`` (shapes ``(B, T, n_obs)``)."""
    p, y = pred[:, 1:], target[:, 1:]
    m = ~torch.isnan(y)
    if int(m.sum()) == 0:
        raise ValueError("no observations after the window starts")
    d = torch.where(m, p - y.nan_to_num(), torch.zeros_like(p))
    return (d**2).sum() / m.sum()


def train(
    model: MNODE,
    w: Windows,
    scaler: Scaler,
    lam1: float = 0.0,
    lam2: float = 1e-4,
    epochs: int = 100,
    lr: float = 1e-2,
    batch_size: Optional[int] = 64,
    backend: str = "cpu",
    rtol: float = 1e-5,
    atol: float = 1e-7,
    seed: int = 0,
    progress: Optional[Progress] = None,
    desc: str = "fit",
) -> List[Dict[str, float]]:
    """Adam (cosine learning-rate decay to ``lr / 20``) on the loss above, minibatches of
    ``batch_size`` windows (``None``: all); returns the per-epoch history (``mse``, ``l1``,
    ``failed`` solves). A window whose solve fails is left out of its batch's loss and counted
    (a ``RuntimeWarning`` at the end says how many); ``FloatingPointError`` when every solve of
    a batch fails or the loss is not finite."""
    if lam1 < 0 or lam2 < 0:
        raise ValueError(f"lambda1 and lambda2 must be >= 0, got {lam1}, {lam2}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    target = scaler.y(w.y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs), eta_min=lr * 0.05)
    B = len(w)
    bs = B if batch_size is None else min(int(batch_size), B)
    hist = []
    bar = progress.bar(epochs, desc) if progress is not None else None
    t_start = time.perf_counter()
    for ep in range(epochs):
        perm = torch.randperm(B, generator=gen)
        tot, n_b, failed = 0.0, 0, 0
        for s in range(0, B, bs):
            idx = perm[s : s + bs]
            sub = w.subset(idx)
            opt.zero_grad(set_to_none=True)
            pred, st = predict(model, sub, scaler, backend, rtol, atol)
            bad = st.status != 0
            failed += int(bad.sum())
            tgt = target[idx]
            if bool(bad.all()):
                raise FloatingPointError(f"{desc}: every solve failed at epoch {ep} (status {st.status.tolist()}); lower lr or check data")
            if bool(bad.any()):
                ok = ~bad
                pred, tgt = pred[ok], tgt[ok]
            mse = _mse(pred, tgt)
            l1 = sp.edge_l1(model.field)
            loss = mse + lam1 * l1 + lam2 * _weights_l2(model)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: non-finite loss at epoch {ep} (mse={float(mse)}); lower lr or check data")
            loss.backward()
            opt.step()
            tot += float(mse.detach())
            n_b += 1
        sched.step()
        hist.append({"epoch": ep, "mse": tot / n_b, "l1": float(sp.edge_l1(model.field).detach()), "failed": failed})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(mse=f"{tot / n_b:.4g}")
    if bar is not None:
        bar.close()
    n_failed = sum(int(h["failed"]) for h in hist)
    if n_failed:
        msg = f"{desc}: {n_failed} window solves failed during training (left out of their batch's loss)"
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    if progress is not None:
        progress.stage(f"{desc}: {epochs} epochs, train mse {hist[-1]['mse']:.4g} (normalised), {time.perf_counter() - t_start:.1f} s")
    return hist


@torch.no_grad()
def errors(
    model: MNODE, w: Windows, scaler: Scaler, backend: str = "cpu", horizons=(), rtol: float = 1e-5, atol: float = 1e-7
) -> Dict[str, float]:
    """RMSE in data units: ``rmse`` over every observed value after ``t0``, ``mse_norm`` (the
    normalised loss), and ``rmse_<h>`` at ``t0 + h`` (``horizons`` in time units; the
    observation at exactly that time, windows without one skipped), ``failed`` solves.
    Failed solves are counted and their windows scored with a fixed large error (never NaN)."""
    model.eval()
    pred, st = predict(model, w, scaler, backend, rtol, atol)
    pred = pred * scaler.y_std + scaler.y_mean
    failed = int((st.status != 0).sum())
    pred = torch.where(torch.isnan(pred), torch.full_like(pred, 1e6), pred)
    err = pred - w.y
    m = ~torch.isnan(w.y)
    m[:, 0] = False
    out = {"rmse": float(err[m].pow(2).mean().sqrt()), "failed": float(failed)}
    out["mse_norm"] = float(((err / scaler.y_std)[m]).pow(2).mean())
    for h in horizons:
        dt = w.t - w.t[:, :1]
        hit = (dt - h).abs() < 1e-6
        mh = m & hit[:, :, None]
        out[f"rmse_{h:g}"] = float(err[mh].pow(2).mean().sqrt()) if bool(mh.any()) else math.nan
    return out
