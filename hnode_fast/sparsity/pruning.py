"""Pruning: turn small weights and edges into masks (the FieldSpec then compacts them away)."""

from __future__ import annotations

import torch

from ..fields.hybrid import HybridField
from ..fields.mlp import MaskedMLP
from .regularizers import _mlp


def _network(field, what: str) -> MaskedMLP:
    """The field's masked network; ``ValueError`` when it has none (e.g. a mechanistic-only field)."""
    mlp = _mlp(field)
    if mlp is None:
        raise ValueError(f"{what} needs a field with a network (nn)")
    return mlp


@torch.no_grad()
def prune_threshold(field, threshold: float) -> int:
    """Mask off network weights with ``|W * M| < threshold``; returns how many were pruned."""
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    mlp = _network(field, "prune_threshold")
    n = 0
    for i in range(mlp.n_layers):
        w = mlp.effective_weight(i)
        m = mlp.masks[i]
        new = m & (w.abs() >= threshold)
        n += int((m & ~new).sum())
        mlp.set_mask(i, new)
    return n


@torch.no_grad()
def prune_magnitude(field, fraction: float, per_layer: bool = False) -> int:
    """Keep the largest ``1 - fraction`` of ALL network weights by ``|W * M|`` (globally, or
    per layer); already-masked weights count as pruned. Returns how many were newly pruned."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    mlp = _network(field, "prune_magnitude")
    ws = [mlp.effective_weight(i).abs() * mlp.masks[i] for i in range(mlp.n_layers)]
    n_before = sum(int(m.sum()) for m in mlp.masks)
    groups = [[i] for i in range(mlp.n_layers)] if per_layer else [list(range(mlp.n_layers))]
    for g in groups:
        flat = torch.cat([ws[i].flatten() for i in g])
        keep = int(round((1.0 - fraction) * flat.numel()))
        live = flat[torch.cat([mlp.masks[i].flatten() for i in g])]
        keep = min(keep, live.numel())
        if keep == 0:
            thr = float("inf")
        else:
            thr = float(torch.topk(live, keep).values.min())
        for i in g:
            mlp.set_mask(i, mlp.masks[i] & (ws[i] >= thr) & (ws[i] > 0) if keep else torch.zeros_like(mlp.masks[i]))
    return n_before - sum(int(m.sum()) for m in mlp.masks)


@torch.no_grad()
def prune_edges(field, threshold: float) -> int:
    """HGS: mask off mechanistic terms whose learnable gate has ``|g| < threshold`` and network
    input edges whose weight ``|w_(u,v)| < threshold``. Returns the number of edges pruned."""
    n = 0
    if isinstance(field, HybridField) and field.mech is not None and field.mech.gates.requires_grad:
        mech = field.mech
        new = mech.term_mask & (mech.gates.abs() >= threshold)
        n += int((mech.term_mask & ~new).sum())
        mech.set_term_mask(new)
    mlp = _mlp(field)
    if mlp is not None and mlp.edge_weights is not None:
        n += mlp.prune_edges(threshold)
    return n


@torch.no_grad()
def prune_gates(field) -> int:
    """Turn closed L0 gates into masks: every weight whose deterministic (eval-mode) gate
    ``z = clamp(sigmoid(log_alpha) (zeta - gamma) + gamma, 0, 1)`` is exactly 0 is masked off,
    so the FieldSpec compacts it away. Returns how many weights were newly masked (0 for a
    network without gates)."""
    mlp = _network(field, "prune_gates")
    if mlp.gates is None:
        return 0
    was = mlp.training
    mlp.eval()
    n = 0
    try:
        for i in range(mlp.n_layers):
            z = mlp.gate_values(i)
            m = mlp.masks[i]
            if z is None:
                continue
            new = m & torch.ne(z, 0).expand_as(m)
            n += int((m & ~new).sum())
            mlp.set_mask(i, new)
    finally:
        mlp.train(was)
    return n


# log_alpha of a frozen gate: hard-concrete samples with |log_alpha| = 20 are exactly 0 or 1 for
# every u in [eps, 1 - eps] (eps = 1e-6), so frozen gates are deterministic in training mode too
FROZEN_LOG_ALPHA = 20.0


@torch.no_grad()
def freeze_gates(field) -> int:
    """End the stochastic phase of L0 training: mask off the weights of closed gates
    (:func:`prune_gates`), fold the open gates' deterministic values into the weights
    (``W <- W * z_eval``) and pin every gate to exactly 1 (``log_alpha = +20``, no gradient),
    so the network computes the same function as the eval-mode gated one, with deterministic
    gates in training mode as well; then fine-tune the weights without ``reg["l0"]``.
    Returns how many weights were masked off."""
    mlp = _network(field, "freeze_gates")
    if mlp.gates is None:
        return 0
    n = prune_gates(field)
    was = mlp.training
    mlp.eval()
    try:
        zs = [mlp.gate_values(i) for i in range(mlp.n_layers)]
        for i, z in enumerate(zs):
            if z is None:
                continue
            w = mlp.layers[i].weight
            w.mul_(z.to(w.dtype).expand_as(w))
            la = mlp.log_alpha[i]
            la.fill_(FROZEN_LOG_ALPHA)
            la.requires_grad_(False)
    finally:
        mlp.train(was)
    return n
