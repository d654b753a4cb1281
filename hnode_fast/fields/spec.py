"""FieldSpec: a hybrid field flattened into int tables + one parameter vector.

Every kernel (C++, CUDA, Triton) consumes this form; the reference evaluates it too
(``hnode_fast.reference.spec_eval``) so it is tested against the module's own forward.

Packed int32 layout (``spec.ints``; all offsets are absolute indices)::

    header[0:12] = [version=1, D, K, n_feat, L, n_terms, const_off, n_in, n_out,
                    max_width, P, csr_threshold_permille]
    layers  at 12,               L rows of 8:  [n_in_l, n_out_l, fmt, w_off, b_off, act, ptr_off, col_off]
    terms   at 12 + 8L,          n_terms rows of 6: [kind, a, b, dst, flags, p_off]
    in_idx  at 12 + 8L + 6T,     n_in entries (indices into x = [z, u] of length n_feat)
    out_idx after in_idx,        n_out entries (state receiving each last-layer row)
    CSR arrays after out_idx:    per CSR layer row_ptr (n_out_l + 1) then col (nnz)

``params`` (float, differentiable w.r.t. the module's parameters): per layer either the dense
weight ``(n_out_l, n_in_l)`` row-major (``fmt = 0``) or the CSR values (``fmt = 1``) at
``w_off``, the bias ``(n_out_l,)`` at ``b_off``; the constant vector ``(D,)`` at ``const_off``
(biases of output rows that no unmasked path reaches, folded constants); then each term's
effective parameters at ``p_off`` (``exp`` applied for log parametrisation; the gate multiplied
into the first one). Absent values: ``a``, ``b``, ``dst`` are ``-1``.

Evaluation::

    h_0 = x[in_idx];  h_{l+1} = act_l(W_l h_l + b_l)   (act of the last layer = identity)
    dz = const;  dz[out_idx] += h_L;  dz += sum over terms (see fields.mechanistic)

Compaction: hidden units whose every unmasked input is a constant unit are constants
(folded into the next layer's bias); units with no unmasked path to an output are dropped;
input features nobody reads are dropped. Layers with density below ``csr_threshold`` use CSR.
The result equals the masked network exactly (in exact arithmetic).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from .mlp import MaskedMLP, apply_activation

HEADER = 12
LAYER_COLS = 8
TERM_COLS = 6
FMT_DENSE, FMT_CSR = 0, 1


@dataclass
class FieldSpec:
    """Flat form of a :class:`HybridField` (see the module docstring for the layout)."""

    ints: torch.Tensor  # int32 (N,), CPU
    params: torch.Tensor  # (P,) float, on the field's device

    # ---- header accessors
    def _h(self, i: int) -> int:
        return int(self.ints[i])

    @property
    def n_states(self) -> int:
        return self._h(1)

    @property
    def n_inputs(self) -> int:
        return self._h(2)

    @property
    def n_feat(self) -> int:
        return self._h(3)

    @property
    def n_layers(self) -> int:
        return self._h(4)

    @property
    def n_terms(self) -> int:
        return self._h(5)

    @property
    def const_off(self) -> int:
        return self._h(6)

    @property
    def max_width(self) -> int:
        return self._h(9)

    def layer_rows(self) -> torch.Tensor:
        L = self.n_layers
        return self.ints[HEADER:HEADER + LAYER_COLS * L].view(L, LAYER_COLS)

    def term_rows(self) -> torch.Tensor:
        a = HEADER + LAYER_COLS * self.n_layers
        return self.ints[a:a + TERM_COLS * self.n_terms].view(self.n_terms, TERM_COLS)

    def in_idx(self) -> torch.Tensor:
        a = HEADER + LAYER_COLS * self.n_layers + TERM_COLS * self.n_terms
        return self.ints[a:a + self._h(7)]

    def out_idx(self) -> torch.Tensor:
        a = HEADER + LAYER_COLS * self.n_layers + TERM_COLS * self.n_terms + self._h(7)
        return self.ints[a:a + self._h(8)]

    def n_weights(self) -> int:
        """Stored network weights (dense entries or CSR non-zeros) after compaction."""
        n = 0
        for row in self.layer_rows().tolist():
            n_in, n_out, fmt, w_off, b_off = row[:5]
            n += (b_off - w_off)
        return n

    def to(self, dtype: Optional[torch.dtype] = None, device=None) -> "FieldSpec":
        return FieldSpec(self.ints, self.params.to(dtype=dtype, device=device))

    def detach(self) -> "FieldSpec":
        return FieldSpec(self.ints, self.params.detach())


def _mlp_structure(mlp: MaskedMLP, gates: List[Optional[torch.Tensor]]):
    """Constant / useful unit sets of every layer (see the module docstring)."""
    live = []
    for i, m in enumerate(mlp.masks):
        lv = m.detach().cpu().clone()
        if gates[i] is not None:
            lv &= (gates[i].detach().cpu() != 0)[None, :]
        live.append(lv)
    L = len(live)
    const = []  # bool (out_l,) per layer
    prev_const = torch.zeros(mlp.in_dim, dtype=torch.bool)  # features are never constant
    for lv in live:
        reads_var = (lv & ~prev_const[None, :]).any(dim=1)
        c = ~reads_var
        const.append(c)
        prev_const = c
    useful = [None] * L
    useful[L - 1] = ~const[L - 1]
    for l in range(L - 2, -1, -1):
        feeds = (live[l + 1] & useful[l + 1][:, None]).any(dim=0)
        useful[l] = ~const[l] & feeds
    feat_useful = (live[0] & useful[0][:, None]).any(dim=0)
    return live, const, useful, feat_useful


def compile_field(mech, mlp: Optional[MaskedMLP], n_states: int, n_inputs: int,
                  nn_uses_inputs: bool, csr_threshold: float = 0.25) -> FieldSpec:
    """Build the :class:`FieldSpec` of ``mech + mlp`` (either may be ``None``)."""
    D, K = int(n_states), int(n_inputs)
    n_feat = D + K if nn_uses_inputs else D
    ref = mlp.layers[0].weight if mlp is not None else (mech.params if mech is not None else None)
    dtype = ref.dtype if ref is not None else torch.get_default_dtype()
    device = ref.device if ref is not None else torch.device("cpu")

    chunks: List[torch.Tensor] = []
    n_params = 0

    def push(t: torch.Tensor) -> int:
        nonlocal n_params
        off = n_params
        t = t.reshape(-1).to(dtype)
        chunks.append(t)
        n_params += t.numel()
        return off

    layer_rows: List[List[int]] = []
    csr_parts: List[tuple] = []  # (layer index, row_ptr list, col list)
    const_vec = torch.zeros(D, dtype=dtype, device=device)
    in_idx: List[int] = []
    out_idx: List[int] = []
    max_width = 0
    if mlp is not None:
        gates = [mlp.gate_values(i) for i in range(mlp.n_layers)]
        W = [mlp.effective_weight(i, gates[i]) for i in range(mlp.n_layers)]
        live, const, useful, feat_useful = _mlp_structure(mlp, gates)
        L = mlp.n_layers
        c_prev = None  # values of constant units of the previous layer
        cols_prev = torch.nonzero(feat_useful).flatten()
        kept_layers = []
        for l in range(L):
            b = mlp.bias(l)
            if l > 0 and bool(const[l - 1].any()):
                cidx = torch.nonzero(const[l - 1]).flatten().to(device)
                fold = W[l][:, cidx] @ c_prev
            else:
                fold = torch.zeros_like(b)
            pre = b + fold
            if bool(const[l].any()):
                cidx_l = torch.nonzero(const[l]).flatten().to(device)
                c_here = pre[cidx_l]
                c_prev = c_here if l == L - 1 else apply_activation(c_here, mlp.act_code)
            else:
                c_prev = pre.new_zeros(0)
            rows = torch.nonzero(useful[l]).flatten()
            kept_layers.append((l, rows, cols_prev, pre))
            cols_prev = rows
        # constant outputs
        if bool(const[L - 1].any()):
            cidx = torch.nonzero(const[L - 1]).flatten().to(device)
            const_vec = const_vec.index_add(0, cidx, c_prev)
        if all(r.numel() > 0 for (_, r, _, _) in kept_layers) and kept_layers[0][2].numel() > 0:
            in_idx = kept_layers[0][2].tolist()
            out_idx = torch.nonzero(useful[L - 1]).flatten().tolist()
            max_width = len(in_idx)
            for (l, rows, cols, pre) in kept_layers:
                rows_d, cols_d = rows.to(device), cols.to(device)
                wc = W[l][rows_d][:, cols_d]
                lv = live[l][rows][:, cols]
                density = float(lv.sum()) / max(1, lv.numel())
                act = mlp.act_code if l < L - 1 else 0
                max_width = max(max_width, rows.numel())
                if density < csr_threshold:
                    nz = torch.nonzero(lv)
                    counts = torch.bincount(nz[:, 0], minlength=rows.numel())
                    row_ptr = [0] + torch.cumsum(counts, 0).tolist()
                    w_off = push(wc[nz[:, 0].to(device), nz[:, 1].to(device)])
                    csr_parts.append((len(layer_rows), row_ptr, nz[:, 1].tolist()))
                    fmt = FMT_CSR
                else:
                    w_off = push(wc)
                    fmt = FMT_DENSE
                b_off = push(pre[rows_d])
                layer_rows.append([cols.numel(), rows.numel(), fmt, w_off, b_off, act, -1, -1])
        # else: every output is constant (no useful layer) -> only const_vec
    const_off = push(const_vec)

    term_rows: List[List[int]] = []
    if mech is not None and mech.n_terms > 0:
        eff = mech.effective_params()
        g = mech.effective_gates()
        for j, term in enumerate(mech.terms):
            if not bool(mech.term_mask[j]):
                continue
            p = eff[mech.param_offsets[j]:mech.param_offsets[j + 1]]
            p = torch.cat([p[:1] * g[j], p[1:]])
            p_off = push(p)
            src = term.sources()
            a = src[0] if len(src) > 0 else (term.k if term.kind == 5 else -1)
            bsrc = src[1] if len(src) > 1 else -1
            dst = getattr(term, "dst", None)
            term_rows.append([term.kind, a, bsrc, -1 if dst is None else dst, mech.term_flags(term), p_off])

    L = len(layer_rows)
    T = len(term_rows)
    base = HEADER + LAYER_COLS * L + TERM_COLS * T + len(in_idx) + len(out_idx)
    csr_flat: List[int] = []
    for (li, row_ptr, cols) in csr_parts:
        layer_rows[li][6] = base + len(csr_flat)
        csr_flat.extend(row_ptr)
        layer_rows[li][7] = base + len(csr_flat)
        csr_flat.extend(cols)
    header = [1, D, K, n_feat, L, T, const_off, len(in_idx), len(out_idx), max_width, n_params,
              int(round(csr_threshold * 1000))]
    flat = header + [v for r in layer_rows for v in r] + [v for r in term_rows for v in r] + in_idx + out_idx + csr_flat
    ints = torch.tensor(flat, dtype=torch.int32)
    params = torch.cat(chunks) if chunks else torch.zeros(0, dtype=dtype, device=device)
    return FieldSpec(ints=ints, params=params)
