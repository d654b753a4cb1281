"""Read a plain ``nn.Sequential`` (``nn.Linear`` and activations) as a :class:`MaskedMLP`.

The MaskedMLP built by :func:`mlp_from_sequential` holds the SAME ``nn.Linear`` modules (their
parameters are shared, not copied), so an optimizer built on the user's module trains the
compiled solve, and the module's forward equals the Sequential's::

    nn.Sequential(nn.Linear(2, 50), nn.Tanh(), nn.Linear(50, 2))
        -> MaskedMLP(2, 2, hidden=(50,), activation=("tanh",)), all-ones masks

Supported: ``nn.Linear`` (with or without bias), ``nn.Tanh, nn.ReLU, nn.ELU(alpha=1),
nn.Softplus(beta=1, threshold=20), nn.SiLU, nn.Sigmoid`` after a hidden layer, ``nn.Identity``
anywhere, nested ``nn.Sequential``. Two ``nn.Linear`` in a row have an identity activation
between them. The Sequential must start and end with ``nn.Linear`` (the compiled network has no
input transform and no output activation).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from torch import nn

# exact module types (a subclass may override forward) -> activation name, with the default
# arguments the kernels implement
_ACTIVATION_MODULES = {
    nn.Tanh: "tanh",
    nn.ReLU: "relu",
    nn.ELU: "elu",
    nn.Softplus: "softplus",
    nn.SiLU: "silu",
    nn.Sigmoid: "sigmoid",
}

SUPPORTED = "nn.Linear, nn.Tanh, nn.ReLU, nn.ELU(alpha=1), nn.Softplus(beta=1, threshold=20), nn.SiLU, nn.Sigmoid, nn.Identity"


def _flatten(module: nn.Module, prefix: str) -> List[Tuple[str, nn.Module]]:
    """``(path, module)`` of the leaves of nested Sequentials, in call order."""
    if type(module) is nn.Sequential:
        out: List[Tuple[str, nn.Module]] = []
        for name, child in module.named_children():
            out += _flatten(child, f"{prefix}.{name}" if prefix else name)
        return out
    return [(prefix or type(module).__name__, module)]


def _unsupported(path: str, module: nn.Module, why: str = "") -> ValueError:
    return ValueError(
        f"layer {path} ({module!r}) is not supported{': ' + why if why else ''}. "
        f"Compiled fields take an nn.Sequential of {SUPPORTED}; run other modules as a plain "
        "callable (hf.odeint(func, y0, t), backend='reference')"
    )


def _activation(path: str, module: nn.Module) -> Optional[str]:
    """The activation name of ``module``, ``None`` for ``nn.Identity``; raises if unsupported."""
    if type(module) is nn.Identity:
        return None
    name = _ACTIVATION_MODULES.get(type(module))
    if name is None:
        raise _unsupported(path, module)
    if isinstance(module, nn.ELU) and module.alpha != 1.0:
        raise _unsupported(path, module, "only alpha=1")
    if isinstance(module, nn.Softplus) and (module.beta != 1.0 or module.threshold != 20.0):
        raise _unsupported(path, module, "only beta=1, threshold=20")
    return name


def parse_sequential(module: nn.Module) -> Tuple[List[nn.Linear], List[str]]:
    """The ``nn.Linear`` layers of ``module`` (an ``nn.Sequential`` or one ``nn.Linear``) and the
    activation after each hidden layer (``"identity"`` when none). Raises ``ValueError`` naming
    the first layer that cannot be compiled."""
    if not isinstance(module, (nn.Sequential, nn.Linear)):
        raise ValueError(f"expected an nn.Sequential (or nn.Linear), got {type(module).__name__}")
    linears: List[nn.Linear] = []
    acts: List[str] = []
    pending: Optional[str] = None  # activation seen after the last Linear
    for path, m in _flatten(module, ""):
        if type(m) is nn.Linear:
            if linears:
                prev = linears[-1]
                if m.in_features != prev.out_features:
                    raise ValueError(f"layer {path} takes {m.in_features} features but the layer before gives {prev.out_features}")
                acts.append(pending or "identity")
            pending = None
            linears.append(m)
            continue
        if isinstance(m, nn.Linear):  # LazyLinear, NonDynamicallyQuantizableLinear, user subclasses
            raise _unsupported(path, m, "a subclass of nn.Linear (its forward may differ)")
        name = _activation(path, m)
        if name is None:
            continue
        if not linears:
            raise _unsupported(path, m, "an activation before the first nn.Linear transforms the input")
        if pending is not None:
            raise _unsupported(path, m, f"two activations in a row ({pending}, then {name})")
        pending = name
    if not linears:
        raise ValueError("the nn.Sequential holds no nn.Linear layer")
    if pending is not None:
        raise ValueError(
            f"the nn.Sequential ends with an activation ({pending}): the field's output layer must be "
            "nn.Linear (the compiled network has no output activation); remove it or add a final nn.Linear"
        )
    devs = {(p.device, p.dtype) for lin in linears for p in lin.parameters()}
    if len(devs) > 1:
        raise ValueError(f"the nn.Linear layers must share one device and dtype, got {sorted(map(str, devs))}")
    return linears, acts
