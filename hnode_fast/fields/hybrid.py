"""HybridField: ``dz/dt = mech(z, u) + nn(x)``, ``x = z`` or ``x = [z, u]``."""

from __future__ import annotations

from typing import List, Optional, Union

import torch
from torch import nn

from ..events import Inputs
from .mechanistic import MechanisticGraph, format_equations, format_number, join_pieces, plural
from .mlp import MaskedMLP
from .spec import FieldSpec, compile_field


def _names(xs: List[str]) -> str:
    """``[a, b]``, or ``nothing`` for an empty list."""
    return f"[{', '.join(xs)}]" if xs else "nothing"


class HybridField(nn.Module):
    """Mechanistic graph plus masked network; either part may be ``None``.

    Args:
        mech: :class:`MechanisticGraph` with ``D`` states (or ``None``).
        nn: :class:`MaskedMLP` with ``out_dim == D`` and ``in_dim`` equal to ``D`` (sees the
            states) or ``D + K`` (sees states and the ``K`` exogenous inputs); or a plain
            ``torch.nn.Sequential`` of ``nn.Linear`` and ``nn.Tanh/ReLU/ELU/Softplus/SiLU/Sigmoid/
            Identity``, read with :meth:`MaskedMLP.from_sequential`: the field then holds the
            Sequential's own ``nn.Linear`` modules (parameters shared, not copied), so an
            optimizer over ``seq.parameters()`` trains the compiled solves on every backend.
        n_states, n_inputs: needed only when they cannot be read from ``mech``/``nn``.

    Example (a torchdiffeq-style network, compiled)::

        net = torch.nn.Sequential(torch.nn.Linear(2, 50), torch.nn.Tanh(), torch.nn.Linear(50, 2))
        field = hf.HybridField(nn=net)                   # dz/dt = net(z)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        y = hf.odeint(field, y0, t)                      # backend "cpu" (or "cuda") when built

    ``field(t, z)`` maps ``(B, D) -> (B, D)`` (torchdiffeq convention); ``t`` is a scalar or
    ``(B,)`` tensor and is used only to look up exogenous inputs (the field is autonomous
    otherwise). Inputs are given per solve as ``hf.odeint(..., inputs=hf.Inputs(...))`` or set
    with :meth:`set_inputs` for use under another solver. :meth:`describe` prints the equations
    (the mechanistic terms written out, plus which features each network output reads).
    """

    def __init__(
        self,
        mech: Optional[MechanisticGraph] = None,
        nn: Optional[Union[MaskedMLP, torch.nn.Sequential, torch.nn.Linear]] = None,
        n_states: Optional[int] = None,
        n_inputs: Optional[int] = None,
    ) -> None:
        super().__init__()
        if mech is not None and not isinstance(mech, MechanisticGraph):
            raise ValueError(f"mech must be a hf.MechanisticGraph, got {type(mech).__name__}")
        if isinstance(nn, (torch.nn.Sequential, torch.nn.Linear)):
            nn = MaskedMLP.from_sequential(nn)
        if nn is not None and not isinstance(nn, MaskedMLP):
            raise ValueError(f"nn must be a hf.MaskedMLP or a torch.nn.Sequential of nn.Linear and activations, got {type(nn).__name__}")
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

    # ------------------------------------------------------------------ describe
    def state_symbol(self, i: int) -> str:
        """Name of state ``i``: the mechanistic graph's ``state_names[i]`` if given, else ``z{i}``."""
        return self.mech.state_symbol(i) if self.mech is not None else f"z{i}"

    def nn_features(self) -> List[str]:
        """Names of the network's input features: the states, then ``u{k}(t)`` when it reads inputs."""
        feats = [self.state_symbol(i) for i in range(self.n_states)]
        if self.nn_uses_inputs:
            feats += [f"u{k}(t)" for k in range(self.n_inputs)]
        return feats

    def nn_reads(self) -> List[List[str]]:
        """Per state ``i``, the features network output ``i`` reads through its masks (a path of
        unmasked weights from the feature to output ``i``; see :meth:`MaskedMLP.mask_paths`)."""
        if self.nn is None:
            return [[] for _ in range(self.n_states)]
        paths = self.nn.mask_paths()
        feats = self.nn_features()
        return [[feats[j] for j in range(len(feats)) if bool(paths[i, j])] for i in range(self.n_states)]

    def _nn_constants(self) -> List[float]:
        """Network outputs at ``x = 0`` in eval mode (the value of the outputs that read nothing)."""
        mlp = self.nn
        if mlp is None:
            return [0.0] * self.n_states
        was = mlp.training
        mlp.eval()
        try:
            with torch.no_grad():
                w = mlp.layers[0].weight
                out = mlp(torch.zeros(1, mlp.in_dim, dtype=w.dtype, device=w.device))
        finally:
            mlp.train(was)
        return out[0].to("cpu", torch.float64).tolist()

    def _nn_summary(self):
        """``(reads, consts, read_any, fed)``: per-state features read (:meth:`nn_reads`), per-state
        constant value of outputs that read nothing (``None`` where the output reads something),
        the features read by any output, and the states the network feeds (reads something or is
        a non-zero constant)."""
        reads = self.nn_reads()
        values = self._nn_constants()
        consts = [None if reads[i] else values[i] for i in range(self.n_states)]
        read_any = [f for f in self.nn_features() if any(f in r for r in reads)]
        fed = [self.state_symbol(i) for i in range(self.n_states) if reads[i] or consts[i] not in (None, 0.0)]
        return reads, consts, read_any, fed

    def describe(self, digits: int = 6) -> str:
        """The right-hand side this field computes, one line per state::

            HybridField: 2 states, dz/dt = mech(z) + nn(z)
              ddepot/dt   = -1.5*depot
              dcentral/dt = +1.5*depot - 0.08*central + nn[1](central)

        The mechanistic part is written out as in :meth:`MechanisticGraph.describe` (current
        effective values, gates included); ``nn[i](...)`` is network output ``i`` with the features
        it reads through its masks. An output no unmasked path reaches is a constant (its bias
        chain): it shows as ``nn[i]()`` with its value in the notes, or not at all when it is 0.
        The lines after the equations describe each part (masked-out terms, gates, network
        size, unmasked weights, which features the network reads and which states it feeds)."""
        D, K = self.n_states, self.n_inputs
        parts = []
        if self.mech is not None:
            parts.append("mech(z, u)" if K else "mech(z)")
        if self.nn is not None:
            parts.append("nn([z, u])" if self.nn_uses_inputs else "nn(z)")
        head = f"HybridField: {plural(D, 'state')}"
        if K:
            head += f", {plural(K, 'input')}"
        head += ", dz/dt = " + (" + ".join(parts) or "0")
        rows = self.mech.rhs_pieces(digits) if self.mech is not None else [[] for _ in range(D)]
        notes: List[str] = []
        if self.mech is not None:
            m = self.mech
            logs = " (values: exp of the stored logs)" if m.param == "log" else ""
            notes.append(f"mech: {plural(m.n_terms, 'term')}, param={m.param!r}{logs}")
            notes += [f"  {n}" for n in m.describe_notes(digits)]
        if self.nn is not None:
            mlp = self.nn
            reads, consts, read_any, fed = self._nn_summary()
            constant = []
            for i in range(D):
                c = consts[i]
                if c is None:
                    rows[i] = rows[i] + [f"+nn[{i}]({', '.join(reads[i])})"]
                elif c != 0.0:
                    rows[i] = rows[i] + [f"+nn[{i}]()"]
                    constant.append(f"nn[{i}]() = {format_number(c, digits)}")
            n_on = sum(int(mk.sum()) for mk in mlp.masks)
            n_all = sum(mk.numel() for mk in mlp.masks)
            sizes = " -> ".join(str(n) for n in (mlp.in_dim,) + tuple(mlp.hidden) + (mlp.out_dim,))
            source = f" (the parameters of the given {mlp.source})" if mlp.source else ""
            notes.append(
                f"nn: MaskedMLP{source} {sizes}, {mlp.activation}; {n_on} of {n_all} weights unmasked; "
                f"reads {_names(read_any)}, feeds {_names(fed)}"
            )
            if constant:
                notes.append("  constant outputs (no unmasked path from any input, only biases): " + ", ".join(constant))
            extras = [x for x, on in (("L0 gates", mlp.gates is not None), ("HGS edge weights", mlp.edge_weights is not None)) if on]
            if extras:
                notes.append(f"  nn[i](...) lists paths by the masks; {' and '.join(extras)} also scale them")
        syms = [self.state_symbol(i) for i in range(D)]
        lines = [head] + format_equations(syms, [join_pieces(r) for r in rows]) + [f"  {n}" for n in notes]
        return "\n".join(lines)

    def extra_repr(self) -> str:
        out = f"n_states={self.n_states}, n_inputs={self.n_inputs}"
        if self.nn is not None and self.nn.layers[0].weight.device.type != "meta":
            _, _, read_any, fed = self._nn_summary()
            out += f"\nnn reads {_names(read_any)} and feeds {_names(fed)} (by its masks)"
        return out

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
