"""Training: fit a hybrid field to longitudinal data, with sparsity regularizers.

``loss = masked MSE on observed states + sum_k reg[k] * R_k(field)`` with ``R_k`` from
:mod:`hnode_fast.sparsity` (``l1``, ``l2``, ``edge_l1``, ``path``, ``cnode``, ``l0``,
``local``). Adam with ``ReduceLROnPlateau(factor 0.5, patience 20)`` (Aliee et al.'s schedule),
early stopping on a validation split by subject, best-state restore, checkpoints, tqdm progress.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from . import sparsity as sp
from .data.longitudinal import LongitudinalDataset
from .events import Events
from .fields.hybrid import HybridField
from .solve import odeint

REGULARIZERS = ("l1", "l2", "edge_l1", "path", "cnode", "l0", "local")


class Observe(nn.Module):
    """Observation model ``(T, B, D) -> (T, B, n_obs)``: ``obs_j = state[idx_j] * s_j``.

    ``s_j = exp(log_scale_j)`` > 0 is learnable (``learn_scale``), e.g. ``1 / V`` to map an
    amount to a concentration. ``scale`` gives the initial values.
    """

    idx: torch.Tensor  # long buffer (n_obs,)

    def __init__(self, idx: Sequence[int], scale=1.0, learn_scale: bool = True, dtype=None):
        super().__init__()
        self.register_buffer("idx", torch.as_tensor(list(idx), dtype=torch.long))
        s = torch.as_tensor(scale, dtype=torch.float64).expand(len(idx)).clone()
        if (s <= 0).any():
            raise ValueError("observation scales must be > 0")
        ls = torch.log(s).to(dtype or torch.get_default_dtype())
        self.log_scale = nn.Parameter(ls, requires_grad=learn_scale)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y[..., self.idx] * torch.exp(self.log_scale).to(y.dtype)


@dataclass
class FitResult:
    """What :func:`fit` did: per-epoch history, best epoch, timings and solver effort, and the
    trained observation model (``observe``)."""

    history: List[Dict[str, float]] = dc_field(default_factory=list)
    best_epoch: int = -1
    best_val: float = math.inf
    seconds: float = 0.0
    nfe_per_solve: float = 0.0
    stopped_early: bool = False
    observe: Optional[nn.Module] = dc_field(default=None, repr=False, compare=False)


def _problem(data: LongitudinalDataset, dtype, device) -> Dict[str, Any]:
    b = data.batch(dtype=torch.float64)
    ev = Events(times=b["event_times"], states=b["event_states"], amounts=b["event_amounts"].to(dtype))
    return {
        "t": b["t"].to(device),
        "y": b["y"].to(dtype=dtype, device=device),
        "mask": b["obs_mask"].to(device),
        "events": ev,
        "B": b["t"].shape[0],
    }


def _params_dtype(field: nn.Module):
    p = next(iter(field.parameters()))
    return p.dtype, p.device


def predict(
    field: HybridField,
    data: LongitudinalDataset,
    observe: nn.Module,
    y0=None,
    rtol=1e-5,
    atol=1e-7,
    backend="auto",
    return_stats=False,
    t_extra: Optional[torch.Tensor] = None,
):
    """Solve every subject; returns ``(obs (T, B, n_obs), batch dict[, stats])``."""
    dtype, device = _params_dtype(field)
    P = _problem(data, dtype, device)
    B, D = P["B"], field.n_states
    y0 = torch.zeros(B, D, dtype=dtype, device=device) if y0 is None else y0
    y, st = odeint(field, y0, P["t"], rtol=rtol, atol=atol, events=P["events"], backend=backend, return_stats=True)
    out = observe(y)
    return (out, P, st) if return_stats else (out, P)


def masked_mse(pred: torch.Tensor, P: dict) -> torch.Tensor:
    """Mean squared error over observed entries; ``pred`` ``(T, B, n_obs)``."""
    m = P["mask"].permute(1, 0, 2)
    y = P["y"].permute(1, 0, 2)
    diff = torch.where(m, pred - y, torch.zeros_like(pred))
    n = m.sum()
    if int(n) == 0:
        raise ValueError("no observed values in the data")
    return (diff**2).sum() / n


def evaluate(field, data, observe, **kw) -> Dict[str, float]:
    """Test metrics: ``rmse`` on observed values, ``nfe`` mean per trajectory, ``failed``."""
    with torch.no_grad():
        pred, P, st = predict(field, data, observe, return_stats=True, **kw)
        mse = masked_mse(pred.nan_to_num(nan=1e6), P)
    return {"rmse": float(mse.sqrt()), "nfe": float(st.nfe.double().mean()), "failed": int((st.status != 0).sum())}


def regularization(field: HybridField, reg: Dict[str, float]) -> torch.Tensor:
    """``sum_k reg[k] * R_k`` for the static (state-free) regularizers."""
    total = torch.zeros((), dtype=_params_dtype(field)[0])
    for k, lam in reg.items():
        if lam == 0 or k == "local":
            continue
        if k == "l1":
            total = total + lam * sp.l1(field)
        elif k == "l2":
            total = total + lam * sp.l2(field)
        elif k == "edge_l1":
            total = total + lam * sp.edge_l1(field)
        elif k == "path":
            total = total + lam * sp.path_penalty(field)
        elif k == "cnode":
            total = total + lam * sp.cnode_path_l1(field)
        elif k == "l0":
            if field.nn is None:
                raise ValueError("reg['l0'] needs a field with a network (nn) built with gates='l0'")
            total = total + lam * field.nn.l0_penalty()
    return total


def fit(
    field: HybridField,
    data: LongitudinalDataset,
    *,
    observe: Optional[nn.Module] = None,
    val: Optional[LongitudinalDataset] = None,
    epochs: int = 300,
    lr: float = 2e-3,
    reg: Optional[Dict[str, float]] = None,
    patience: int = 60,
    plateau_patience: int = 20,
    plateau_factor: float = 0.5,
    rtol: float = 1e-5,
    atol: float = 1e-7,
    backend: str = "auto",
    y0: Optional[Callable] = None,
    seed: int = 0,
    progress: bool = True,
    checkpoint: Optional[str] = None,
    local_rtol: Optional[float] = None,
    desc: str = "fit",
) -> FitResult:
    """Train ``field`` (and ``observe``) on ``data`` by full-batch Adam.

    Args:
        field: the :class:`hf.HybridField` to train (modified in place; the best state by
            validation loss is restored at the end).
        data: :class:`hf.data.LongitudinalDataset` — subjects with their own times, doses
            (bolus events), observed subset of states, NaN = missing.
        observe: observation model (default :class:`Observe` of ``data.observed_idx``, fixed
            scale 1); its parameters are trained too.
        val: validation subjects for early stopping and the LR plateau (default: train loss).
        reg: regularizer weights, keys in ``REGULARIZERS``; ``local`` is Pal et al.'s local
            error term at one uniform ``t_reg`` per subject.
        y0: ``callable(B) -> (B, D)`` initial states (default zeros; doses come as events).
        seed: makes the run deterministic (initial L0 noise, t_reg samples).
        checkpoint: path; the best ``{"field", "observe", "epoch"}`` state dicts are saved there.
    """
    reg = dict(reg or {})
    unknown = set(reg) - set(REGULARIZERS)
    if unknown:
        raise ValueError(f"unknown regularizer(s) {sorted(unknown)}; choose from {REGULARIZERS}")
    if not isinstance(field, HybridField):
        raise ValueError("fit() trains a hf.HybridField")
    if len(data) == 0:
        raise ValueError("data has no subjects")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dtype, device = _params_dtype(field)
    if observe is None:
        observe = Observe(data.observed_idx, learn_scale=False, dtype=dtype)
    observe = observe.to(device)
    P = _problem(data, dtype, device)
    PV = _problem(val, dtype, device) if val is not None else None
    B, D = P["B"], field.n_states
    init = (lambda n: torch.zeros(n, D, dtype=dtype, device=device)) if y0 is None else y0
    params = [p for p in list(field.parameters()) + list(observe.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=plateau_factor, patience=plateau_patience)
    res = FitResult()
    best_state = None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc=desc, leave=False, dynamic_ncols=True)
    t_start = time.perf_counter()
    nfe_sum, nfe_n = 0.0, 0
    since_best = 0
    for epoch in range(epochs):
        field.train()
        if field.nn is not None and field.nn.gates is not None:
            field.nn.resample_gates()
        opt.zero_grad(set_to_none=True)
        t_grid = P["t"]
        lam_local = reg.get("local", 0.0)
        if lam_local:
            t_reg = sp.sample_t_reg(t_grid, generator=gen).to(device)
            t_aug, order = torch.sort(torch.cat([t_grid, t_reg[:, None]], dim=1), dim=1)
            y_all, st = odeint(field, init(B), t_aug, rtol=rtol, atol=atol, events=P["events"], backend=backend, return_stats=True)
            pos = torch.argsort(order, dim=1)  # where each original column went
            bidx = torch.arange(B, device=device)
            y = torch.stack([y_all[pos[:, j], bidx] for j in range(t_grid.shape[1])])
            y_reg = y_all[pos[:, -1], bidx]
        else:
            y, st = odeint(field, init(B), t_grid, rtol=rtol, atol=atol, events=P["events"], backend=backend, return_stats=True)
        nfe_sum += float(st.nfe.double().mean())
        nfe_n += 1
        if bool((st.status != 0).any()):
            y = y.nan_to_num(nan=0.0)  # failed rows: keep training stable, counted in history
        mse = masked_mse(observe(y), P)
        loss = mse + regularization(field, reg)
        if lam_local:
            ok = torch.isfinite(y_reg).all(dim=1)
            if bool(ok.any()):
                loss = loss + lam_local * sp.local_error(field, y_reg[ok], t_reg[ok], local_rtol or rtol, atol)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at epoch {epoch}: mse={float(mse)}; lower lr or check data")
        loss.backward()
        opt.step()
        field.eval()
        if PV is not None:
            with torch.no_grad():
                yv = odeint(field, init(PV["B"]), PV["t"], rtol=rtol, atol=atol, events=PV["events"], backend=backend)
                val_loss = float(masked_mse(observe(yv.nan_to_num(nan=1e6)), PV))
        else:
            val_loss = float(mse.detach())
        sched.step(val_loss)
        sparsity = sp.weight_sparsity(field) if field.nn is not None else 0.0
        rec = {
            "epoch": epoch,
            "loss": float(loss.detach()),
            "mse": float(mse.detach()),
            "val": val_loss,
            "sparsity": sparsity,
            "nfe": float(st.nfe.double().mean()),
            "lr": opt.param_groups[0]["lr"],
            "failed": int((st.status != 0).sum()),
        }
        res.history.append(rec)
        if val_loss < res.best_val:
            res.best_val, res.best_epoch = val_loss, epoch
            best_state = (copy.deepcopy(field.state_dict()), copy.deepcopy(observe.state_dict()))
            since_best = 0
            if checkpoint:
                torch.save({"field": best_state[0], "observe": best_state[1], "epoch": epoch}, checkpoint)
        else:
            since_best += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.4g}", val=f"{val_loss:.4g}", sparsity=f"{sparsity:.2f}", nfe=f"{rec['nfe']:.0f}")
        if since_best >= patience:
            res.stopped_early = True
            break
    if bar is not None:
        bar.close()
    if best_state is not None:
        field.load_state_dict(best_state[0])
        observe.load_state_dict(best_state[1])
    field.eval()
    res.seconds = time.perf_counter() - t_start
    res.nfe_per_solve = nfe_sum / max(1, nfe_n)
    res.observe = observe
    return res


def select_regularization(
    make: Callable[[], tuple], data: LongitudinalDataset, key: str, values: Sequence[float], k: int = 3, seed: int = 0, **fit_kwargs
) -> tuple:
    """K-fold choice of one regularizer weight (HGS's cross-validated lambda).

    ``make() -> (field, observe)`` builds a fresh model. Returns ``(best_value, {value: mean
    validation MSE})``; folds are by subject.
    """
    if key not in REGULARIZERS:
        raise ValueError(f"key must be one of {REGULARIZERS}, got {key!r}")
    scores = {}
    base_reg = dict(fit_kwargs.pop("reg", {}) or {})
    for v in values:
        errs = []
        for train, val in data.kfold(k, seed=seed):
            field, observe = make()
            r = fit(field, train, observe=observe, val=val, reg={**base_reg, key: v}, seed=seed, progress=False, **fit_kwargs)
            errs.append(r.best_val)
        scores[float(v)] = sum(errs) / len(errs)
    best = min(scores, key=scores.__getitem__)
    return best, scores


def prune_retrain(
    field: HybridField, data: LongitudinalDataset, fractions: Sequence[float] = (0.5, 0.7, 0.9), epochs: int = 100, **fit_kwargs
) -> List[FitResult]:
    """Iterative magnitude pruning: for each fraction, prune the network to it, then retrain."""
    out = []
    for fr in fractions:
        sp.prune_magnitude(field, fr)
        out.append(fit(field, data, epochs=epochs, **fit_kwargs))
    return out
