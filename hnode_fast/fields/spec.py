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
    dz = const;  dz[out_idx] += h_L;  dz += sum over terms (see fields.terms)

Compaction: hidden units whose every unmasked input is a constant unit are constants
(folded into the next layer's bias); units with no unmasked path to an output are dropped;
input features nobody reads are dropped. Layers with density below ``csr_threshold`` use CSR.
The result equals the masked network exactly (in exact arithmetic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from .mlp import MaskedMLP, apply_activation

HEADER = 12
LAYER_COLS = 8
TERM_COLS = 6
FMT_DENSE, FMT_CSR = 0, 1
# header fields, by index (csrc/include/hnode/field.h HDR_*; tests/test_types.py checks they agree)
H_VERSION, H_D, H_K, H_NFEAT, H_L, H_NTERMS, H_CONST_OFF, H_NIN, H_NOUT, H_MAXW, H_P = range(11)


@dataclass
class FieldSpec:
    """Flat form of a :class:`HybridField` (see the module docstring for the layout)."""

    ints: torch.Tensor  # int32 (N,), CPU
    params: torch.Tensor  # (P,) float, on the field's device
    header: Optional[Tuple[int, ...]] = None  # ints[:HEADER] as Python ints, when known (no tensor read)

    # ---- header accessors
    def header_ints(self) -> Tuple[int, ...]:
        """``ints[:HEADER]`` as Python ints (the cached ``header`` when set)."""
        if self.header is None:
            self.header = tuple(int(v) for v in self.ints[:HEADER].tolist())
        return self.header

    def _h(self, i: int) -> int:
        return int(self.ints[i])

    @property
    def n_states(self) -> int:
        return self._h(H_D)

    @property
    def n_inputs(self) -> int:
        return self._h(H_K)

    @property
    def n_feat(self) -> int:
        return self._h(H_NFEAT)

    @property
    def n_layers(self) -> int:
        return self._h(H_L)

    @property
    def n_terms(self) -> int:
        return self._h(H_NTERMS)

    @property
    def const_off(self) -> int:
        return self._h(H_CONST_OFF)

    @property
    def max_width(self) -> int:
        return self._h(H_MAXW)

    def layer_rows(self) -> torch.Tensor:
        L = self.n_layers
        return self.ints[HEADER : HEADER + LAYER_COLS * L].view(L, LAYER_COLS)

    def term_rows(self) -> torch.Tensor:
        a = HEADER + LAYER_COLS * self.n_layers
        return self.ints[a : a + TERM_COLS * self.n_terms].view(self.n_terms, TERM_COLS)

    def in_idx(self) -> torch.Tensor:
        a = HEADER + LAYER_COLS * self.n_layers + TERM_COLS * self.n_terms
        return self.ints[a : a + self._h(H_NIN)]

    def out_idx(self) -> torch.Tensor:
        a = HEADER + LAYER_COLS * self.n_layers + TERM_COLS * self.n_terms + self._h(H_NIN)
        return self.ints[a : a + self._h(H_NOUT)]

    def n_weights(self) -> int:
        """Stored network weights (dense entries or CSR non-zeros) after compaction."""
        n = 0
        for row in self.layer_rows().tolist():
            n_in, n_out, fmt, w_off, b_off = row[:5]
            n += b_off - w_off
        return n

    def to(self, dtype: Optional[torch.dtype] = None, device=None) -> "FieldSpec":
        return FieldSpec(self.ints, self.params.to(dtype=dtype, device=device), self.header)

    def detach(self) -> "FieldSpec":
        return FieldSpec(self.ints, self.params.detach(), self.header)


def _mlp_structure(mlp: MaskedMLP, gates: List[Optional[torch.Tensor]]):
    """Constant / useful unit sets of every layer (see the module docstring)."""
    live = []
    for i, m in enumerate(mlp.masks):
        lv = m.detach().cpu().clone()
        g = gates[i]
        if g is not None:
            lv &= (g.detach().cpu() != 0).expand_as(lv)  # (in,) unit gates or (out, in) weight gates
        live.append(lv)
    L = len(live)
    const = []  # bool (out_l,) per layer
    prev_const = torch.zeros(mlp.in_dim, dtype=torch.bool)  # features are never constant
    for lv in live:
        reads_var = (lv & ~prev_const[None, :]).any(dim=1)
        c = ~reads_var
        const.append(c)
        prev_const = c
    useful: List[torch.Tensor] = [~const[L - 1]] * L  # every entry set below (last layer first)
    for l in range(L - 2, -1, -1):
        feeds = (live[l + 1] & useful[l + 1][:, None]).any(dim=0)
        useful[l] = ~const[l] & feeds
    feat_useful = (live[0] & useful[0][:, None]).any(dim=0)
    return live, const, useful, feat_useful


@dataclass
class _LayerPlan:
    """How one network layer's stored values are gathered (index tensors on the field's device)."""

    fold_idx: Optional[torch.Tensor]  # constant units of the previous layer, folded into this bias
    const_idx: Optional[torch.Tensor]  # constant units of this layer
    rows: torch.Tensor  # kept output units
    cols: torch.Tensor  # kept input units (features for layer 0)
    # stored weights: W[widx] (None: the whole W, row-major); dense: (rows[:, None], cols[None, :]),
    # CSR: the (row, col) of every stored non-zero
    widx: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    bidx: Optional[torch.Tensor] = None  # stored biases: pre[bidx] (None: all rows)
    # every stored entry is unmasked (CSR: always; dense: the kept block has no masked entry), so
    # without L0 gates or HGS edge weights the stored values are the raw weight's at widx
    raw: bool = False


@dataclass
class SpecStructure:
    """The value-independent part of a :class:`FieldSpec`: the int tables (which depend on the
    masks, the term mask, the term list and, when built with gates, the zero pattern of the
    L0 gates, never on parameter values) and the plan that gathers ``params`` from the module
    with plain, static-shape torch ops (:func:`gather_params`; traceable by ``torch.compile``).

    ``mask_refs`` are copies of the masks (and the term mask) it was built from, so a caller
    can check that they are still current without rebuilding (:func:`structure_matches`).
    """

    ints: torch.Tensor  # int32 (N,), CPU
    header: Tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    n_states: int
    layers: List[_LayerPlan]
    emit_layers: bool  # False when every network output is constant (then only ``const`` is stored)
    out_const_idx: Optional[torch.Tensor]  # constant outputs of the last layer
    # mechanistic parameters: (eff * g[term_of] where first else eff)[sel] (sel None: all of them)
    term_first: Optional[torch.Tensor]  # bool (P_mech,): first parameter of its term (gated)
    term_of: Optional[torch.Tensor]  # long (P_mech,): the term of each parameter
    term_sel: Optional[torch.Tensor]  # long: parameters of the unmasked terms, in order
    mask_refs: List[torch.Tensor]  # network masks, then the term mask (when there is a mech)

    @property
    def n_params(self) -> int:
        return self.header[10]


def spec_structure(
    mech,
    mlp: Optional[MaskedMLP],
    n_states: int,
    n_inputs: int,
    nn_uses_inputs: bool,
    csr_threshold: float = 0.25,
    gates: Optional[List[Optional[torch.Tensor]]] = None,
) -> SpecStructure:
    """The :class:`SpecStructure` of ``mech + mlp`` (either may be ``None``).

    ``gates``: the L0 gate values (one per layer or ``None``); gates that are exactly 0 remove
    units like masked weights do. ``None`` builds the structure from the masks only, which is
    valid for any gate values (a closed gate then multiplies its weights by 0 instead of
    removing them: the same field, up to rounding in the constant folding).
    """
    D, K = int(n_states), int(n_inputs)
    n_feat = D + K if nn_uses_inputs else D
    ref = mlp.layers[0].weight if mlp is not None else (mech.params if mech is not None else None)
    dtype = ref.dtype if ref is not None else torch.get_default_dtype()
    device = ref.device if ref is not None else torch.device("cpu")

    n_params = 0

    def alloc(n: int) -> int:
        nonlocal n_params
        off = n_params
        n_params += int(n)
        return off

    def idx(m: torch.Tensor) -> torch.Tensor:
        return torch.nonzero(m).flatten()

    layer_rows: List[List[int]] = []
    csr_parts: List[tuple] = []  # (layer index, row_ptr list, col list)
    in_idx: List[int] = []
    out_idx: List[int] = []
    max_width = 0
    plans: List[_LayerPlan] = []
    emit = False
    out_const_idx: Optional[torch.Tensor] = None
    mask_refs: List[torch.Tensor] = []
    if mlp is not None:
        L = mlp.n_layers
        mask_refs = [m.detach().clone() for m in mlp.masks]
        live, const, useful, feat_useful = _mlp_structure(mlp, list(gates) if gates is not None else [None] * L)
        cols_prev = idx(feat_useful)
        for l in range(L):
            fold_idx = idx(const[l - 1]).to(device) if l > 0 and bool(const[l - 1].any()) else None
            const_idx = idx(const[l]).to(device) if bool(const[l].any()) else None
            rows = idx(useful[l])
            plans.append(_LayerPlan(fold_idx, const_idx, rows, cols_prev))
            cols_prev = rows
        if bool(const[L - 1].any()):
            out_const_idx = idx(const[L - 1]).to(device)
        emit = all(lp.rows.numel() > 0 for lp in plans) and plans[0].cols.numel() > 0
        if emit:
            in_idx = plans[0].cols.tolist()
            out_idx = idx(useful[L - 1]).tolist()
            max_width = len(in_idx)
            for l, lp in enumerate(plans):
                rows, cols = lp.rows, lp.cols
                lv = live[l][rows][:, cols]
                density = float(lv.sum()) / max(1, lv.numel())
                act = mlp.act_codes[l]  # 0 (linear) on the last layer
                max_width = max(max_width, rows.numel())
                n_out_l, n_in_l = live[l].shape
                all_rows, all_cols = rows.numel() == n_out_l, cols.numel() == n_in_l
                if density < csr_threshold:
                    nz = torch.nonzero(lv)
                    counts = torch.bincount(nz[:, 0], minlength=rows.numel())
                    row_ptr = [0] + torch.cumsum(counts, 0).tolist()
                    w_off = alloc(nz.shape[0])
                    csr_parts.append((len(layer_rows), row_ptr, nz[:, 1].tolist()))
                    lp.widx = (rows[nz[:, 0]].to(device), cols[nz[:, 1]].to(device))
                    lp.raw = True
                    fmt = FMT_CSR
                else:
                    w_off = alloc(rows.numel() * cols.numel())
                    if not (all_rows and all_cols):
                        lp.widx = (rows.to(device)[:, None], cols.to(device)[None, :])
                    lp.raw = bool(lv.all())
                    fmt = FMT_DENSE
                lp.bidx = None if all_rows else rows.to(device)
                b_off = alloc(rows.numel())
                layer_rows.append([cols.numel(), rows.numel(), fmt, w_off, b_off, act, -1, -1])
        # else: every output is constant (no useful layer) -> only the constant vector
    const_off = alloc(D)

    term_rows: List[List[int]] = []
    term_first = term_of = term_sel = None
    if mech is not None:
        mask_refs.append(mech.term_mask.detach().clone())
        sel: List[int] = []
        first = torch.zeros(mech.param_offsets[-1], dtype=torch.bool)
        of = torch.zeros(mech.param_offsets[-1], dtype=torch.long)
        for j, term in enumerate(mech.terms):
            a0, a1 = mech.param_offsets[j], mech.param_offsets[j + 1]
            first[a0] = True
            of[a0:a1] = j
            if not bool(mech.term_mask[j]):
                continue
            sel.extend(range(a0, a1))
            p_off = alloc(a1 - a0)
            src = term.sources()
            a = src[0] if len(src) > 0 else (term.k if term.kind == 5 else -1)
            bsrc = src[1] if len(src) > 1 else -1
            dst = getattr(term, "dst", None)
            term_rows.append([term.kind, a, bsrc, -1 if dst is None else dst, mech.term_flags(term), p_off])
        if sel:
            mdev = mech.params.device
            term_first, term_of = first.to(mdev), of.to(mdev)
            term_sel = None if len(sel) == first.numel() else torch.tensor(sel, dtype=torch.long, device=mdev)

    L = len(layer_rows)
    T = len(term_rows)
    base = HEADER + LAYER_COLS * L + TERM_COLS * T + len(in_idx) + len(out_idx)
    csr_flat: List[int] = []
    for li, row_ptr, cols_l in csr_parts:
        layer_rows[li][6] = base + len(csr_flat)
        csr_flat.extend(row_ptr)
        layer_rows[li][7] = base + len(csr_flat)
        csr_flat.extend(cols_l)
    header = [1, D, K, n_feat, L, T, const_off, len(in_idx), len(out_idx), max_width, n_params, int(round(csr_threshold * 1000))]
    flat = header + [v for r in layer_rows for v in r] + [v for r in term_rows for v in r] + in_idx + out_idx + csr_flat
    return SpecStructure(
        ints=torch.tensor(flat, dtype=torch.int32),
        header=tuple(header),
        dtype=dtype,
        device=device,
        n_states=D,
        layers=plans,
        emit_layers=emit,
        out_const_idx=out_const_idx,
        term_first=term_first,
        term_of=term_of,
        term_sel=term_sel,
        mask_refs=mask_refs,
    )


def gather_params(st: SpecStructure, mech, mlp: Optional[MaskedMLP], gates: Optional[List[Optional[torch.Tensor]]] = None) -> torch.Tensor:
    """The ``(P,)`` parameter vector of structure ``st`` from the module's current values
    (differentiable; static shapes and no data-dependent control flow, so it traces under
    ``torch.compile``). ``gates``: the L0 gate values if already computed."""
    dtype = st.dtype
    chunks: List[torch.Tensor] = []
    const_vec = torch.zeros(st.n_states, dtype=dtype, device=st.device)
    if mlp is not None:
        L = mlp.n_layers
        if gates is None:
            gates = [mlp.gate_values(i) for i in range(L)]
        W: List[Optional[torch.Tensor]] = [None] * L

        def masked(l: int) -> torch.Tensor:
            """``W * M`` of layer ``l`` (times its gates and edge weights), made once."""
            w = W[l]
            if w is None:
                w = W[l] = mlp.effective_weight(l, gates[l])
            return w

        def stored_from(l: int, lp: _LayerPlan) -> torch.Tensor:
            """What layer ``l``'s stored weights are read from: the raw weight where ``lp.raw``
            allows it (one masking product and its backward less per layer), else ``masked``."""
            if lp.raw and mlp.gates is None and (l > 0 or mlp.edge_weights is None):
                return mlp.layers[l].weight
            return masked(l)

        pres: List[torch.Tensor] = []
        c_prev = const_vec.new_zeros(0)  # values of the constant units of the previous layer
        for l, lp in enumerate(st.layers):
            pre = mlp.bias(l)
            if lp.fold_idx is not None:
                pre = pre + masked(l)[:, lp.fold_idx] @ c_prev
            if lp.const_idx is not None:
                c_here = pre[lp.const_idx]
                c_prev = c_here if l == L - 1 else apply_activation(c_here, mlp.act_codes[l])
            pres.append(pre)
        if st.out_const_idx is not None:
            const_vec = const_vec.index_add(0, st.out_const_idx, c_prev)
        if st.emit_layers:
            for l, lp in enumerate(st.layers):
                wl = stored_from(l, lp)
                chunks.append(wl if lp.widx is None else wl[lp.widx])
                chunks.append(pres[l] if lp.bidx is None else pres[l][lp.bidx])
    chunks.append(const_vec)
    if mech is not None and st.term_first is not None:
        eff = mech.effective_params()
        p = torch.where(st.term_first, eff * mech.effective_gates()[st.term_of], eff)
        chunks.append(p if st.term_sel is None else p[st.term_sel])
    return torch.cat([c.reshape(-1) if c.dtype == dtype else c.reshape(-1).to(dtype) for c in chunks])


def structure_matches(st: SpecStructure, mech, mlp: Optional[MaskedMLP]) -> torch.Tensor:
    """0-dim bool tensor: the masks (and term mask) still equal those ``st`` was built from
    (traceable; used under ``torch.compile``, where the structure is a constant of the graph)."""
    cur = (list(mlp.masks) if mlp is not None else []) + ([mech.term_mask] if mech is not None else [])
    if len(cur) != len(st.mask_refs) or any(c.shape != r.shape for c, r in zip(cur, st.mask_refs)):
        return torch.zeros((), dtype=torch.bool)
    oks = [(c == r.to(c.device)).all().cpu() for c, r in zip(cur, st.mask_refs)]
    return torch.stack(oks).all() if oks else torch.ones((), dtype=torch.bool)


def compile_field(
    mech, mlp: Optional[MaskedMLP], n_states: int, n_inputs: int, nn_uses_inputs: bool, csr_threshold: float = 0.25
) -> FieldSpec:
    """Build the :class:`FieldSpec` of ``mech + mlp`` (either may be ``None``):
    :func:`spec_structure` (with the L0 gates' zero pattern) then :func:`gather_params`."""
    gates = [mlp.gate_values(i) for i in range(mlp.n_layers)] if mlp is not None else None
    st = spec_structure(mech, mlp, n_states, n_inputs, nn_uses_inputs, csr_threshold, gates=gates)
    return FieldSpec(ints=st.ints, params=gather_params(st, mech, mlp, gates=gates), header=st.header)
