"""Triton kernels: masked field evaluation (+ VJP) and the fused Dormand–Prince step (+ VJP).

Every kernel handles a tile of ``BM`` trajectories per program. The network is evaluated with
``tl.dot`` on padded dense weights (see :mod:`.plan`), the mechanistic terms with a runtime
loop over the term table (one-hot column gathers/scatters, ``tl.where`` per kind). Parameter
gradients are reduced over the batch with atomics into buffers shaped like the plan tensors.
Tableau coefficients are read from a tensor in the compute dtype (no float32 literals).
"""

import triton
import triton.language as tl

# ----------------------------------------------------------------------------- activations


@triton.jit
def _tanh(x):
    t = tl.exp(-2.0 * tl.abs(x))
    r = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -r, r)


@triton.jit
def _act(x, ACT: tl.constexpr):
    if ACT == 1:
        y = _tanh(x)
    elif ACT == 2:
        y = tl.maximum(x, 0.0)
    elif ACT == 3:
        y = tl.where(x > 0, x, tl.exp(x) - 1.0)
    elif ACT == 4:
        y = tl.where(x > 20.0, x, tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x))))
    elif ACT == 5:
        y = x / (1.0 + tl.exp(-x))
    else:
        y = x
    return y


@triton.jit
def _dact(x, ACT: tl.constexpr):
    """Derivative of the activation at the pre-activation ``x``."""
    if ACT == 1:
        t = _tanh(x)
        d = 1.0 - t * t
    elif ACT == 2:
        d = tl.where(x > 0, 1.0, 0.0) + 0.0 * x
    elif ACT == 3:
        d = tl.where(x > 0, 1.0, tl.exp(x))
    elif ACT == 4:
        d = tl.where(x > 20.0, 1.0, 1.0 / (1.0 + tl.exp(-x)))
    elif ACT == 5:
        s = 1.0 / (1.0 + tl.exp(-x))
        d = s * (1.0 + x * (1.0 - s))
    else:
        d = 1.0 + 0.0 * x
    return d


# ----------------------------------------------------------------------------- dense helpers


@triton.jit
def _stash(scr, x, N: tl.constexpr):
    """Write the register tile ``x (BM, N)`` to this program's scratch rows (for K-chunked dots)."""
    rb = tl.arange(0, x.shape[0])
    tl.debug_barrier()
    tl.store(scr + rb[:, None] * N + tl.arange(0, N)[None, :], x)
    tl.debug_barrier()


@triton.jit
def _dot(h, W, PIN: tl.constexpr, POUT: tl.constexpr, PREC: tl.constexpr, scr, KC: tl.constexpr):
    """``h (BM, PIN) @ W (PIN, POUT)``; for ``PIN > KC`` the reduction runs over K chunks read
    back from the program's scratch (keeps the weight tile per dot at ``KC x POUT``)."""
    ro = tl.arange(0, POUT)
    if PIN <= KC:
        ri = tl.arange(0, PIN)
        w = tl.load(W + ri[:, None] * POUT + ro[None, :])
        acc = tl.dot(h, w, input_precision=PREC)
    else:
        _stash(scr, h, PIN)
        rb = tl.arange(0, h.shape[0])
        rk = tl.arange(0, KC)
        acc = tl.zeros((h.shape[0], POUT), dtype=h.dtype)
        for k0 in range(0, PIN, KC):
            hc = tl.load(scr + rb[:, None] * PIN + k0 + rk[None, :])
            w = tl.load(W + (k0 + rk)[:, None] * POUT + ro[None, :])
            acc += tl.dot(hc, w, input_precision=PREC)
    return acc


@triton.jit
def _dot_t(d, W, PIN: tl.constexpr, POUT: tl.constexpr, PREC: tl.constexpr, scr, KC: tl.constexpr):
    """``d (BM, POUT) @ W^T`` -> ``(BM, PIN)`` (K = POUT, chunked like :func:`_dot`)."""
    ri = tl.arange(0, PIN)
    if POUT <= KC:
        ro = tl.arange(0, POUT)
        w = tl.load(W + ri[:, None] * POUT + ro[None, :])
        acc = tl.dot(d, tl.trans(w), input_precision=PREC)
    else:
        _stash(scr, d, POUT)
        rb = tl.arange(0, d.shape[0])
        rk = tl.arange(0, KC)
        acc = tl.zeros((d.shape[0], PIN), dtype=d.dtype)
        for k0 in range(0, POUT, KC):
            dc = tl.load(scr + rb[:, None] * POUT + k0 + rk[None, :])
            w = tl.load(W + ri[:, None] * POUT + k0 + rk[None, :])
            acc += tl.dot(dc, tl.trans(w), input_precision=PREC)
    return acc


@triton.jit
def _bias(b, POUT: tl.constexpr):
    return tl.load(b + tl.arange(0, POUT))[None, :]


@triton.jit
def _acc_w(gW, h, d, PIN: tl.constexpr, POUT: tl.constexpr, PREC: tl.constexpr, scr, KC: tl.constexpr):
    """``gW += h^T d`` (batch reduction, atomics across programs; ``PIN`` chunked by ``KC``)."""
    ro = tl.arange(0, POUT)
    if PIN <= KC:
        ri = tl.arange(0, PIN)
        tl.atomic_add(gW + ri[:, None] * POUT + ro[None, :], tl.dot(tl.trans(h), d, input_precision=PREC), sem="relaxed")
    else:
        _stash(scr, h, PIN)
        rb = tl.arange(0, h.shape[0])
        rk = tl.arange(0, KC)
        for k0 in range(0, PIN, KC):
            hc = tl.load(scr + rb[:, None] * PIN + k0 + rk[None, :])
            tl.atomic_add(gW + (k0 + rk)[:, None] * POUT + ro[None, :], tl.dot(tl.trans(hc), d, input_precision=PREC), sem="relaxed")


@triton.jit
def _acc_b(gb, d, POUT: tl.constexpr):
    tl.atomic_add(gb + tl.arange(0, POUT), tl.sum(d, 0), sem="relaxed")


# ----------------------------------------------------------------------------- network


@triton.jit
def _mlp_fwd(
    z,
    u,
    W0z,
    W0u,
    W1,
    W2,
    W3,
    b0,
    b1,
    b2,
    cst,
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
    c = _bias(cst, DP)
    if NL == 0:
        out = z * 0.0 + c
    elif NL == 1:
        out = _dot(z, W0z, DP, DP, PREC, scr, KC)
        if HAS_U:
            out += _dot(u, W0u, KP, DP, PREC, scr, KC)
        out = out + c
    else:
        p = _dot(z, W0z, DP, O0, PREC, scr, KC)
        if HAS_U:
            p += _dot(u, W0u, KP, O0, PREC, scr, KC)
        h = _act(p + _bias(b0, O0), ACT)
        if NL == 2:
            out = _dot(h, W1, O0, DP, PREC, scr, KC) + c
        else:
            h = _act(_dot(h, W1, O0, O1, PREC, scr, KC) + _bias(b1, O1), ACT)
            if NL == 3:
                out = _dot(h, W2, O1, DP, PREC, scr, KC) + c
            else:
                h = _act(_dot(h, W2, O1, O2, PREC, scr, KC) + _bias(b2, O2), ACT)
                out = _dot(h, W3, O2, DP, PREC, scr, KC) + c
    return out


@triton.jit
def _first_bwd(
    z,
    u,
    d,
    W0z,
    gW0z,
    gW0u,
    gb0,
    POUT: tl.constexpr,
    DP: tl.constexpr,
    KP: tl.constexpr,
    HAS_U: tl.constexpr,
    HAS_B: tl.constexpr,
    PREC: tl.constexpr,
    scr,
    KC: tl.constexpr,
):
    """Gradient of the first layer given ``d`` = cotangent of its pre-activation; returns dz."""
    if HAS_B:
        _acc_b(gb0, d, POUT)
    _acc_w(gW0z, z, d, DP, POUT, PREC, scr, KC)
    if HAS_U:
        _acc_w(gW0u, u, d, KP, POUT, PREC, scr, KC)
    return _dot_t(d, W0z, DP, POUT, PREC, scr, KC)


@triton.jit
def _mlp_vjp(
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
    gW0z,
    gW0u,
    gW1,
    gW2,
    gW3,
    gb0,
    gb1,
    gb2,
    gcst,
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
    """``dz = g^T d mlp/dz``; parameter gradients accumulated atomically."""
    _acc_b(gcst, g, DP)
    if NL == 0:
        dz = g * 0.0
    elif NL == 1:
        dz = _first_bwd(z, u, g, W0z, gW0z, gW0u, gb0, DP, DP, KP, HAS_U, False, PREC, scr, KC)
    else:
        p0 = _dot(z, W0z, DP, O0, PREC, scr, KC)
        if HAS_U:
            p0 += _dot(u, W0u, KP, O0, PREC, scr, KC)
        p0 = p0 + _bias(b0, O0)
        h0 = _act(p0, ACT)
        if NL == 2:
            _acc_w(gW1, h0, g, O0, DP, PREC, scr, KC)
            d0 = _dot_t(g, W1, O0, DP, PREC, scr, KC) * _dact(p0, ACT)
        else:
            p1 = _dot(h0, W1, O0, O1, PREC, scr, KC) + _bias(b1, O1)
            h1 = _act(p1, ACT)
            if NL == 3:
                _acc_w(gW2, h1, g, O1, DP, PREC, scr, KC)
                d1 = _dot_t(g, W2, O1, DP, PREC, scr, KC) * _dact(p1, ACT)
            else:
                p2 = _dot(h1, W2, O1, O2, PREC, scr, KC) + _bias(b2, O2)
                h2 = _act(p2, ACT)
                _acc_w(gW3, h2, g, O2, DP, PREC, scr, KC)
                d2 = _dot_t(g, W3, O2, DP, PREC, scr, KC) * _dact(p2, ACT)
                _acc_b(gb2, d2, O2)
                _acc_w(gW2, h1, d2, O1, O2, PREC, scr, KC)
                d1 = _dot_t(d2, W2, O1, O2, PREC, scr, KC) * _dact(p1, ACT)
            _acc_b(gb1, d1, O1)
            _acc_w(gW1, h0, d1, O0, O1, PREC, scr, KC)
            d0 = _dot_t(d1, W1, O0, O1, PREC, scr, KC) * _dact(p0, ACT)
        dz = _first_bwd(z, u, d0, W0z, gW0z, gW0u, gb0, O0, DP, KP, HAS_U, True, PREC, scr, KC)
    return dz


# ----------------------------------------------------------------------------- mechanistic terms


@triton.jit
def _term_load(tab, tp, j):
    kind = tl.load(tab + j * 6)
    a = tl.load(tab + j * 6 + 1)
    b = tl.load(tab + j * 6 + 2)
    dst = tl.load(tab + j * 6 + 3)
    flags = tl.load(tab + j * 6 + 4)
    po = tl.load(tab + j * 6 + 5)
    p0 = tl.load(tp + po)
    p1 = tl.load(tp + po + 1)
    p2 = tl.load(tp + po + 2)
    return kind, a, b, dst, flags, po, p0, p1, p2


@triton.jit
def _hill_r(za, p1, p2):
    x = tl.maximum(za, 0.0)
    pos = x > 0
    safe = tl.where(pos, x, 1.0)
    r = tl.where(pos, tl.exp(p2 * tl.log(safe / p1)), 0.0)
    return pos, safe, r


@triton.jit
def _mech_fwd(z, u, out, tab, tp, n_terms, DP: tl.constexpr, KP: tl.constexpr):
    cd = tl.arange(0, DP)[None, :]
    ck = tl.arange(0, KP)[None, :]
    for j in range(n_terms):
        kind, a, b, dst, flags, po, p0, p1, p2 = _term_load(tab, tp, j)
        za = tl.sum(tl.where(cd == a, z, 0.0), 1)
        zb = tl.sum(tl.where(cd == b, z, 0.0), 1)
        ua = tl.sum(tl.where(ck == a, u, 0.0), 1)
        pos, safe, r = _hill_r(za, p1, p2)
        hill = tl.where((flags & 2) != 0, p0 / (1.0 + r), p0 * r / (1.0 + r))
        f = tl.where(
            kind == 1,
            p0 * za,
            tl.where(
                kind == 2,
                p0 * za * zb,
                tl.where(kind == 3, p0 * za / (p1 + za), tl.where(kind == 4, hill, tl.where(kind == 5, p0 * ua, za * 0.0 + p0))),
            ),
        )
        out += tl.where(cd == dst, f[:, None], 0.0)
        sub = tl.where((flags & 1) != 0, f, 0.0)[:, None]
        out -= tl.where(cd == a, sub, 0.0) + tl.where(cd == b, sub, 0.0)
    return out


@triton.jit
def _mech_vjp(z, u, g, dz, tab, tp, gtp, n_terms, DP: tl.constexpr, KP: tl.constexpr):
    cd = tl.arange(0, DP)[None, :]
    ck = tl.arange(0, KP)[None, :]
    for j in range(n_terms):
        kind, a, b, dst, flags, po, p0, p1, p2 = _term_load(tab, tp, j)
        za = tl.sum(tl.where(cd == a, z, 0.0), 1)
        zb = tl.sum(tl.where(cd == b, z, 0.0), 1)
        ua = tl.sum(tl.where(ck == a, u, 0.0), 1)
        cons = (flags & 1) != 0
        gd = tl.sum(tl.where(cd == dst, g, 0.0), 1)
        ga = tl.sum(tl.where(cd == a, g, 0.0), 1)
        gb = tl.sum(tl.where(cd == b, g, 0.0), 1)
        gf = gd - tl.where(cons, ga + gb, 0.0)
        zero = za * 0.0
        # Michaelis-Menten
        den = p1 + za
        mm_dza = p0 * p1 / (den * den)
        mm_dp0 = za / den
        mm_dp1 = -p0 * za / (den * den)
        # Hill
        pos, safe, r = _hill_r(za, p1, p2)
        rep = (flags & 2) != 0
        opr = 1.0 + r
        dfdr = tl.where(rep, -p0 / (opr * opr), p0 / (opr * opr))
        hl_dp0 = tl.where(rep, 1.0 / opr, r / opr)
        hl_dza = tl.where(pos, dfdr * p2 * r / safe, 0.0)
        hl_dp1 = tl.where(pos, -dfdr * p2 * r / p1, 0.0)
        hl_dp2 = tl.where(pos, dfdr * r * tl.log(safe / p1), 0.0)
        dza = tl.where(kind == 1, zero + p0, tl.where(kind == 2, p0 * zb, tl.where(kind == 3, mm_dza, tl.where(kind == 4, hl_dza, zero))))
        dzb = tl.where(kind == 2, p0 * za, zero)
        dp0 = tl.where(
            kind == 0,
            zero + 1.0,
            tl.where(kind == 1, za, tl.where(kind == 2, za * zb, tl.where(kind == 3, mm_dp0, tl.where(kind == 4, hl_dp0, ua)))),
        )
        dp1 = tl.where(kind == 3, mm_dp1, tl.where(kind == 4, hl_dp1, zero))
        dp2 = tl.where(kind == 4, hl_dp2, zero)
        dz += tl.where(cd == a, (gf * dza)[:, None], 0.0) + tl.where(cd == b, (gf * dzb)[:, None], 0.0)
        tl.atomic_add(gtp + po, tl.sum(gf * dp0, 0), sem="relaxed")
        tl.atomic_add(gtp + po + 1, tl.sum(gf * dp1, 0), sem="relaxed")
        tl.atomic_add(gtp + po + 2, tl.sum(gf * dp2, 0), sem="relaxed")
    return dz


# ----------------------------------------------------------------------------- whole field


@triton.jit
def _field(
    z,
    u,
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
    out = _mlp_fwd(z, u, W0z, W0u, W1, W2, W3, b0, b1, b2, cst, NL, DP, KP, O0, O1, O2, HAS_U, ACT, PREC, scr, KC)
    return _mech_fwd(z, u, out, tab, tp, n_terms, DP, KP)


@triton.jit
def _field_vjp(
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
    dz = _mlp_vjp(
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
        gW0z,
        gW0u,
        gW1,
        gW2,
        gW3,
        gb0,
        gb1,
        gb2,
        gcst,
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
    return _mech_vjp(z, u, g, dz, tab, tp, gtp, n_terms, DP, KP)


@triton.jit
def _load_tile(ptr, rows, rm, n, NP: tl.constexpr):
    c = tl.arange(0, NP)
    return tl.load(ptr + rows[:, None] * n + c[None, :], mask=rm[:, None] & (c[None, :] < n), other=0.0)


@triton.jit
def _store_tile(ptr, x, rows, rm, n, NP: tl.constexpr):
    c = tl.arange(0, NP)
    tl.store(ptr + rows[:, None] * n + c[None, :], x, mask=rm[:, None] & (c[None, :] < n))


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
