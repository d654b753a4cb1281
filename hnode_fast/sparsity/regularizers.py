"""Differentiable sparsity penalties on a hybrid field (all mask-aware).

Weight sparsity (Aliee et al. 2022): :func:`l1`, L0 gates (``MaskedMLP(gates="l0")``,
``mlp.l0_penalty()``). Feature sparsity: :func:`path_penalty` (PathReg) and
:func:`cnode_path_l1`. HGS (Zou & Tian 2025): :func:`edge_l1` on edge weights with :func:`l2`
on network weights. :func:`input_dependencies` is the object users inspect.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..fields.hybrid import HybridField
from ..fields.mlp import MaskedMLP, _tensor_sum


def _mlp(field) -> Optional[MaskedMLP]:
    if isinstance(field, MaskedMLP):
        return field
    if isinstance(field, HybridField):
        return field.nn
    raise ValueError(f"field must be a hf.HybridField or hf.MaskedMLP, got {type(field).__name__}")


def _zero(field) -> torch.Tensor:
    p = next(iter(field.parameters()), None)
    return torch.zeros((), dtype=p.dtype if p is not None else torch.get_default_dtype(), device=p.device if p is not None else None)


def l1(field) -> torch.Tensor:
    """``sum_l sum_ij |W_l * M_l|``: L1 on the effective (masked) network weights."""
    mlp = _mlp(field)
    if mlp is None:
        return _zero(field)
    return _tensor_sum(mlp.effective_weight(i).abs().sum() for i in range(mlp.n_layers))


def l2(field) -> torch.Tensor:
    """``sum_l ||W_l * M_l||^2``: squared L2 on effective network weights (HGS's lambda2 term)."""
    mlp = _mlp(field)
    if mlp is None:
        return _zero(field)
    return _tensor_sum(mlp.effective_weight(i).pow(2).sum() for i in range(mlp.n_layers))


def edge_l1(field) -> torch.Tensor:
    """HGS edge penalty: ``sum |g_term|`` over unmasked mechanistic terms with learnable gates,
    plus ``sum |w_(u,v)|`` over the network's live input-edge weights (``mlp.edge_weights``)."""
    total = _zero(field)
    mech = field.mech if isinstance(field, HybridField) else None
    if mech is not None and mech.gates.requires_grad:
        total = total + (mech.gates * mech.term_mask).abs().sum()
    mlp = _mlp(field)
    if mlp is not None and mlp.edge_weights is not None:
        total = total + (mlp.edge_weights * mlp.edge_live()).abs().sum()
    return total


def _abs_chain(mats):
    """``|W_L| @ ... @ |W_1|`` for a list of (out, in) matrices (already absolute)."""
    P = mats[0]
    for W in mats[1:]:
        P = W @ P
    return P


def path_penalty(field) -> torch.Tensor:
    """PathReg: ``mean_ij (|W_L~| ... |W_1~|)_ij`` with ``W~ = W * M * z`` (z: L0 gates if any).

    Penalises input->output paths, i.e. feature dependencies. Shape of the product:
    ``(out_dim, in_dim)``; one chain of matrix products.
    """
    mlp = _mlp(field)
    if mlp is None:
        return _zero(field)
    return _abs_chain([w.abs() for w in mlp.effective_weights()]).mean()


def cnode_path_l1(field) -> torch.Tensor:
    """C-NODE-style path term on RAW weights: ``mean_ij (|W_1||W_2|...|W_L|)_ij`` (transposed
    order of our (out, in) storage, same matrix)."""
    mlp = _mlp(field)
    if mlp is None:
        return _zero(field)
    return _abs_chain([layer.weight.abs() for layer in mlp.layers]).mean()


def input_dependencies(field) -> torch.Tensor:
    """``(out_dim, in_dim)`` dependency strengths ``|W_L*M_L| ... |W_1*M_1|`` (detached).

    Entry ``(i, j)`` is zero exactly when no unmasked path connects input ``j`` to output ``i``
    (L0 gates, when present, enter at their deterministic test-time values).
    """
    mlp = _mlp(field)
    if mlp is None:
        raise ValueError("input_dependencies needs a field with a network (nn)")
    with torch.no_grad():
        was = mlp.training
        mlp.eval()
        try:
            mats = [w.abs() for w in mlp.effective_weights()]
        finally:
            mlp.train(was)
        return _abs_chain(mats)


def weight_sparsity(field, tol: float = 1e-5) -> float:
    """Fraction of network weights that are masked off or have ``|W| < tol``."""
    mlp = _mlp(field)
    if mlp is None:
        return 0.0
    total = sum(layer.weight.numel() for layer in mlp.layers)
    with torch.no_grad():
        zero = sum(int((mlp.effective_weight(i).abs() < tol).sum()) for i in range(mlp.n_layers))
    return zero / total


def feature_sparsity(field, tol: float = 1e-5) -> float:
    """Fraction of :func:`input_dependencies` entries below ``tol`` (Aliee et al.'s metric)."""
    P = input_dependencies(field)
    return float((P < tol).double().mean())
