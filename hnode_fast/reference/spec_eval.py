"""Evaluate a :class:`~hnode_fast.fields.spec.FieldSpec` with torch ops (the kernels' oracle)."""

from __future__ import annotations

from typing import Optional

import torch

from ..fields.mlp import apply_activation
from ..fields.spec import FMT_CSR, FieldSpec
from ..fields.terms import FLAG_CONSUME, term_flux


def eval_spec(spec: FieldSpec, z: torch.Tensor, u: Optional[torch.Tensor] = None, params: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``dz/dt`` from the flat spec: ``z (B, D)``, ``u (B, K)`` -> ``(B, D)``.

    ``params`` overrides ``spec.params`` (e.g. a leaf for gradient tests).
    """
    p = spec.params if params is None else params
    p = p.to(z.dtype)
    ints = spec.ints.tolist()
    B, D = z.shape
    K = spec.n_inputs
    if u is None:
        u = z.new_zeros(B, K)  # (B, 0) without inputs
    out = p[spec.const_off : spec.const_off + D].expand(B, D)
    L = spec.n_layers
    if L > 0:
        x = torch.cat([z, u.to(z.dtype)], dim=1) if spec.n_feat > D else z
        h = x[:, spec.in_idx().long().to(z.device)]
        for row in spec.layer_rows().tolist():
            n_in, n_out, fmt, w_off, b_off, act, ptr_off, col_off = row
            if fmt == FMT_CSR:
                row_ptr = ints[ptr_off : ptr_off + n_out + 1]
                nnz = row_ptr[-1]
                cols = torch.tensor(ints[col_off : col_off + nnz], dtype=torch.long, device=z.device)
                rows = torch.repeat_interleave(
                    torch.arange(n_out, device=z.device),
                    torch.tensor(row_ptr[1:], device=z.device) - torch.tensor(row_ptr[:-1], device=z.device),
                )
                W = torch.zeros(n_out, n_in, dtype=z.dtype, device=z.device).index_put((rows, cols), p[w_off : w_off + nnz])
            else:
                W = p[w_off : w_off + n_out * n_in].view(n_out, n_in)
            h = apply_activation(h @ W.T + p[b_off : b_off + n_out], act)
        out = out.index_add(1, spec.out_idx().long().to(z.device), h)
    if spec.n_terms > 0:
        nparams = {0: 1, 1: 1, 2: 1, 3: 2, 4: 3, 5: 1}
        add_cols, add_vals, sub_cols, sub_vals = [], [], [], []
        for kind, a, b, dst, flags, p_off in spec.term_rows().tolist():
            pp = [p[p_off + i] for i in range(nparams[kind])]
            za = z[:, a] if (a >= 0 and kind != 5) else None
            zb = z[:, b] if b >= 0 else None
            uk = u[:, a].to(z.dtype) if kind == 5 else None
            flux = term_flux(kind, flags, pp, za, zb, uk)
            flux = flux.expand(B) if flux.dim() == 0 else flux
            if dst >= 0:
                add_cols.append(dst)
                add_vals.append(flux)
            if flags & FLAG_CONSUME:
                for s in (a, b):
                    if s >= 0:
                        sub_cols.append(s)
                        sub_vals.append(flux)
        if add_cols:
            out = out.index_add(1, torch.tensor(add_cols, device=z.device), torch.stack(add_vals, 1))
        if sub_cols:
            out = out.index_add(1, torch.tensor(sub_cols, device=z.device), -torch.stack(sub_vals, 1))
    return out
