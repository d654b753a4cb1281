"""``@triton.jit`` device functions of the masked network on a tile of ``BM`` trajectories.

Activations and their derivatives, the dense helpers (``tl.dot`` on padded weights; layers wider
than ``KC`` run K-chunked through the program's scratch rows) and the network's forward pass and
VJP. Parameter gradients are reduced over the batch with atomics into buffers shaped like the
plan tensors (see :mod:`.plan`). Used by :mod:`.jit_field`.
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
    elif ACT == 6:
        y = 1.0 / (1.0 + tl.exp(-x))
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
    elif ACT == 6:
        s = 1.0 / (1.0 + tl.exp(-x))
        d = s * (1.0 - s)
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
