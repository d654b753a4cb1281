"""Triton kernels of the masked field evaluation and its VJP (one tile of ``BM`` trajectories
per program; the field itself is in :mod:`.jit_field`)."""

import triton
import triton.language as tl

from .jit_field import _field, _field_vjp, _load_tile, _store_tile


@triton.jit
def _field_fwd_kernel(
    z_ptr,
    u_ptr,
    out_ptr,
    B,
    D,
    K,
    W0z,
    W0u,
    W1,
    W2,
    W3,
    b0,
    b1,
    b2,
    cst,
    tp,
    tab,
    n_terms,
    BM: tl.constexpr,
    NL: tl.constexpr,
    DP: tl.constexpr,
    KP: tl.constexpr,
    O0: tl.constexpr,
    O1: tl.constexpr,
    O2: tl.constexpr,
    HAS_U: tl.constexpr,
    ACT: tl.constexpr,
    PREC: tl.constexpr,
    scr_ptr,
    KC: tl.constexpr,
    SW: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # 64-bit offsets: rows * D and the scratch pass 2^31 at large B
    scr = scr_ptr + pid * (BM * SW)
    rows = pid * BM + tl.arange(0, BM)
    rm = rows < B
    z = _load_tile(z_ptr, rows, rm, D, DP)
    u = _load_tile(u_ptr, rows, rm, K, KP).to(z.dtype)
    out = _field(z, u, W0z, W0u, W1, W2, W3, b0, b1, b2, cst, tab, tp, n_terms, NL, DP, KP, O0, O1, O2, HAS_U, ACT, PREC, scr, KC)
    _store_tile(out_ptr, out, rows, rm, D, DP)


@triton.jit
def _field_bwd_kernel(
    z_ptr,
    u_ptr,
    g_ptr,
    dz_ptr,
    B,
    D,
    K,
    W0z,
    W0u,
    W1,
    W2,
    W3,
    b0,
    b1,
    b2,
    cst,
    tp,
    tab,
    n_terms,
    gW0z,
    gW0u,
    gW1,
    gW2,
    gW3,
    gb0,
    gb1,
    gb2,
    gcst,
    gtp,
    BM: tl.constexpr,
    NL: tl.constexpr,
    DP: tl.constexpr,
    KP: tl.constexpr,
    O0: tl.constexpr,
    O1: tl.constexpr,
    O2: tl.constexpr,
    HAS_U: tl.constexpr,
    ACT: tl.constexpr,
    PREC: tl.constexpr,
    scr_ptr,
    KC: tl.constexpr,
    SW: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # 64-bit offsets: rows * D and the scratch pass 2^31 at large B
    scr = scr_ptr + pid * (BM * SW)
    rows = pid * BM + tl.arange(0, BM)
    rm = rows < B
    z = _load_tile(z_ptr, rows, rm, D, DP)
    u = _load_tile(u_ptr, rows, rm, K, KP).to(z.dtype)
    g = _load_tile(g_ptr, rows, rm, D, DP)
    dz = _field_vjp(
        z,
        u,
        g,
        W0z,
        W0u,
        W1,
        W2,
        W3,
        b0,
        b1,
        b2,
        tab,
        tp,
        n_terms,
        gW0z,
        gW0u,
        gW1,
        gW2,
        gW3,
        gb0,
        gb1,
        gb2,
        gcst,
        gtp,
        NL,
        DP,
        KP,
        O0,
        O1,
        O2,
        HAS_U,
        ACT,
        PREC,
        scr,
        KC,
    )
    _store_tile(dz_ptr, dz, rows, rm, D, DP)
