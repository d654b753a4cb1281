"""``hf.hgs.sparsify``: from a mechanistic graph and data to a pruned, retrained MNODE.

Steps (Zou & Tian, arXiv 2505.18996):

1. relax the graph (:meth:`HGSGraph.relax`: drop states that reach no observable, collapse
   cycles, add partial-transitive-closure shortcuts) and build the MNODE (one block-masked
   network, a weight ``w_(u,v)`` per edge; :mod:`.model`);
2. choose ``lambda1`` by K-fold cross-validation over subjects: for every candidate, train on
   ``K - 1`` folds with ``lambda1 * sum|w| + lambda2 * ||Theta||^2``, prune edges below the
   threshold, retrain the pruned model briefly without L1 and score it on the held-out fold
   (normalised MSE);
   the candidate with the lowest mean score wins (``rule="1se"``: the largest lambda within one
   standard error of it);
3. train on all training windows with the chosen lambda, prune edges with ``|w| < threshold``,
   remove states that no longer reach an observable, rebuild the reduced MNODE, warm-start it
   from the trained weights and retrain it with ``lambda1 = 0``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .fit import Progress, Scaler, errors, train
from .model import MNODE, transfer
from .spec import HGSGraph, RelaxedGraph
from .windows import Windows

__all__ = ["sparsify", "HGSResult", "fit_full"]


@dataclass
class HGSResult:
    """What :func:`sparsify` returns.

    Attributes:
        graph: the user's :class:`HGSGraph`.
        relaxed: the relaxed graph (cycles collapsed, shortcuts added) the full MNODE was built on.
        reduced: the graph after pruning edges and unreachable states.
        model: the retrained reduced :class:`MNODE` (``model.field`` is the ``hf.HybridField``).
        scaler: the normalisation of the training data (use with :func:`hnode_fast.hgs.predict`).
        lam1: the chosen lambda1; ``cv_scores``: ``{lambda1: [per-fold normalised MSE]}``.
        edge_weights: ``{(feature, group name): measure}`` of the full model before pruning
            (the ``prune_by`` measure: strength or ``|w|``).
        kept_edges / removed_edges: named feature edges; removed_states: state names.
        params_full / params_reduced: effective non-zero parameters (field, encoder, total).
        val / train_metrics: :func:`hnode_fast.hgs.errors` of the final model (``val`` if given).
        seconds: wall time per stage (``cv``, ``fit``, ``retrain``, ``total``).
    """

    graph: HGSGraph
    relaxed: RelaxedGraph
    reduced: RelaxedGraph
    model: MNODE
    scaler: Scaler
    lam1: float
    cv_scores: Dict[float, List[float]]
    edge_weights: Dict[Tuple[str, str], float]
    kept_edges: List[Tuple[str, str]]
    removed_edges: List[Tuple[str, str]]
    removed_states: List[str]
    params_full: Dict[str, int]
    params_reduced: Dict[str, int]
    train_metrics: Dict[str, float] = field(default_factory=dict)
    val_metrics: Optional[Dict[str, float]] = None
    seconds: Dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """A readable report: lambda and CV scores, parameters, RMSE, kept/removed edges and states."""
        lines = [f"HGS: {self.graph.n_states} states, {self.graph.n_inputs} inputs, observables {list(self.graph.observables)}"]
        lines.append(
            f"  relaxed graph: {self.relaxed.n_groups} groups, {len(self.relaxed.feature_edges)} edges "
            f"({len(self.relaxed.shortcut_edges())} shortcuts/merged-cycle edges)"
        )
        if self.relaxed.dropped_states:
            lines.append(f"  dropped before training (reach no observable): {list(self.relaxed.dropped_states)}")
        cv = ", ".join(f"{k:g}: {sum(v) / len(v):.4g}" for k, v in sorted(self.cv_scores.items()))
        lines.append(f"  lambda1 = {self.lam1:g} (CV mean normalised MSE {{{cv}}})")
        lines.append(
            f"  parameters (effective non-zero): full {self.params_full['field']} -> reduced {self.params_reduced['field']} (field)"
        )
        lines.append(
            f"  kept {len(self.kept_edges)} / {len(self.relaxed.feature_edges)} edges; removed states: {self.removed_states or 'none'}"
        )
        if self.train_metrics:
            lines.append(f"  train RMSE {self.train_metrics['rmse']:.4g}")
        if self.val_metrics:
            lines.append(f"  val RMSE {self.val_metrics['rmse']:.4g}")
        lines.append("  kept graph:")
        lines.append(self.reduced.describe())
        lines.append(f"  wall time: {', '.join(f'{k} {v:.1f} s' for k, v in self.seconds.items())}")
        return "\n".join(lines)

    def plot(self, ax=None, path: Optional[str] = None):
        """Draw the relaxed graph (grey: pruned edges) and the kept edges (width by ``|w|``);
        returns the matplotlib figure. Needs matplotlib (``pip install hnode_fast[plot]``)."""
        from .plot import plot_graphs

        return plot_graphs(self, ax=ax, path=path)


def fit_full(
    rg: RelaxedGraph,
    train_w: Windows,
    scaler: Scaler,
    lam1: float,
    *,
    hidden: Sequence[int] = (16,),
    activation: str = "tanh",
    enc_hidden: int = 32,
    seed: int = 0,
    progress: Optional[Progress] = None,
    desc: str = "fit",
    **train_kw,
) -> MNODE:
    """A fresh MNODE on ``rg`` (seeded), trained with ``lambda1 = lam1``."""
    torch.manual_seed(seed)
    model = MNODE(rg, train_w.ctx.shape[1], hidden, activation, enc_hidden)
    train(model, train_w, scaler, lam1=lam1, seed=seed, progress=progress, desc=desc, **train_kw)
    return model


def _prune(model: MNODE, threshold: float, by: str = "strength") -> List[Tuple[int, int]]:
    ws = model.edge_strengths() if by == "strength" else model.edge_weights()
    return sorted(e for e, v in ws.items() if v >= threshold)


def sparsify(
    graph: HGSGraph,
    train_w: Windows,
    *,
    val: Optional[Windows] = None,
    lambdas: Sequence[float] = (1e-3, 3e-3, 1e-2, 3e-2),
    folds: int = 3,
    threshold: float = 0.05,
    rule: str = "min",
    prune_by: str = "strength",
    lam2: float = 1e-4,
    hidden: Sequence[int] = (16,),
    activation: str = "tanh",
    enc_hidden: int = 32,
    epochs: int = 100,
    retrain_epochs: Optional[int] = None,
    cv_retrain_epochs: Optional[int] = None,
    lr: float = 1e-2,
    batch_size: Optional[int] = 64,
    backend: str = "cpu",
    rtol: float = 1e-5,
    atol: float = 1e-7,
    seed: int = 0,
    closure: bool = True,
    progress: Optional[bool] = None,
) -> HGSResult:
    """HGS end to end (steps in the module docstring).

    Args:
        graph: the mechanistic prior (:class:`HGSGraph`); its observables are ``train_w.y``'s
            columns in order, its inputs ``train_w``'s input columns in order.
        train_w: training :class:`Windows` (folds are by ``groups``, i.e. subject).
        val: optional held-out windows, scored at the end (never used for choices).
        lambdas: lambda1 candidates (one value: no cross-validation).
        folds: K of the K-fold cross-validation over subjects.
        threshold, prune_by: an edge is pruned when its measure is below ``threshold``:
            ``"strength"`` (default) ``|w_(u,v)| * ||W_0[block v, column u]||``, the norm of its
            effective first-layer weights (:meth:`MNODE.edge_strengths`; invariant to the
            ``w``/``W`` rescaling a finite ``lambda2`` allows), or ``"weight"`` ``|w_(u,v)|`` (the
            paper's rule; weights start at 1).
        rule: ``"min"`` (lowest mean CV score) or ``"1se"`` (largest lambda within one
            standard error of the lowest).
        lam2: weight of ``||Theta||^2`` (network weights).
        hidden, activation: per-group network widths and activation; ``enc_hidden`` the
            encoder's hidden width.
        epochs: training epochs (CV and full fit); ``retrain_epochs`` for the reduced model
            (default ``epochs // 2``); ``cv_retrain_epochs`` retrains each fold's pruned model
            before it is scored (default ``epochs // 4``), so that lambda is judged by the
            pruned model's accuracy, not by the L1 shrinkage of the weights it keeps.
        backend: solver backend for every fit (``"cpu"``: compiled kernels; ``"reference"``).
        progress: ``None``/``True``: a bar when stderr is a terminal, else one line per stage.
    """
    t_all = time.perf_counter()
    if not isinstance(graph, HGSGraph):
        raise ValueError(f"graph must be a hf.hgs.HGSGraph, got {type(graph).__name__}")
    if not isinstance(train_w, Windows):
        raise ValueError(f"train_w must be hf.hgs.Windows, got {type(train_w).__name__}")
    if train_w.n_obs != len(graph.observables):
        raise ValueError(f"the data have {train_w.n_obs} observed columns but the graph {len(graph.observables)} observables")
    if train_w.n_inputs != graph.n_inputs:
        raise ValueError(f"the data have {train_w.n_inputs} input columns but the graph {graph.n_inputs} inputs")
    if val is not None and (val.n_obs != train_w.n_obs or val.n_inputs != train_w.n_inputs or val.ctx.shape[1] != train_w.ctx.shape[1]):
        raise ValueError("val must have the same observables, inputs and context features as train_w")
    lambdas = [float(x) for x in lambdas]
    if not lambdas or any(not math.isfinite(x) or x < 0 for x in lambdas):
        raise ValueError(f"lambdas must be a non-empty list of finite values >= 0, got {lambdas}")
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    if prune_by not in ("strength", "weight"):
        raise ValueError(f"prune_by must be 'strength' or 'weight', got {prune_by!r}")
    if rule not in ("min", "1se"):
        raise ValueError(f"rule must be 'min' or '1se', got {rule!r}")
    prog = Progress(progress)
    cv_retrain_epochs = epochs // 4 if cv_retrain_epochs is None else int(cv_retrain_epochs)
    rg = graph.relax(closure=closure)
    scaler = Scaler.fit(train_w)
    kw: Dict[str, Any] = dict(hidden=hidden, activation=activation, enc_hidden=enc_hidden)
    tkw: Dict[str, Any] = dict(lam2=lam2, lr=lr, batch_size=batch_size, backend=backend, rtol=rtol, atol=atol)
    prog.stage(f"relaxed graph: {rg.n_states} states in {rg.n_groups} groups, {len(rg.feature_edges)} edges")

    # ---- step 2: lambda1 by K-fold CV over subjects
    t0 = time.perf_counter()
    cv: Dict[float, List[float]] = {}
    if len(lambdas) > 1:
        splits = list(train_w.kfold(folds, seed=seed))
        for i, lam in enumerate(lambdas):
            cv[lam] = []
            for k, (tr, va) in enumerate(splits):
                sc = Scaler.fit(tr)
                m = fit_full(rg, tr, sc, lam, seed=seed + k, progress=prog, desc=f"cv lambda {i + 1}/{len(lambdas)} fold {k + 1}/{folds}",
                             epochs=epochs, **kw, **tkw)  # fmt: skip
                _mask_edges(m, _prune(m, threshold, prune_by))
                if cv_retrain_epochs > 0:
                    train(m, tr, sc, lam1=0.0, epochs=cv_retrain_epochs, seed=seed + k, progress=prog, desc="  retrain pruned", **tkw)
                cv[lam].append(errors(m, va, sc, backend, rtol=rtol, atol=atol)["mse_norm"])
            prog.stage(f"cv lambda1={lam:g}: mean val mse {sum(cv[lam]) / len(cv[lam]):.4g}")
        lam1 = _choose(cv, rule)
    else:
        lam1 = lambdas[0]
    t_cv = time.perf_counter() - t0

    # ---- step 3: fit with lambda1, prune, drop unreachable states, retrain
    t0 = time.perf_counter()
    full = fit_full(rg, train_w, scaler, lam1, seed=seed, progress=prog, desc="full fit", epochs=epochs, **kw, **tkw)
    t_fit = time.perf_counter() - t0
    params_full = full.n_params()
    weights = full.edge_strengths() if prune_by == "strength" else full.edge_weights()
    kept = _prune(full, threshold, prune_by)
    reduced_rg, keep_states, keep_groups = rg.prune(kept)
    t0 = time.perf_counter()
    model = MNODE(reduced_rg, train_w.ctx.shape[1], hidden, activation, enc_hidden)
    transfer(full, model, keep_states, keep_groups)
    re_ep = epochs // 2 if retrain_epochs is None else retrain_epochs
    if re_ep > 0:
        train(model, train_w, scaler, lam1=0.0, epochs=re_ep, seed=seed, progress=prog, desc="retrain reduced", **tkw)
    t_re = time.perf_counter() - t0
    gname = [rg.group_name(g) for g in range(rg.n_groups)]
    alive_f = set(keep_states) | set(range(rg.n_states, rg.n_states + rg.n_inputs))
    final = [(f, g) for f, g in kept if f in alive_f and g in set(keep_groups)]
    kept_named = sorted((rg.names[f], gname[g]) for f, g in final)
    all_named = sorted((rg.names[f], gname[g]) for f, g in rg.feature_edges)
    res = HGSResult(
        graph=graph,
        relaxed=rg,
        reduced=reduced_rg,
        model=model,
        scaler=scaler,
        lam1=lam1,
        cv_scores=cv,
        edge_weights={(rg.names[f], gname[g]): v for (f, g), v in sorted(weights.items())},
        kept_edges=kept_named,
        removed_edges=[e for e in all_named if e not in set(kept_named)],
        removed_states=[rg.names[s] for s in range(rg.n_states) if s not in keep_states],
        params_full=params_full,
        params_reduced=model.n_params(),
    )
    res.train_metrics = errors(model, train_w, scaler, backend, rtol=rtol, atol=atol)
    if val is not None:
        res.val_metrics = errors(model, val, scaler, backend, rtol=rtol, atol=atol)
    res.seconds = {"cv": t_cv, "fit": t_fit, "retrain": t_re, "total": time.perf_counter() - t_all}
    prog.stage(f"done: lambda1={lam1:g}, kept {len(res.kept_edges)}/{len(all_named)} edges, removed states {res.removed_states}")
    return res


@torch.no_grad()
def _mask_edges(model: MNODE, kept: List[Tuple[int, int]]) -> None:
    """Mask off every first-layer connection of the edges not in ``kept``."""
    mlp = model.field.nn
    assert mlp is not None and mlp.edge_rows is not None
    keep = torch.zeros(model.rg.n_groups, mlp.in_dim, dtype=torch.bool)
    for f, g in kept:
        keep[g, f] = True
    mlp.set_mask(0, mlp.masks[0] & keep[mlp.edge_rows])


def _choose(cv: Dict[float, List[float]], rule: str) -> float:
    means = {k: sum(v) / len(v) for k, v in cv.items()}
    best = min(means, key=lambda k: (means[k], -k))
    if rule == "min":
        return best
    v = cv[best]
    n = len(v)
    se = (sum((x - means[best]) ** 2 for x in v) / max(1, n - 1)) ** 0.5 / n**0.5
    return max(k for k in means if means[k] <= means[best] + se)
