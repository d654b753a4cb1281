"""Triton kernels of the fused Dormand–Prince 5(4) step and its VJP.

One tile of ``BM`` trajectories per program: the six stage evaluations (field in
:mod:`.jit_field`), the solution, the FSAL slope, the dense-output coefficients, the error norm,
the step-size controller (scipy RK45 rules, float64) and optionally the stiffness estimate; the
VJP recomputes the stages and runs the field VJPs backwards. Tableau coefficients are read from
a tensor in the compute dtype (no float32 literals).
"""

import triton
import triton.language as tl

from .jit_field import _field, _field_vjp, _load_tile, _store_tile

# ----------------------------------------------------------------------------- fused DP5 step
# coefficient tensor layout (compute dtype): A at 0..14 (rows 2..6), B at 15..20, E at 21..27,
# P (7 x 4, row-major) at 28..55.


@triton.jit
def _c(coef, i: tl.constexpr):
    return tl.load(coef + i)


@triton.jit
def _dp_stages(
    y,
    k1,
    hd,
    u,
    coef,
    W0z,
    W0u,
    W1,
    W2,
    W3,
    b0,
    b1,
    b2,
    cst,
    tab,
    tp,
    n_terms,
    NL: tl.constexpr,
    DP: tl.constexpr,
    KP: tl.constexpr,
    O0: tl.constexpr,
    O1: tl.constexpr,
    O2: tl.constexpr,
    HAS_U: tl.constexpr,
    ACT: tl.constexpr,
    PREC: tl.constexpr,
    scr,
    KC: tl.constexpr,
):
    g2 = y + (k1 * _c(coef, 0)) * hd
    k2 = _field(g2, u, W0z, W0u, W1, W2, W3, b0, b1, b2, cst, tab, tp, n_terms, NL, DP, KP, O0, O1, O2, HAS_U, ACT, PREC, scr, KC)
    g3 = y + (k1 * _c(coef, 1) + k2 * _c(coef, 2)) * hd
    k3 = _field(g3, u, W0z, W0u, W1, W2, W3, b0, b1, b2, cst, tab, tp, n_terms, NL, DP, KP, O0, O1, O2, HAS_U, ACT, PREC, scr, KC)
    g4 = y + (k1 * _c(coef, 3) + k2 * _c(coef, 4) + k3 * _c(coef, 5)) * hd
    k4 = _field(g4, u, W0z, W0u, W1, W2, W3, b0, b1, b2, cst, tab, tp, n_terms, NL, DP, KP, O0, O1, O2, HAS_U, ACT, PREC, scr, KC)
    g5 = y + (k1 * _c(coef, 6) + k2 * _c(coef, 7) + k3 * _c(coef, 8) + k4 * _c(coef, 9)) * hd
    k5 = _field(g5, u, W0z, W0u, W1, W2, W3, b0, b1, b2, cst, tab, tp, n_terms, NL, DP, KP, O0, O1, O2, HAS_U, ACT, PREC, scr, KC)
    g6 = y + (k1 * _c(coef, 10) + k2 * _c(coef, 11) + k3 * _c(coef, 12) + k4 * _c(coef, 13) + k5 * _c(coef, 14)) * hd
    k6 = _field(g6, u, W0z, W0u, W1, W2, W3, b0, b1, b2, cst, tab, tp, n_terms, NL, DP, KP, O0, O1, O2, HAS_U, ACT, PREC, scr, KC)
    y1 = y + hd * (k1 * _c(coef, 15) + k3 * _c(coef, 17) + k4 * _c(coef, 18) + k5 * _c(coef, 19) + k6 * _c(coef, 20))
    k7 = _field(y1, u, W0z, W0u, W1, W2, W3, b0, b1, b2, cst, tab, tp, n_terms, NL, DP, KP, O0, O1, O2, HAS_U, ACT, PREC, scr, KC)
    return g2, g3, g4, g5, g6, y1, k2, k3, k4, k5, k6, k7


@triton.jit
def _dp_err(y, y1, k1, k3, k4, k5, k6, k7, hd, tol, coef, cm, D):
    e = (k1 * _c(coef, 21) + k3 * _c(coef, 23) + k4 * _c(coef, 24) + k5 * _c(coef, 25) + k6 * _c(coef, 26) + k7 * _c(coef, 27)) * hd
    atol = tl.load(tol)
    rtol = tl.load(tol + 1)
    scale = atol + tl.maximum(tl.abs(y), tl.abs(y1)) * rtol
    r = tl.where(cm, e / scale, 0.0)
    en = tl.sqrt(tl.sum(r * r, 1) / D)
    return e, scale, r, en


@triton.jit
def _dp_step_fwd_kernel(
    y_ptr,
    f0_ptr,
    u_ptr,
    h_ptr,
    tol,
    coef,
    ctl,
    rej_ptr,
    y1_ptr,
    k7_ptr,
    q_ptr,
    err_ptr,
    hn_ptr,
    acc_ptr,
    st_ptr,
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
    STIFF: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # 64-bit offsets: rows * D and the scratch pass 2^31 at large B
    scr = scr_ptr + pid * (BM * SW)
    rows = pid * BM + tl.arange(0, BM)
    rm = rows < B
    cm = (tl.arange(0, DP) < D)[None, :]
    y = _load_tile(y_ptr, rows, rm, D, DP)
    k1 = _load_tile(f0_ptr, rows, rm, D, DP)
    u = _load_tile(u_ptr, rows, rm, K, KP).to(y.dtype)
    h = tl.load(h_ptr + rows, mask=rm, other=0.0)
    hd = h.to(y.dtype)[:, None]
    g2, g3, g4, g5, g6, y1, k2, k3, k4, k5, k6, k7 = _dp_stages(
        y, k1, hd, u, coef, W0z, W0u, W1, W2, W3, b0, b1, b2, cst, tab, tp, n_terms, NL, DP, KP, O0, O1, O2, HAS_U, ACT, PREC, scr, KC
    )
    e, scale, r, en = _dp_err(y, y1, k1, k3, k4, k5, k6, k7, hd, tol, coef, cm, D)
    _store_tile(y1_ptr, y1, rows, rm, D, DP)
    _store_tile(k7_ptr, k7, rows, rm, D, DP)
    for m in tl.static_range(4):
        q = (
            k1 * _c(coef, 28 + m)
            + k3 * _c(coef, 36 + m)
            + k4 * _c(coef, 40 + m)
            + k5 * _c(coef, 44 + m)
            + k6 * _c(coef, 48 + m)
            + k7 * _c(coef, 52 + m)
        )
        _store_tile(q_ptr, q, rows + m * B, rm, D, DP)  # q[m] of (4, B, D); 64-bit row index
    err = en.to(tl.float64)
    tl.store(err_ptr + rows, err, mask=rm)
    # controller (scipy RK45 rules), float64
    # constants from a float64 tensor (SAFETY, ERROR_EXPONENT, MIN_FACTOR, MAX_FACTOR): no f32 literals
    safety = tl.load(ctl)
    expo = tl.load(ctl + 1)
    fmin = tl.load(ctl + 2)
    fmax = tl.load(ctl + 3)
    finite = (err - err) == 0  # false for NaN and +-inf
    accept = finite & (err < 1.0)
    safe = tl.where(finite & (err > 0), err, 1.0)
    fac = safety * tl.exp(expo * tl.log(safe))
    grow = tl.where(err == 0, fmax, tl.minimum(fac, fmax))
    rej = tl.load(rej_ptr + rows, mask=rm, other=0) != 0
    grow = tl.where(rej, tl.minimum(grow, 1.0), grow)
    shrink = tl.where(finite, tl.maximum(fac, fmin), fmin)
    tl.store(hn_ptr + rows, tl.abs(h) * tl.where(accept, grow, shrink), mask=rm)
    tl.store(acc_ptr + rows, accept.to(tl.int8), mask=rm)
    if STIFF:
        num = tl.sqrt(tl.sum(tl.where(cm, (k7 - k6) * (k7 - k6), 0.0), 1))
        dd = tl.sqrt(tl.sum(tl.where(cm, (y1 - g6) * (y1 - g6), 0.0), 1))
        st = tl.where(dd > 0, num / tl.where(dd > 0, dd, 1.0), 0.0)
        tl.store(st_ptr + rows, st.to(tl.float64), mask=rm)


@triton.jit
def _dp_step_bwd_kernel(
    y_ptr,
    f0_ptr,
    u_ptr,
    h_ptr,
    tol,
    coef,
    gy1_ptr,
    gk7_ptr,
    gq_ptr,
    gerr_ptr,
    gy_ptr,
    gf0_ptr,
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
    HAS_GQ: tl.constexpr,
    HAS_GERR: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # 64-bit offsets: rows * D and the scratch pass 2^31 at large B
    scr = scr_ptr + pid * (BM * SW)
    rows = pid * BM + tl.arange(0, BM)
    rm = rows < B
    cm = (tl.arange(0, DP) < D)[None, :]
    y = _load_tile(y_ptr, rows, rm, D, DP)
    k1 = _load_tile(f0_ptr, rows, rm, D, DP)
    u = _load_tile(u_ptr, rows, rm, K, KP).to(y.dtype)
    hd = tl.load(h_ptr + rows, mask=rm, other=0.0).to(y.dtype)[:, None]
    # recompute the stages
    g2, g3, g4, g5, g6, y1, k2, k3, k4, k5, k6, k7 = _dp_stages(
        y, k1, hd, u, coef, W0z, W0u, W1, W2, W3, b0, b1, b2, cst, tab, tp, n_terms, NL, DP, KP, O0, O1, O2, HAS_U, ACT, PREC, scr, KC
    )
    dy1 = _load_tile(gy1_ptr, rows, rm, D, DP)
    dk7 = _load_tile(gk7_ptr, rows, rm, D, DP)
    dy = dy1 * 0.0
    dk1 = dy * 0.0
    dk3 = dy * 0.0
    dk4 = dy * 0.0
    dk5 = dy * 0.0
    dk6 = dy * 0.0
    if HAS_GQ:
        for m in tl.static_range(4):
            gq = _load_tile(gq_ptr, rows + m * B, rm, D, DP)
            dk1 += gq * _c(coef, 28 + m)
            dk3 += gq * _c(coef, 36 + m)
            dk4 += gq * _c(coef, 40 + m)
            dk5 += gq * _c(coef, 44 + m)
            dk6 += gq * _c(coef, 48 + m)
            dk7 += gq * _c(coef, 52 + m)
    if HAS_GERR:
        e, scale, r, en = _dp_err(y, y1, k1, k3, k4, k5, k6, k7, hd, tol, coef, cm, D)
        gerr = tl.load(gerr_ptr + rows, mask=rm, other=0.0).to(y.dtype)
        w = tl.where(en > 0, gerr / (D * tl.where(en > 0, en, 1.0)), 0.0)[:, None]
        de = w * r / scale
        dm = -(de * r) * tl.load(tol + 1)
        big1 = tl.abs(y1) > tl.abs(y)
        sgn1 = tl.where(y1 > 0, 1.0, tl.where(y1 < 0, -1.0, 0.0))
        sgn0 = tl.where(y > 0, 1.0, tl.where(y < 0, -1.0, 0.0))
        dy1 += tl.where(big1, dm * sgn1, 0.0)
        dy += tl.where(big1, 0.0, dm * sgn0)
        deh = de * hd
        dk1 += deh * _c(coef, 21)
        dk3 += deh * _c(coef, 23)
        dk4 += deh * _c(coef, 24)
        dk5 += deh * _c(coef, 25)
        dk6 += deh * _c(coef, 26)
        dk7 += deh * _c(coef, 27)
    # k7 = f(y1)
    dk7 = tl.where(cm & rm[:, None], dk7, 0.0)
    dy1 += _field_vjp(
        y1,
        u,
        dk7,
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
    # y1 = y + h * sum b_j k_j
    dy += dy1
    t = dy1 * hd
    dk1 += t * _c(coef, 15)
    dk3 += t * _c(coef, 17)
    dk4 += t * _c(coef, 18)
    dk5 += t * _c(coef, 19)
    dk6 += t * _c(coef, 20)
    # stage 6
    dg = _field_vjp(
        g6,
        u,
        tl.where(cm & rm[:, None], dk6, 0.0),
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
    dy += dg
    t = dg * hd
    dk1 += t * _c(coef, 10)
    dk2 = t * _c(coef, 11)
    dk3 += t * _c(coef, 12)
    dk4 += t * _c(coef, 13)
    dk5 += t * _c(coef, 14)
    # stage 5
    dg = _field_vjp(
        g5,
        u,
        tl.where(cm & rm[:, None], dk5, 0.0),
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
    dy += dg
    t = dg * hd
    dk1 += t * _c(coef, 6)
    dk2 += t * _c(coef, 7)
    dk3 += t * _c(coef, 8)
    dk4 += t * _c(coef, 9)
    # stage 4
    dg = _field_vjp(
        g4,
        u,
        tl.where(cm & rm[:, None], dk4, 0.0),
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
    dy += dg
    t = dg * hd
    dk1 += t * _c(coef, 3)
    dk2 += t * _c(coef, 4)
    dk3 += t * _c(coef, 5)
    # stage 3
    dg = _field_vjp(
        g3,
        u,
        tl.where(cm & rm[:, None], dk3, 0.0),
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
    dy += dg
    t = dg * hd
    dk1 += t * _c(coef, 1)
    dk2 += t * _c(coef, 2)
    # stage 2
    dg = _field_vjp(
        g2,
        u,
        tl.where(cm & rm[:, None], dk2, 0.0),
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
    dy += dg
    dk1 += dg * hd * _c(coef, 0)
    _store_tile(gy_ptr, dy, rows, rm, D, DP)
    _store_tile(gf0_ptr, dk1, rows, rm, D, DP)
