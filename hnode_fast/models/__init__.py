"""Interaction graphs of published mechanistic models, ready for :func:`hnode_fast.hgs.sparsify`."""

from .uva_padova import UVA_PADOVA_STATES, uva_padova_graph

__all__ = ["uva_padova_graph", "UVA_PADOVA_STATES"]
