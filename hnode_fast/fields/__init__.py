"""Fields: masked networks, mechanistic graphs, hybrid fields and their flat FieldSpec."""

from .hybrid import HybridField
from .mechanistic import Constant, Hill, Input, Linear, MassAction, MechanisticGraph, MichaelisMenten, Term
from .mlp import ACTIVATIONS, MaskedMLP
from .spec import FieldSpec

__all__ = [
    "ACTIVATIONS",
    "MaskedMLP",
    "Constant",
    "Hill",
    "Input",
    "Linear",
    "MassAction",
    "MechanisticGraph",
    "MichaelisMenten",
    "Term",
    "HybridField",
    "FieldSpec",
]
