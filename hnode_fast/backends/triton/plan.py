"""Per-spec "plan" for the Triton kernels (pure torch; no triton import).

Triton needs compile-time shapes, so a :class:`~hnode_fast.fields.spec.FieldSpec` is turned
into padded dense tensors, built from ``spec.params`` by differentiable gathers/scatters so
gradients computed by the kernels w.r.t. the plan tensors flow back to ``spec.params``:

* ``W0z (DP, O0)`` / ``W0u (KP, O0)``: first layer, stored transposed (in, out), with the
  ``in_idx`` gather folded in (columns of ``x = [z, u]``); ``W1..W3`` the next layers;
  the last layer has ``out_idx`` folded in (its output width is ``DP``).
* ``b0..b2`` biases of the hidden layers; ``cst (DP,)`` = spec constant vector + the scattered
  bias of the last layer.
* ``tab`` int32 term table ``(n_terms, 6)`` (kind, a, b, dst, flags, p_off) and ``tp`` =
  ``spec.params`` padded with 4 zeros (term parameters are read at ``p_off``).

Widths are padded to ``max(16, next power of two)`` (``tl.dot`` needs >= 16). CSR layers are
densified: the Triton path is for wide, dense-ish fields; very sparse small fields belong to
the C++/CUDA ensemble backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch

from ...fields.spec import FMT_CSR, FieldSpec

MAX_LAYERS = 4


def pad_width(n: int) -> int:
    p = 16
    while p < n:
        p *= 2
    return p


@dataclass
class Plan:
    """Padded dense tensors + compile-time constants of one spec (see the module docstring)."""

    tensors: List[torch.Tensor]  # [W0z, W0u, W1, W2, W3, b0, b1, b2, cst, tp]
    tab: torch.Tensor  # int32 (n_terms * 6,) on the device (at least 1 entry)
    n_terms: int
    D: int
    K: int
    meta: dict  # constexprs: NL, DP, KP, O0, O1, O2, HAS_U, ACT

    NAMES = ("W0z", "W0u", "W1", "W2", "W3", "b0", "b1", "b2", "cst", "tp")


def _dense_weight(spec: FieldSpec, row, p: torch.Tensor) -> torch.Tensor:
    n_in, n_out, fmt, w_off, b_off, act, ptr_off, col_off = row
    if fmt == FMT_CSR:
        ints = spec.ints
        row_ptr = ints[ptr_off : ptr_off + n_out + 1].long()
        nnz = int(row_ptr[-1])
        cols = ints[col_off : col_off + nnz].long().to(p.device)
        rows = torch.repeat_interleave(torch.arange(n_out), row_ptr[1:] - row_ptr[:-1]).to(p.device)
        return torch.zeros(n_out, n_in, dtype=p.dtype, device=p.device).index_put((rows, cols), p[w_off : w_off + nnz])
    return p[w_off : w_off + n_out * n_in].view(n_out, n_in)


def _pad2(w: torch.Tensor, r: int, c: int) -> torch.Tensor:
    return torch.nn.functional.pad(w, (0, c - w.shape[1], 0, r - w.shape[0]))


def _pad1(b: torch.Tensor, n: int) -> torch.Tensor:
    return torch.nn.functional.pad(b, (0, n - b.shape[0]))


def build_plan(spec: FieldSpec, dtype: torch.dtype, device) -> Plan:
    """Padded dense plan of ``spec`` (differentiable w.r.t. ``spec.params``)."""
    p = spec.params.to(dtype=dtype, device=device)
    D, K, n_feat, L = spec.n_states, spec.n_inputs, spec.n_feat, spec.n_layers
    if L > MAX_LAYERS:
        raise NotImplementedError(f"backend='triton' supports up to {MAX_LAYERS} network layers, got {L}")
    rows = spec.layer_rows().tolist()
    acts = {r[5] for r in rows[:-1]}
    if len(acts) > 1:
        raise NotImplementedError("backend='triton' needs one activation for all hidden layers")
    act = acts.pop() if acts else 0
    DP = pad_width(D)
    KP = pad_width(K) if K > 0 else 16
    dummy = torch.zeros(1, dtype=dtype, device=device)
    Ws = [dummy] * 5
    bs = [dummy] * 3
    outs = [16, 16, 16]
    cst = p[spec.const_off : spec.const_off + D]
    has_u = False
    if L > 0:
        in_idx = spec.in_idx().long().to(device)
        out_idx = spec.out_idx().long().to(device)
        widths = [r[1] for r in rows]  # outputs per layer
        padded_out = [pad_width(w) for w in widths[:-1]] + [DP]
        for l, row in enumerate(rows):
            w = _dense_weight(spec, row, p)  # (n_out, n_in)
            n_out, b_off = row[1], row[4]
            b = p[b_off : b_off + n_out]
            if l == 0:  # fold the feature gather: columns of x = [z, u]
                w = torch.zeros(w.shape[0], n_feat, dtype=dtype, device=device).index_add(1, in_idx, w)
            if l == L - 1:  # fold the output scatter into D rows
                w = torch.zeros(D, w.shape[1], dtype=dtype, device=device).index_add(0, out_idx, w)
                cst = cst + torch.zeros(D, dtype=dtype, device=device).index_add(0, out_idx, b)
            else:
                bs[l] = _pad1(b, padded_out[l]).contiguous()
            wt = w.t()  # (in, out)
            pout = padded_out[l]
            if l == 0:
                Ws[0] = _pad2(wt[:D], DP, pout).contiguous()
                if n_feat > D:
                    has_u = True
                    Ws[1] = _pad2(wt[D:], KP, pout).contiguous()
            else:
                Ws[l + 1] = _pad2(wt, padded_out[l - 1], pout).contiguous()
        outs = (padded_out[:-1] + [16, 16, 16])[:3]
    tp = torch.cat([p, p.new_zeros(4)])
    tab = spec.term_rows().reshape(-1).to(torch.int32)
    n_terms = spec.n_terms
    if tab.numel() == 0:
        tab = torch.zeros(6, dtype=torch.int32)
    meta = dict(NL=L, DP=DP, KP=KP, O0=outs[0], O1=outs[1], O2=outs[2], HAS_U=has_u, ACT=act)
    tensors = Ws + bs + [_pad1(cst, DP).contiguous(), tp]
    return Plan(tensors=tensors, tab=tab.to(device), n_terms=n_terms, D=D, K=K, meta=meta)


def flops_per_eval(plan: Plan) -> int:
    """Analytic FLOPs of one field evaluation per trajectory (unpadded network sizes unknown
    here, so this counts the padded dense dots: 2 * in * out per layer)."""
    m = plan.meta
    NL = m["NL"]
    if NL == 0:
        return 0
    ins = [m["DP"]] + [m["O0"], m["O1"], m["O2"]][: NL - 1]
    outs = [m["O0"], m["O1"], m["O2"]][: NL - 1] + [m["DP"]]
    f = sum(2 * a * b for a, b in zip(ins, outs))
    if m["HAS_U"]:
        f += 2 * m["KP"] * outs[0]
    return f
