"""``@triton.jit`` device functions of the whole field on a tile of ``BM`` trajectories.

The mechanistic terms (a runtime loop over the term table: one-hot column gathers/scatters,
``tl.where`` per kind), the field ``mech(z) + nn(z)`` and its VJP (network parts in
:mod:`.jit_net`), and the masked tile loads/stores. Used by the kernels of :mod:`.field_kernels`
and :mod:`.step_kernels`.
"""

import triton
import triton.language as tl

from .jit_net import _mlp_fwd, _mlp_vjp

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
