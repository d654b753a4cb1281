"""HybridField: ``dz/dt = mech(z, u) + nn(x)``, ``x = z`` or ``x = [z, u]``."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..events import Inputs
from .mechanistic import MechanisticGraph
from .mlp import MaskedMLP
from .spec import FieldSpec, compile_field


class HybridField(nn.Module):
    """Mechanistic graph plus masked network; either part may be ``None``.

    Args:
        mech: :class:`MechanisticGraph` with ``D`` states (or ``None``).
        nn: :class:`MaskedMLP` with ``out_dim == D`` and ``in_dim`` equal to ``D`` (sees the
            states) or ``D + K`` (sees states and the ``K`` exogenous inputs).
        n_states, n_inputs: needed only when they cannot be read from ``mech``/``nn``.

    ``field(t, z)`` maps ``(B, D) -> (B, D)`` (torchdiffeq convention); ``t`` is a scalar or
    ``(B,)`` tensor and is used only to look up exogenous inputs (the field is autonomous
    otherwise). Inputs are given per solve as ``hf.odeint(..., inputs=hf.Inputs(...))`` or set
    with :meth:`set_inputs` for use under another solver.
    """

    def __init__(
        self,
        mech: Optional[MechanisticGraph] = None,
        nn: Optional[MaskedMLP] = None,
        n_states: Optional[int] = None,
        n_inputs: Optional[int] = None,
    ) -> None:
        super().__init__()
        if mech is not None and not isinstance(mech, MechanisticGraph):
            raise ValueError(f"mech must be a hf.MechanisticGraph, got {type(mech).__name__}")
        if nn is not None and not isinstance(nn, MaskedMLP):
            raise ValueError(f"nn must be a hf.MaskedMLP, got {type(nn).__name__}")
        if mech is not None:
            D = mech.n_states
        elif nn is not None:
            D = nn.out_dim
        elif n_states is not None:
            D = int(n_states)
        else:
            raise ValueError("HybridField needs mech, nn, or n_states")
        if n_states is not None and int(n_states) != D:
            raise ValueError(f"n_states={n_states} disagrees with the parts (D={D})")
        K = mech.n_inputs if mech is not None else 0
        if n_inputs is not None:
            if mech is not None and int(n_inputs) != mech.n_inputs:
                raise ValueError(f"n_inputs={n_inputs} disagrees with mech.n_inputs={mech.n_inputs}")
            K = int(n_inputs)
        if nn is not None:
            if nn.out_dim != D:
                raise ValueError(f"nn.out_dim must equal the number of states {D}, got {nn.out_dim}")
            if nn.in_dim not in (D, D + K):
                raise ValueError(f"nn.in_dim must be D={D} or D+K={D + K}, got {nn.in_dim}")
        self.mech = mech
        self.nn = nn
        self.n_states = D
        self.n_inputs = K
        self.nn_uses_inputs = nn is not None and K > 0 and nn.in_dim == D + K
        self.inputs: Optional[Inputs] = None  # hf.Inputs used by forward(t, z) when u is not passed

    def set_inputs(self, inputs: Optional[Inputs]) -> None:
        """Attach ``hf.Inputs`` for calls ``field(t, z)`` made by other solvers."""
        self.inputs = inputs

    # Deliberately shadows nn.Module.compile (torch.compile of the module) with a different
    # signature and result: the public API compiles the field to a FieldSpec.
    def compile(self, csr_threshold: float = 0.25) -> FieldSpec:  # type: ignore[override]
        """Flatten to a :class:`FieldSpec` (differentiable w.r.t. the parameters)."""
        return compile_field(self.mech, self.nn, self.n_states, self.n_inputs, self.nn_uses_inputs, csr_threshold=csr_threshold)

    def eval_u(self, z: torch.Tensor, u: Optional[torch.Tensor]) -> torch.Tensor:
        """``(B, D)`` states and ``(B, K)`` inputs (or ``None`` if ``K = 0``) -> ``(B, D)``."""
        if self.n_inputs > 0 and u is None:
            u = z.new_zeros(z.shape[0], self.n_inputs)
        out = z.new_zeros(z.shape) if self.mech is None else self.mech(z, u)
        if self.nn is not None:
            # nn_uses_inputs implies n_inputs > 0, so u is set here
            x = torch.cat([z, u.to(z.dtype)], dim=1) if self.nn_uses_inputs and u is not None else z
            out = out + self.nn(x)
        return out

    def forward(self, t, z: torch.Tensor) -> torch.Tensor:
        squeeze = z.dim() == 1
        if squeeze:
            z = z.unsqueeze(0)
        if z.dim() != 2 or z.shape[1] != self.n_states:
            raise ValueError(f"z must have shape (B, {self.n_states}), got {tuple(z.shape)}")
        u = None
        if self.n_inputs > 0:
            tt = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(z.shape[0])
            u = self.inputs.at(tt).to(z.dtype) if self.inputs is not None else None
        out = self.eval_u(z, u)
        return out.squeeze(0) if squeeze else out
