"""Fields: masked networks, mechanistic graphs, hybrid fields and their flat FieldSpec."""
from .mlp import ACTIVATIONS, MaskedMLP
from .mechanistic import (Constant, Hill, Input, Linear, MassAction, MechanisticGraph, MichaelisMenten,
                          Term)
from .hybrid import HybridField
from .spec import FieldSpec

__all__ = ["ACTIVATIONS", "MaskedMLP", "Constant", "Hill", "Input", "Linear", "MassAction",
           "MechanisticGraph", "MichaelisMenten", "Term", "HybridField", "FieldSpec"]
