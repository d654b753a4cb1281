"""The mechanistic neural ODE (MNODE) built from a :class:`RelaxedGraph`, and its encoder.

Field (states ``z (B, D)``, inputs ``u (B, K)``, ``G`` groups of ``h`` hidden units each)::

    dz_S(g)/dt = NN_g( w_(f,g) * x_f  for the features f with an edge (f, g) ),   x = [z, u]

for every group ``g`` (``S(g)`` its states: one state, or a merged cycle). All ``NN_g`` are
ONE :class:`hnode_fast.MaskedMLP` ``(D + K) -> G*h -> ... -> D`` with block masks (nothing
crosses between blocks) and HGS edge weights ``w`` (``mlp.edge_weights`` ``(G, D + K)``,
initialised to 1): it runs on every backend (``reference``, ``cpu``, ``cuda``, ``triton``).

Initial values (:class:`MNODE`): the observed states start at their observed value
``y(t0)``; the latent states start at ``E(ctx)``, a small encoder (one tanh hidden layer) over
the window's context (the last observations and the inputs' integrals before ``t0``), as in
the paper's encoder-decoder MNODE. With a context of one observation and no inputs before
``t0`` the encoder reduces to a learned function of ``y(t0)`` (e.g. a steady state).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import nn

from ..fields.hybrid import HybridField
from ..fields.mlp import MaskedMLP
from .spec import RelaxedGraph

__all__ = ["MNODE", "build_field", "group_masks", "transfer"]


def group_masks(rg: RelaxedGraph, hidden: Sequence[int]) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Block masks for ``rg`` (``hidden`` = per-group widths per layer, non-empty) and the
    first-layer row -> group map ``(G * hidden[0],)`` for ``add_edge_weights``."""
    D, K, Gn = rg.n_states, rg.n_inputs, rg.n_groups
    hs = [int(h) for h in hidden]
    if not hs or any(h < 1 for h in hs):
        raise ValueError(f"hidden must be a non-empty tuple of positive widths, got {tuple(hidden)}")
    adj = torch.zeros(Gn, D + K, dtype=torch.bool)
    for f, g in rg.feature_edges:
        adj[g, f] = True
    masks = [adj.repeat_interleave(hs[0], dim=0)]
    eye = torch.eye(Gn, dtype=torch.bool)
    for l in range(1, len(hs)):
        masks.append(eye.repeat_interleave(hs[l], dim=0).repeat_interleave(hs[l - 1], dim=1))
    gof = torch.as_tensor(rg.group_of(), dtype=torch.long)
    masks.append(eye[gof].repeat_interleave(hs[-1], dim=1))  # (D, G*h_last): state i sees its group's block
    rows = torch.arange(Gn).repeat_interleave(hs[0])
    return masks, rows


def build_field(rg: RelaxedGraph, hidden: Sequence[int] = (16,), activation: str = "tanh", dtype=torch.float64) -> HybridField:
    """The MNODE field of ``rg``: a :class:`HybridField` whose network reads ``[z, u]``."""
    D, K, Gn = rg.n_states, rg.n_inputs, rg.n_groups
    masks, rows = group_masks(rg, hidden)
    mlp = MaskedMLP(D + K, D, hidden=tuple(Gn * int(h) for h in hidden), activation=activation).to(dtype)
    for i, m in enumerate(masks):
        mlp.set_mask(i, m)
    mlp.add_edge_weights(rows)
    # each block sees fan_in = its own parents: rescale the default init so blocks with few
    # parents do not start with tiny weights (PyTorch's init uses the full layer's fan-in)
    with torch.no_grad():
        for i, layer in enumerate(mlp.layers):
            fan = masks[i].sum(dim=1).clamp(min=1).to(dtype)
            bound = 1.0 / fan.sqrt()
            layer.weight.uniform_(-1.0, 1.0).mul_(bound[:, None])
            if layer.bias is not None:
                layer.bias.uniform_(-1.0, 1.0).mul_(bound)
    return HybridField(nn=mlp, n_inputs=K)


class MNODE(nn.Module):
    """Field + encoder: ``z0 = [y(t0) at the observed states, E(ctx) at the latent ones]``.

    Args:
        rg: the relaxed graph.
        n_ctx: encoder input features ``C``.
        hidden, activation: per-group network widths and activation.
        enc_hidden: encoder hidden width (0: a linear encoder).
    """

    def __init__(self, rg: RelaxedGraph, n_ctx: int, hidden: Sequence[int] = (16,), activation: str = "tanh", enc_hidden: int = 32):
        super().__init__()
        self.rg = rg
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self.enc_hidden = int(enc_hidden)
        self.field = build_field(rg, self.hidden, activation)
        obs = list(rg.observables)
        self.latent = [i for i in range(rg.n_states) if i not in obs]
        self.obs_idx = obs
        self.n_ctx = int(n_ctx)
        n_lat = len(self.latent)
        if n_lat == 0:
            self.encoder = None
        elif self.enc_hidden > 0:
            self.encoder = nn.Sequential(nn.Linear(n_ctx, self.enc_hidden), nn.Tanh(), nn.Linear(self.enc_hidden, n_lat)).double()
        else:
            self.encoder = nn.Sequential(nn.Linear(n_ctx, n_lat)).double()

    def initial_state(self, y0: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """``y0 (B, n_obs)`` (normalised observables at ``t0``), ``ctx (B, C)`` -> ``z0 (B, D)``."""
        B = y0.shape[0]
        z0 = y0.new_zeros(B, self.rg.n_states)
        z0 = z0.index_copy(1, torch.as_tensor(self.obs_idx), y0)
        if self.encoder is not None:
            z0 = z0.index_copy(1, torch.as_tensor(self.latent), self.encoder(ctx))
        return z0

    def n_params(self) -> dict:
        """Effective non-zero parameters: ``field`` (unmasked non-zero weights, the biases of
        live outputs and hidden units, live edge weights) and ``encoder``."""
        mlp = self.field.nn
        assert mlp is not None
        n = 0
        with torch.no_grad():
            for i in range(mlp.n_layers):
                w = mlp.effective_weight(i)
                n += int((w != 0).sum())
                live_rows = mlp.masks[i].any(dim=1) if i < mlp.n_layers - 1 else torch.ones(mlp.out_dim, dtype=torch.bool)
                n += int((mlp.bias(i)[live_rows] != 0).sum())
            n += int(((mlp.edge_weights != 0) & mlp.edge_live()).sum()) if mlp.edge_weights is not None else 0
        ne = sum(int((p != 0).sum()) for p in self.encoder.parameters()) if self.encoder is not None else 0
        return {"field": n, "encoder": ne, "total": n + ne}

    def live_edges(self) -> List[Tuple[int, int]]:
        """Feature edges ``(f, g)`` still unmasked."""
        mlp = self.field.nn
        assert mlp is not None
        live = mlp.edge_live()
        return sorted((f, g) for f, g in self.rg.feature_edges if bool(live[g, f]))

    def edge_weights(self) -> dict:
        """``{(f, g): |w_(f,g)|}`` for every edge of the graph (0 for pruned ones)."""
        mlp = self.field.nn
        assert mlp is not None and mlp.edge_weights is not None
        live = mlp.edge_live()
        w = mlp.edge_weights.detach().abs()
        return {(f, g): float(w[g, f]) if bool(live[g, f]) else 0.0 for f, g in self.rg.feature_edges}

    def edge_strengths(self) -> dict:
        """``{(f, g): |w_(f,g)| * ||W_0[rows of g, f] * M_0||_2}``: the norm of the edge's
        effective first-layer weights (0 for pruned edges). Unlike ``|w|`` alone it does not
        change when ``w`` shrinks and the network weights grow by the same factor, a trade
        that ``lambda1 |w| + lambda2 ||W||^2`` makes at a finite ``lambda2``."""
        mlp = self.field.nn
        assert mlp is not None and mlp.edge_weights is not None and mlp.edge_rows is not None
        with torch.no_grad():
            eff = mlp.effective_weight(0)
            out = {}
            for f, g in self.rg.feature_edges:
                out[(f, g)] = float(eff[mlp.edge_rows == g, f].norm())
        return out


@torch.no_grad()
def transfer(src: MNODE, dst: MNODE, keep_states: Sequence[int], keep_groups: Sequence[int]) -> None:
    """Copy ``src``'s trained weights into the reduced ``dst`` (built on ``src.rg.prune(...)``):
    the blocks of the kept groups, the kept features' columns, the kept latent encoder rows."""
    a, b = src.field.nn, dst.field.nn
    assert a is not None and b is not None
    D, K = src.rg.n_states, src.rg.n_inputs
    feats = list(keep_states) + [D + k for k in range(K)]
    hs = src.hidden

    def units(l: int) -> torch.Tensor:
        return torch.cat([torch.arange(g * hs[l], (g + 1) * hs[l]) for g in keep_groups])

    L = a.n_layers
    for l in range(L):
        rows = units(l) if l < L - 1 else torch.as_tensor(list(keep_states))
        cols = torch.as_tensor(feats) if l == 0 else units(l - 1)
        b.layers[l].weight.copy_(a.layers[l].weight[rows][:, cols])
        b.layers[l].bias.copy_(a.layers[l].bias[rows])
    assert a.edge_weights is not None and b.edge_weights is not None
    b.edge_weights.copy_(a.edge_weights[torch.as_tensor(list(keep_groups))][:, torch.as_tensor(feats)])
    if src.encoder is not None and dst.encoder is not None:
        old_lat = {s: i for i, s in enumerate(src.latent)}
        kept_lat = [old_lat[keep_states[s]] for s in dst.latent]
        last_a, last_b = src.encoder[-1], dst.encoder[-1]
        for i in range(len(src.encoder) - 1):
            dst.encoder[i].load_state_dict(src.encoder[i].state_dict())
        assert isinstance(last_a, nn.Linear) and isinstance(last_b, nn.Linear)
        last_b.weight.copy_(last_a.weight[kept_lat])
        last_b.bias.copy_(last_a.bias[kept_lat])
