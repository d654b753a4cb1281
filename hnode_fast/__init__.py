"""hnode_fast: fast sparse hybrid neural ODEs (mechanistic model + masked network).

Quick start::

    import torch, hnode_fast as hf
    mech = hf.MechanisticGraph(2, [hf.Linear(0, 1, 1.2), hf.Linear(1, None, 0.3)])
    field = hf.HybridField(mech=mech, nn=hf.MaskedMLP(2, 2, hidden=(16,)))
    print(field.describe())  # the equations: dz0/dt = -1.2*z0 + nn[0](z0, z1), ...
    y = hf.odeint(field, torch.tensor([[5.0, 0.0]]), torch.linspace(0, 10, 20))  # (T, B, D)
"""

from . import (  # noqa: E402
    data,
    graph,
    hgs,
    models,
    shooting,  # hf.shooting.MultipleShooting, hf.shooting.Shooting
    sparsity,  # noqa: E402  (hf.sparsity.*)
)
from ._version import __version__
from .backends.threads import get_cpu_threads, set_cpu_threads
from .events import Events, Inputs
from .fields import (
    ACTIVATIONS,
    Constant,
    FieldSpec,
    Hill,
    HybridField,
    Input,
    Linear,
    MaskedMLP,
    MassAction,
    MechanisticGraph,
    MichaelisMenten,
)
from .solve import odeint
from .train import FitResult, Observe, evaluate, fit, predict, prune_retrain, select_regularization  # noqa: E402
from .types import Stats, Status


def build_info() -> dict:
    """What was compiled: ``version, cpu, cuda, cuda_archs, triton, compilers, torch``."""
    from ._native import build_info as _bi

    return _bi()


__all__ = [
    "__version__",
    "Events",
    "Inputs",
    "ACTIVATIONS",
    "Constant",
    "FieldSpec",
    "Hill",
    "HybridField",
    "Input",
    "Linear",
    "MaskedMLP",
    "MassAction",
    "MechanisticGraph",
    "MichaelisMenten",
    "Stats",
    "Status",
    "odeint",
    "build_info",
    "set_cpu_threads",
    "get_cpu_threads",
    "sparsity",
    "data",
    "graph",
    "hgs",
    "models",
    "shooting",
    "fit",
    "FitResult",
    "Observe",
    "evaluate",
    "predict",
    "prune_retrain",
    "select_regularization",
]
