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
from ._progress import Progress
from .data.longitudinal import LongitudinalDataset
from .events import Events
from .fields.hybrid import HybridField
from .shooting import MultipleShooting, Shooting, continuity_penalty, grow, initial_guess
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
    shooting: Optional[Shooting] = None,
    local: Optional[sp.LocalRegularizer] = None,
    gate_lr: Optional[float] = None,
    prune_closed_gates: bool = True,
) -> FitResult:
    """Train ``field`` (and ``observe``) on ``data`` by full-batch Adam.

    Loss per epoch: ``masked_mse(observe(y), data) + sum_k reg[k] R_k(field)`` (+ the
    continuity penalty with ``shooting``, + the local term with ``local``), one gradient step
    over all subjects. ``ReduceLROnPlateau`` on the validation loss; the state with the best
    validation loss is restored at the end.

    Args:
        field: the :class:`hf.HybridField` to train (modified in place).
        data: :class:`hf.data.LongitudinalDataset` — subjects with their own times, doses
            (bolus events), observed subset of states, NaN = missing.
        observe: observation model ``(T, B, D) -> (T, B, n_obs)`` (default :class:`hf.Observe`
            of ``data.observed_idx``, fixed scale 1); its trainable parameters are trained too.
        val: validation subjects for early stopping and the LR plateau, solved whole (single
            shooting). Default: the training MSE (with ``shooting``, of the segments).
        epochs: maximum number of epochs (full-batch Adam steps), ``>= 1``.
        lr: Adam learning rate of the field and ``observe`` parameters.
        reg: regularizer weights ``{name: weight}``, names ``l1, l2, edge_l1, path, cnode, l0,
            local`` (see :mod:`hf.sparsity`); ``l0`` needs ``MaskedMLP(gates="l0")``;
            ``local: w`` is a constant-weight :class:`hf.sparsity.LocalRegularizer` (uniform
            ``t_reg``, rtol ``local_rtol``).
        patience: stop after this many epochs without a better validation loss.
        plateau_patience, plateau_factor: ``ReduceLROnPlateau``'s patience and factor.
        rtol, atol: solver tolerances of every training and validation solve.
        backend: :func:`hf.odeint` backend (``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"``,
            ``"triton"``).
        y0: ``callable(B) -> (B, D)`` initial states (default zeros; doses come as events).
        seed: makes the run deterministic (L0 gate noise, ``t_reg`` samples).
        progress: report progress on stderr: a tqdm bar when stderr is a terminal, otherwise
            one log line per epoch; False: silent.
        checkpoint: path; the best ``{"field", "observe", "epoch"}`` state dicts are saved there.
        local_rtol: rtol of the local error estimate for ``reg["local"]`` (default ``rtol``).
        desc: label of the progress output.
        shooting: :class:`hf.shooting.Shooting` options: train on segments with learnable
            initial states (multiple shooting; not combinable with the local regularizer).
        local: :class:`hf.sparsity.LocalRegularizer` (decayed weight, samplers, stiffness).
        gate_lr: learning rate of the L0 gates' ``log_alpha`` (default ``lr``). The recipe
            that closes gates (benchmarks/bench_recovery.py): ``gate_lr`` ~5x ``lr``,
            ``plateau_patience >= epochs`` while gates are sampled (the loss is noisy), then
            :func:`hf.sparsity.freeze_gates` and a fine-tuning fit without ``l0``.
        prune_closed_gates: after training, mask off the weights of closed L0 gates
            (:func:`hf.sparsity.prune_gates`).

    Returns:
        :class:`FitResult`: ``history`` (one dict per epoch: ``epoch, loss, mse, val,
        sparsity, nfe, lr, failed``), ``best_epoch``, ``best_val``, ``seconds``,
        ``nfe_per_solve`` (mean NFE per trajectory of the training solves), ``stopped_early``
        and the trained ``observe``.

    Raises:
        ValueError: unknown regularizer names, a field that is not a HybridField, empty data,
            ``epochs < 1``, ``l0`` without gates, ``local`` together with ``shooting``.
        FloatingPointError: the loss became non-finite.
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
    if reg.get("local"):
        if local is not None:
            raise ValueError("give the local regularizer either as reg['local'] or as local=, not both")
        local = sp.LocalRegularizer(weight=reg["local"], weight_end=None, rtol=local_rtol)
    if local is not None and shooting is not None:
        raise ValueError("the local regularizer and multiple shooting cannot be combined (yet)")
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
    gates = [p for n, p in field.named_parameters() if "log_alpha" in n and p.requires_grad]
    gate_ids = {id(p) for p in gates}
    params = [p for p in list(field.parameters()) + list(observe.parameters()) if p.requires_grad and id(p) not in gate_ids]
    groups = [{"params": params, "lr": lr}] + ([{"params": gates, "lr": gate_lr or lr}] if gates else [])
    solver: Dict[str, Any] = {"rtol": rtol, "atol": atol, "backend": backend}
    ms = None
    if shooting is not None:
        guess = initial_guess(field, init(B), P["t"], events=P["events"], observe=observe, y_obs=P["y"], obs_mask=P["mask"], **solver)
        ms = MultipleShooting(P["t"], min(shooting.seg_len, P["t"].shape[1] - 1), guess, learn_first=shooting.learn_first)
        groups.append({"params": [ms.states], "lr": shooting.states_lr or lr})
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=plateau_factor, patience=plateau_patience)
    res = FitResult()
    best_state = None
    bar = Progress(progress, epochs, desc)
    t_start = time.perf_counter()
    nfe_sum, nfe_n = 0.0, 0
    since_best = 0
    prev_stats = None
    for epoch in range(epochs):
        field.train()
        if field.nn is not None and field.nn.gates is not None:
            field.nn.resample_gates()
        every = shooting.grow_every if shooting is not None else 0
        if ms is not None and shooting is not None and every and ms.n_segments > 1 and 0 < epoch and epoch % every == 0:
            with torch.no_grad():
                cur = ms(field, init(B), events=P["events"], **solver)[0]
            ms = grow(ms, cur, min(ms.seg_len * shooting.grow_factor, P["t"].shape[1] - 1))
            opt.state.pop(opt.param_groups[-1]["params"][0], None)
            opt.param_groups[-1]["params"] = [ms.states]
        opt.zero_grad(set_to_none=True)
        extra = torch.zeros((), dtype=dtype, device=device)
        if ms is not None and shooting is not None:
            y, gaps, st = ms(field, init(B), events=P["events"], **solver)
            extra = shooting.weight * continuity_penalty(gaps)
        elif local is not None:
            y, st, extra = _local_forward(field, init(B), P, local, epoch, epochs, gen, prev_stats, solver)
        else:
            y, st = odeint(field, init(B), P["t"], events=P["events"], return_stats=True, **solver)
        prev_stats = st
        nfe_sum += float(st.nfe.double().mean())
        nfe_n += 1
        if bool((st.status != 0).any()):
            y = y.nan_to_num(nan=0.0)  # failed rows: keep training stable, counted in history
        mse = masked_mse(observe(y), P)
        loss = mse + regularization(field, reg) + extra
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at epoch {epoch}: mse={float(mse)}; lower lr or check data")
        loss.backward()
        opt.step()
        field.eval()
        if PV is not None:
            with torch.no_grad():
                yv = odeint(field, init(PV["B"]), PV["t"], events=PV["events"], **solver)
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
        bar.update(rec)
        if since_best >= patience:
            res.stopped_early = True
            break
    bar.close()
    if best_state is not None:
        field.load_state_dict(best_state[0])
        observe.load_state_dict(best_state[1])
    if prune_closed_gates and field.nn is not None and field.nn.gates is not None:
        sp.prune_gates(field)
    field.eval()
    res.seconds = time.perf_counter() - t_start
    res.nfe_per_solve = nfe_sum / max(1, nfe_n)
    res.observe = observe
    return res


def _local_forward(field, y0, P, local, epoch, epochs, gen, prev_stats, solver):
    """One training solve with ``t_reg`` inserted into each row's grid; returns ``(y (T, B, D),
    stats, lambda_e * local_error)``. The biased sampler draws from the previous epoch's step
    times (a no-grad reference solve supplies them when the backend reports none)."""
    t_grid = P["t"]
    B, T = t_grid.shape
    if local.sampler == "steps" and prev_stats is not None:
        if prev_stats.step_times is None:
            with torch.no_grad():
                ref = {**solver, "backend": "reference"}
                prev_stats = odeint(field, y0, t_grid, events=P["events"], return_stats=True, **ref)[1]
        t_reg = sp.sample_t_reg(t_grid, generator=gen, mode="steps", stats=prev_stats)
    else:
        t_reg = sp.sample_t_reg(t_grid, generator=gen)
    grid, pos = sp.with_t_reg(t_grid, t_reg.to(t_grid.device))
    y_all, st = odeint(field, y0, grid, events=P["events"], return_stats=True, **solver)
    idx = pos.T[:, :, None].expand(T + 1, B, y_all.shape[-1])
    yo = torch.gather(y_all, 0, idx)
    y, y_reg = yo[:T], yo[T]
    ok = torch.isfinite(y_reg).all(dim=1)
    if not bool(ok.any()):
        return y, st, y.new_zeros(())
    lam = local.weight_at(epoch, epochs)
    rt = local.rtol if local.rtol is not None else solver["rtol"]
    at = local.atol if local.atol is not None else solver["atol"]
    term = sp.local_error(field, y_reg[ok], grid.gather(1, pos[:, T:]).reshape(-1)[ok], rt, at, stiffness=local.stiffness)
    return y, st, lam * term


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
