"""Sparsity: regularizers (Aliee et al. 2022, Zou & Tian 2025), local error regularization
(Pal et al. 2023) and pruning. See each function's docstring for the exact formula."""

from .local import DP5_STABILITY_SIZE, LocalRegularizer, local_error, sample_t_reg, with_t_reg
from .pruning import freeze_gates, prune_edges, prune_gates, prune_magnitude, prune_threshold
from .regularizers import (
    cnode_path_l1,
    edge_l1,
    feature_sparsity,
    input_dependencies,
    l1,
    l2,
    path_penalty,
    weight_sparsity,
)

__all__ = [
    "DP5_STABILITY_SIZE",
    "LocalRegularizer",
    "with_t_reg",
    "local_error",
    "sample_t_reg",
    "freeze_gates",
    "prune_edges",
    "prune_gates",
    "prune_magnitude",
    "prune_threshold",
    "cnode_path_l1",
    "edge_l1",
    "feature_sparsity",
    "input_dependencies",
    "l1",
    "l2",
    "path_penalty",
    "weight_sparsity",
]
