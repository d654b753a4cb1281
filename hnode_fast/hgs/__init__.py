"""Hybrid Graph Sparsification end to end (Zou & Tian, arXiv 2505.18996).

From a mechanistic interaction graph (states, exogenous inputs, observables, edges) to a sparse
mechanistic neural ODE (MNODE) whose pruned graph is still a subgraph of the prior::

    import hnode_fast as hf
    g = hf.hgs.HGSGraph(states=["a", "b"], inputs=["u"], observables=["b"],
                        edges=[("u", "a"), ("a", "a"), ("a", "b"), ("b", "b")])
    w = hf.hgs.Windows.from_series(records, context=6, horizon=24)   # cut records into windows
    res = hf.hgs.sparsify(g, w, lambdas=(1e-3, 1e-2, 3e-2), folds=3, backend="cpu")
    print(res.summary()); res.plot(path="hgs.png")

Pieces: :class:`HGSGraph` (the prior, validated) -> :meth:`HGSGraph.relax` (cycles
collapsed, shortcuts) -> :class:`MNODE` (one block-masked ``MaskedMLP`` with an edge weight
per edge, plus an encoder for the latent initial values) -> :func:`train` (L1 on edge weights,
L2 on network weights) -> :func:`sparsify` (lambda1 by K-fold CV over subjects, pruning,
unreachable-state removal, retraining) -> :class:`HGSResult`.
"""

from .fit import Scaler, errors, predict, train
from .model import MNODE, build_field, group_masks
from .pipeline import HGSResult, fit_full, sparsify
from .spec import HGSGraph, RelaxedGraph, complete_graph
from .windows import Windows

__all__ = [
    "HGSGraph",
    "RelaxedGraph",
    "complete_graph",
    "Windows",
    "MNODE",
    "build_field",
    "group_masks",
    "Scaler",
    "train",
    "predict",
    "errors",
    "sparsify",
    "fit_full",
    "HGSResult",
]
