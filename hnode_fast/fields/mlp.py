"""Masked multilayer perceptron: the neural part of a hybrid field.

Math (layer ``l`` of ``L``, ``x_0`` the input features)::

    x_{l+1} = act(x_l (W_l * M_l * g_l)^T + b_l)      l < L-1   (act = identity on the last layer)

``W_l`` is ``layers[l].weight`` with shape ``(out_l, in_l)``, ``M_l`` the bool mask buffer
``masks[l]`` of the same shape, and ``g_l`` optional L0 hard-concrete gates, one per *input
unit* of layer ``l`` (shape ``(in_l,)``, broadcast over rows). Masked entries get zero gradient
because only ``W * M`` enters the computation.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Iterator, List, Optional, Sequence, Tuple, Union, cast, overload

import torch
from torch import nn

ACTIVATIONS = {
    "identity": 0,
    "tanh": 1,
    "relu": 2,
    "elu": 3,
    "softplus": 4,
    "silu": 5,
    "sigmoid": 6,
}

# L0 hard-concrete constants (Louizos et al. 2018; Aliee et al. 2022 defaults).
L0_GAMMA = -0.1
L0_ZETA = 1.1
L0_BETA = 2.0 / 3.0
L0_EPS = 1e-6


if TYPE_CHECKING:

    class _LinearList(nn.ModuleList):
        """Typing-only view of ``MaskedMLP.layers``: an ``nn.ModuleList`` holding ``nn.Linear``."""

        @overload
        def __getitem__(self, idx: slice) -> nn.ModuleList: ...
        @overload
        def __getitem__(self, idx: int) -> nn.Linear: ...
        def __getitem__(self, idx): ...
        def __iter__(self) -> Iterator[nn.Linear]: ...
else:
    _LinearList = nn.ModuleList


def _tensor_sum(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """``sum(terms)`` of a non-empty iterable of tensors, typed as a tensor (same values and
    graph as the builtin ``sum``, whose ``0 +`` start is an exact no-op)."""
    it = iter(terms)
    total = next(it)
    for t in it:
        total = total + t
    return total


def apply_activation(x: torch.Tensor, code: int) -> torch.Tensor:
    """Apply activation number ``code`` (see ``ACTIVATIONS``) elementwise."""
    if code == 0:
        return x
    if code == 1:
        return torch.tanh(x)
    if code == 2:
        return torch.relu(x)
    if code == 3:
        return torch.nn.functional.elu(x)
    if code == 4:
        return torch.nn.functional.softplus(x)
    if code == 5:
        return torch.nn.functional.silu(x)
    if code == 6:
        return torch.sigmoid(x)
    raise ValueError(f"unknown activation code {code}")


class MaskedMLP(nn.Module):
    """MLP whose weights are multiplied by fixed bool masks (and optional L0 gates).

    Args:
        in_dim: input features (for a hybrid field: ``D`` states, or ``D + K`` with inputs).
        out_dim: outputs (``D`` for a hybrid field).
        hidden: hidden widths, e.g. ``(32, 32)``; ``()`` gives a single linear layer.
        activation: one of ``identity, tanh, relu, elu, softplus, silu, sigmoid`` for every hidden
            layer, or a sequence of such names, one per hidden layer (the last layer is linear).
            The triton backend needs one activation for all hidden layers.
        gates: ``None``, ``"l0"`` — hard-concrete gates on the input units of every layer
            (shape ``(in_l,)``, Louizos et al.'s group form; closing a first-layer gate drops a
            feature) — or ``"l0_weight"`` — one gate per weight (shape ``(out_l, in_l)``,
            Louizos et al.'s per-parameter form; closing gates removes single input->output
            paths). Initial keep probability 0.8 on the first layer and 0.5 on the others
            (Aliee et al.).
        bias: ``False`` for layers without biases.

    Shapes: ``forward(x)`` maps ``(B, in_dim) -> (B, out_dim)``.

    A plain ``nn.Sequential`` of ``nn.Linear`` and activations becomes a MaskedMLP that shares its
    parameters with :meth:`from_sequential` (``hf.HybridField(nn=seq)`` does it for you).

    Example::

        >>> net = hf.MaskedMLP(2, 2, hidden=(16, 16), activation="tanh")
        >>> net(torch.randn(5, 2)).shape
        torch.Size([5, 2])
    """

    edge_rows: Optional[torch.Tensor]  # buffer: block id of each first-layer row (HGS), or None

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (32, 32),
        activation: Union[str, Sequence[str]] = "tanh",
        gates: Optional[str] = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if int(in_dim) < 1 or int(out_dim) < 1:
            raise ValueError(f"in_dim and out_dim must be >= 1, got in_dim={in_dim}, out_dim={out_dim}")
        hidden = tuple(int(h) for h in hidden)
        if any(h < 1 for h in hidden):
            raise ValueError(f"hidden widths must be >= 1, got hidden={hidden}")
        acts: Tuple[str, ...] = (activation,) * len(hidden) if isinstance(activation, str) else tuple(activation)
        if len(acts) != len(hidden):
            raise ValueError(f"activation needs one name per hidden layer ({len(hidden)}), got {len(acts)}: {activation!r}")
        for a in (activation,) if isinstance(activation, str) else acts:
            if a not in ACTIVATIONS:
                raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {a!r}")
        if gates not in (None, "l0", "l0_weight"):
            raise ValueError(f"gates must be None, 'l0' or 'l0_weight', got {gates!r}")
        self.in_dim = int(in_dim)
        self.out_dim = int(out_dim)
        self.hidden = hidden
        # one name when every hidden layer shares it, else the names joined by ","
        self.activation = activation if isinstance(activation, str) else (acts[0] if len(set(acts)) == 1 else ",".join(acts))
        self.activations = acts  # per hidden layer
        self.act_codes: Tuple[int, ...] = tuple(ACTIVATIONS[a] for a in acts) + (0,)  # per layer; the last is linear
        self.source: Optional[str] = None  # "nn.Sequential" when built by from_sequential (parameters shared)
        self.gates = gates
        sizes = (self.in_dim,) + hidden + (self.out_dim,)
        self.layers = _LinearList(nn.Linear(sizes[i], sizes[i + 1], bias=bias) for i in range(len(sizes) - 1))
        for i, layer in enumerate(self.layers):
            self.register_buffer(f"mask_{i}", torch.ones_like(layer.weight, dtype=torch.bool))
        self._noise: Optional[List[torch.Tensor]] = None
        self.edge_weights: Optional[nn.Parameter] = None  # HGS edge weights, see add_edge_weights()
        self.register_buffer("edge_rows", None)
        if gates is not None:
            self.log_alpha = nn.ParameterList()
            for i, layer in enumerate(self.layers):
                p_drop = 0.2 if i == 0 else 0.5
                mean = math.log(1 - p_drop) - math.log(p_drop)
                shape = (layer.in_features,) if gates == "l0" else tuple(layer.weight.shape)
                la = torch.empty(shape).normal_(mean, 0.01)
                self.log_alpha.append(nn.Parameter(la))

    @classmethod
    def from_sequential(cls, module: nn.Module) -> "MaskedMLP":
        """A MaskedMLP that runs ``module`` (an ``nn.Sequential`` of ``nn.Linear`` and
        activations, see :mod:`hnode_fast.fields.sequential`), holding the SAME ``nn.Linear``
        modules: parameters are shared, not copied, so an optimizer over ``module.parameters()``
        trains every solve and ``MaskedMLP.from_sequential(seq)(x)`` equals ``seq(x)``. Masks start
        all ones; masks set later (pruning, ``hf.sparsity``) live on the MaskedMLP, so the
        Sequential's own forward does not see them. ``ValueError`` names the first layer that
        cannot be compiled."""
        from .sequential import parse_sequential

        linears, acts = parse_sequential(module)
        w = linears[0].weight
        hidden = tuple(lin.out_features for lin in linears[:-1])
        mlp = cls(linears[0].in_features, linears[-1].out_features, hidden=hidden, activation=tuple(acts), bias=True)
        mlp.layers = _LinearList(linears)
        for i, lin in enumerate(linears):
            mlp.register_buffer(f"mask_{i}", torch.ones(lin.weight.shape, dtype=torch.bool, device=w.device))
        mlp.source = "nn.Sequential"
        return mlp

    # ------------------------------------------------------------------ masks
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def masks(self) -> List[torch.Tensor]:
        """List of bool mask buffers, ``masks[i].shape == layers[i].weight.shape``."""
        return [getattr(self, f"mask_{i}") for i in range(len(self.layers))]

    def set_mask(self, i: int, m) -> None:
        """Set the bool mask of layer ``i`` (shape ``layers[i].weight.shape``)."""
        if not isinstance(i, int) or not 0 <= i < len(self.layers):
            raise ValueError(f"layer index i must be in [0, {len(self.layers)}), got {i!r}")
        m = torch.as_tensor(m)
        shape = tuple(self.layers[i].weight.shape)
        if tuple(m.shape) != shape:
            raise ValueError(f"mask for layer {i} must have shape {shape}, got {tuple(m.shape)}")
        if m.dtype != torch.bool:
            if m.is_floating_point() and not torch.isfinite(m).all():
                raise ValueError(f"mask for layer {i} contains NaN/inf")
            m = m != 0
        buf = getattr(self, f"mask_{i}")
        buf.copy_(m.to(buf.device))
        # new sparsity structure: torch.compile'd solves guard on this and recompile (backends/cpu.py)
        self._hnode_structure_version = getattr(self, "_hnode_structure_version", 0) + 1

    # ------------------------------------------------------------------ gates
    def gate_values(self, i: int) -> Optional[torch.Tensor]:
        """L0 gates ``z`` of layer ``i`` (shape ``(in_i,)``, or ``(out_i, in_i)`` for
        ``gates="l0_weight"``) or ``None`` without gates.

        Training mode uses the hard-concrete sample drawn by the last :meth:`resample_gates`
        (drawn on first use), so one ODE solve sees ONE gate sample in every field evaluation;
        call ``resample_gates()`` once per training iteration (``hf.fit`` does). Eval mode is
        deterministic: ``z = clamp(sigmoid(log_alpha) (zeta - gamma) + gamma, 0, 1)``.
        """
        if self.gates is None:
            return None
        la = self.log_alpha[i]
        if self.training:
            if self._noise is None:
                self.resample_gates()
            u = cast(List[torch.Tensor], self._noise)[i]  # drawn by resample_gates (gates are on)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + la) / L0_BETA)
        else:
            s = torch.sigmoid(la)
        return torch.clamp(s * (L0_ZETA - L0_GAMMA) + L0_GAMMA, 0.0, 1.0)

    def resample_gates(self) -> None:
        """Draw new uniform noise ``u ~ U(eps, 1 - eps)`` for the training-mode gates."""
        if self.gates is None:
            return
        self._noise = [torch.empty_like(la).uniform_(L0_EPS, 1 - L0_EPS).detach() for la in self.log_alpha]

    def l0_penalty(self) -> torch.Tensor:
        """Expected number of open gates: ``sum 1 - sigmoid(beta log(-gamma/zeta) - log_alpha)``."""
        if self.gates is None:
            raise ValueError("l0_penalty() needs MaskedMLP(..., gates='l0')")
        c = L0_BETA * math.log(-L0_GAMMA / L0_ZETA)
        return _tensor_sum((1 - torch.sigmoid(c - la)).sum() for la in self.log_alpha)

    # ------------------------------------------------------------------ HGS edge weights
    def add_edge_weights(self, row_blocks) -> None:
        """Add one learnable scalar per (block, input) edge, HGS style.

        ``row_blocks``: ``(out_0,)`` ints, the block (target state) of each first-layer row. The
        first layer's effective weight becomes ``W_0 * M_0 * w[row_blocks]`` with
        ``w`` of shape ``(n_blocks, in_dim)`` initialised to 1 — the edge ``u -> v`` is the
        weight ``w[v, u]`` that scales input ``u`` in state ``v``'s subnetwork.
        """
        rb = torch.as_tensor(row_blocks, dtype=torch.long).reshape(-1)
        if rb.numel() != self.layers[0].out_features or (rb < 0).any():
            raise ValueError(f"row_blocks must hold {self.layers[0].out_features} non-negative block ids")
        n_blocks = int(rb.max()) + 1
        w = self.layers[0].weight
        self.edge_rows = rb.to(w.device)
        self.edge_weights = nn.Parameter(torch.ones(n_blocks, self.in_dim, dtype=w.dtype, device=w.device))

    def edge_live(self) -> torch.Tensor:
        """``(n_blocks, in_dim)`` bool: edges with at least one unmasked first-layer weight."""
        if self.edge_weights is None or self.edge_rows is None:
            raise ValueError("edge_live() needs edge weights: call add_edge_weights() first")
        m = self.masks[0]
        nb = self.edge_weights.shape[0]
        return torch.stack([m[self.edge_rows == b].any(dim=0) for b in range(nb)])

    @torch.no_grad()
    def prune_edges(self, threshold: float) -> int:
        """Mask every first-layer weight of edges with ``|w| < threshold``; returns edges pruned."""
        if self.edge_weights is None:
            return 0
        live = self.edge_live()
        dead = live & (self.edge_weights.abs() < threshold)
        m0 = self.masks[0] & ~dead[self.edge_rows]
        self.set_mask(0, m0)
        return int(dead.sum())

    # ------------------------------------------------------------------ weights
    def effective_weight(self, i: int, gate: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``W_i * M_i`` (times the input gates of layer ``i`` when given, and for ``i = 0`` the
        HGS edge weights when present), shape ``(out_i, in_i)``."""
        w = self.layers[i].weight * getattr(self, f"mask_{i}")
        if i == 0 and self.edge_weights is not None:
            w = w * self.edge_weights[self.edge_rows]
        if gate is not None:
            w = w * gate
        return w

    def effective_weights(self) -> List[torch.Tensor]:
        """Effective weights of all layers, with deterministic-or-sampled gates applied."""
        return [self.effective_weight(i, self.gate_values(i)) for i in range(len(self.layers))]

    def bias(self, i: int) -> torch.Tensor:
        b = self.layers[i].bias
        if b is None:
            return self.layers[i].weight.new_zeros(self.layers[i].out_features)
        return b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim) -> (B, out_dim)``."""
        ws = self.effective_weights()
        last = len(self.layers) - 1
        for i, w in enumerate(ws):
            x = torch.nn.functional.linear(x, w, self.bias(i))
            if i < last:
                x = apply_activation(x, self.act_codes[i])
        return x

    def mask_paths(self) -> torch.Tensor:
        """``(out_dim, in_dim)`` bool: ``[i, j]`` is True when a path of unmasked weights connects
        input ``j`` to output ``i`` (``M_L ... M_1`` as a boolean product; the masks only, so
        unmasked weights that happen to be zero, closed L0 gates and zero HGS edge weights still
        count as a path)."""
        with torch.no_grad():
            reach = self.masks[0].detach().cpu().to(torch.float64)
            for m in self.masks[1:]:
                reach = ((m.detach().cpu().to(torch.float64) @ reach) > 0).to(torch.float64)
        return reach > 0

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, hidden={self.hidden}, activation={self.activation!r}, gates={self.gates!r}"
