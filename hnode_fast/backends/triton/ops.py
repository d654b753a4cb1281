"""Launchers of the Triton kernels (Liger-style naming), and their differentiable wrappers.

* ``field_forward`` / ``field_backward`` (launches) and ``field_eval`` (differentiable)
* ``dp_step_forward`` / ``dp_step_backward`` (launches) and ``dp_step_apply`` (differentiable)

The differentiable wrappers call the custom ops of :mod:`.library` (fake impls + registered
autograd): one gradient path for the solver, the public helpers and ``torch.compile``. All take
a :class:`~.plan.Plan`; gradients w.r.t. the plan tensors flow to ``spec.params`` through the
plan's differentiable construction.
"""

from __future__ import annotations

import os
from typing import Dict

import torch

from ...reference import dopri5 as dp
from .field_kernels import _field_bwd_kernel, _field_fwd_kernel
from .plan import Plan
from .step_kernels import _dp_step_bwd_kernel, _dp_step_fwd_kernel

BLOCK_M = int(os.environ.get("HNODE_TRITON_BLOCK_M", "16"))  # trajectories per program (>= 16)
# K-chunk of the dots: layers wider than this read their input back from a per-program scratch
# in chunks of KCHUNK columns (bounds the weight tile in registers/shared memory per dot)
KCHUNK = int(os.environ.get("HNODE_TRITON_KCHUNK", "64"))


def _check_device(x: torch.Tensor) -> None:
    if x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise NotImplementedError(
            "backend='triton' on CPU tensors runs only under the Triton interpreter: set TRITON_INTERPRET=1 "
            "before importing triton (slow; for tests), or move the tensors to a CUDA device"
        )


_COEF_CACHE: Dict[tuple, torch.Tensor] = {}


def coef_tensor(dtype, device) -> torch.Tensor:
    key = (dtype, str(device))
    if key not in _COEF_CACHE:
        vals = []
        for s in range(1, 6):
            vals.extend(dp.A[s])
        vals.extend(dp.B)
        vals.extend(dp.E)
        for row in dp.P:
            vals.extend(row)
        assert len(vals) == 56
        _COEF_CACHE[key] = torch.tensor(vals, dtype=torch.float64).to(dtype=dtype, device=device)
    return _COEF_CACHE[key]


def _ctl(device) -> torch.Tensor:
    key = ("ctl", str(device))
    if key not in _COEF_CACHE:
        _COEF_CACHE[key] = torch.tensor([dp.SAFETY, dp.ERROR_EXPONENT, dp.MIN_FACTOR, dp.MAX_FACTOR], dtype=torch.float64, device=device)
    return _COEF_CACHE[key]


def _tol(atol: float, rtol: float, dtype, device) -> torch.Tensor:
    """``[atol, rtol]`` on the device, cached: a new tensor per step was a pageable host-to-device
    copy, i.e. a device synchronisation on every step of the solve loop."""
    key = ("tol", float(atol), float(rtol), dtype, str(device))
    t = _COEF_CACHE.get(key)
    if t is None:
        if len(_COEF_CACHE) > 256:  # many distinct tolerances (a sweep): keep the cache small
            for k in [k for k in _COEF_CACHE if k[0] == "tol"]:
                del _COEF_CACHE[k]
        t = _COEF_CACHE[key] = torch.tensor([atol, rtol], dtype=torch.float64).to(dtype=dtype, device=device)
    return t


def _prec(plan: Plan, dtype, allow_tf32: bool) -> str:
    return "tf32" if (allow_tf32 and dtype == torch.float32) else "ieee"


def _u_or_dummy(u, B, dtype, device):
    if u is None or u.numel() == 0:
        return torch.zeros(1, dtype=dtype, device=device), 0
    return u.to(dtype).contiguous(), u.shape[1]


def _meta(plan: Plan, dtype, allow_tf32, B=0, device=None):
    """Compile-time constants + the per-program scratch used by K-chunked dots."""
    m = dict(plan.meta)
    m["PREC"] = _prec(plan, dtype, allow_tf32)
    sw = max(m["DP"], m["KP"], m["O0"], m["O1"], m["O2"])
    kc = max(16, int(KCHUNK))
    m["KC"], m["SW"] = kc, sw
    n = triton_cdiv(B, BLOCK_M) * BLOCK_M * sw if sw > kc else 1
    m["scr_ptr"] = torch.empty(max(n, 1), dtype=dtype, device=device)
    return m


def _grad_buffers(plan: Plan):
    return [torch.zeros_like(t) for t in plan.tensors]


# ----------------------------------------------------------------------------- field eval


def field_forward(plan: Plan, z, u=None, tensors=None, allow_tf32=False):
    """``z (B, D)`` (``u (B, K)``) -> ``(B, D)``."""
    _check_device(z)
    z = z.contiguous()
    B, D = z.shape
    uu, Kn = _u_or_dummy(u, B, z.dtype, z.device)
    tens = plan.tensors if tensors is None else tensors
    out = torch.empty_like(z)
    grid = (triton_cdiv(B, BLOCK_M),)
    _field_fwd_kernel[grid](
        z, uu, out, B, D, Kn, *tens, plan.tab, plan.n_terms, BM=BLOCK_M, **_meta(plan, z.dtype, allow_tf32, B, z.device)
    )
    return out


def field_backward(plan: Plan, z, u, g, tensors=None, allow_tf32=False):
    """VJP: ``(dz (B, D), [grad of each plan tensor])`` for the cotangent ``g (B, D)``."""
    z = z.contiguous()
    g = g.contiguous().to(z.dtype)
    B, D = z.shape
    uu, Kn = _u_or_dummy(u, B, z.dtype, z.device)
    tens = plan.tensors if tensors is None else tensors
    grads = [torch.zeros_like(t) for t in tens]
    dz = torch.empty_like(z)
    grid = (triton_cdiv(B, BLOCK_M),)
    _field_bwd_kernel[grid](
        z, uu, g, dz, B, D, Kn, *tens, plan.tab, plan.n_terms, *grads, BM=BLOCK_M, **_meta(plan, z.dtype, allow_tf32, B, z.device)
    )
    return dz, grads


def triton_cdiv(a, b):
    return (a + b - 1) // b


def field_eval(plan: Plan, z, u=None, allow_tf32=False):
    """Differentiable field evaluation: the ``hnode_fast::triton_field_eval`` custom op (its
    registered autograd is the one gradient path of the Triton kernels)."""
    from . import library as lib

    return lib.triton_field_eval(z, u, plan.tensors, plan.tab, lib.plan_meta(plan), bool(allow_tf32))


# ----------------------------------------------------------------------------- fused DP5 step


def dp_step_forward(plan: Plan, y, f0, u, h, rtol, atol, rejected=None, stiffness=False, tensors=None, allow_tf32=False):
    """One fused step. Returns ``y1, k7, Q (4, B, D), err (B,) f64, h_next (B,) f64, accept (B,) bool,
    stiff (B,) f64 or None``. ``Q`` are the dense-output coefficients: ``y(t + x h) = y + h *
    sum_m x^(m+1) Q_m``."""
    _check_device(y)
    y = y.contiguous()
    f0 = f0.contiguous().to(y.dtype)
    B, D = y.shape
    dev = y.device
    uu, Kn = _u_or_dummy(u, B, y.dtype, dev)
    h = h.to(torch.float64).contiguous()
    tol = _tol(atol, rtol, y.dtype, dev)
    rej = rejected.to(torch.int8) if rejected is not None else torch.zeros(B, dtype=torch.int8, device=dev)
    tens = plan.tensors if tensors is None else tensors
    y1 = torch.empty_like(y)
    k7 = torch.empty_like(y)
    q = torch.empty((4, B, D), dtype=y.dtype, device=dev)
    err = torch.empty(B, dtype=torch.float64, device=dev)
    hn = torch.empty(B, dtype=torch.float64, device=dev)
    acc = torch.empty(B, dtype=torch.int8, device=dev)
    st = torch.empty(B if stiffness else 1, dtype=torch.float64, device=dev)
    grid = (triton_cdiv(B, BLOCK_M),)
    _dp_step_fwd_kernel[grid](
        y,
        f0,
        uu,
        h,
        tol,
        coef_tensor(y.dtype, dev),
        _ctl(dev),
        rej,
        y1,
        k7,
        q,
        err,
        hn,
        acc,
        st,
        B,
        D,
        Kn,
        *tens,
        plan.tab,
        plan.n_terms,
        BM=BLOCK_M,
        STIFF=bool(stiffness),
        **_meta(plan, y.dtype, allow_tf32, B, dev),
    )
    return y1, k7, q, err, hn, acc.bool(), (st if stiffness else None)


def dp_step_backward(plan: Plan, y, f0, u, h, rtol, atol, gy1, gk7, gq, gerr, tensors=None, allow_tf32=False):
    """VJP of ``(y1, k7, Q, err)`` -> ``(dy, df0, [grad of each plan tensor])``."""
    y = y.contiguous()
    B, D = y.shape
    dev = y.device
    uu, Kn = _u_or_dummy(u, B, y.dtype, dev)
    tens = plan.tensors if tensors is None else tensors
    grads = [torch.zeros_like(t) for t in tens]
    z = torch.zeros_like(y)
    gy1 = z if gy1 is None else gy1.contiguous().to(y.dtype)
    gk7 = z if gk7 is None else gk7.contiguous().to(y.dtype)
    has_gq = gq is not None
    has_gerr = gerr is not None
    gq = gq.contiguous().to(y.dtype) if has_gq else z
    gerr = gerr.contiguous().to(torch.float64) if has_gerr else h
    tol = _tol(atol, rtol, y.dtype, dev)
    gy = torch.empty_like(y)
    gf0 = torch.empty_like(y)
    grid = (triton_cdiv(B, BLOCK_M),)
    _dp_step_bwd_kernel[grid](
        y,
        f0.contiguous().to(y.dtype),
        uu,
        h.to(torch.float64).contiguous(),
        tol,
        coef_tensor(y.dtype, dev),
        gy1,
        gk7,
        gq,
        gerr,
        gy,
        gf0,
        B,
        D,
        Kn,
        *tens,
        plan.tab,
        plan.n_terms,
        *grads,
        BM=BLOCK_M,
        HAS_GQ=has_gq,
        HAS_GERR=has_gerr,
        **_meta(plan, y.dtype, allow_tf32, B, dev),
    )
    return gy, gf0, grads


def dp_step_apply(plan: Plan, y, f0, u, h, rtol, atol, rejected=None, stiffness=False, allow_tf32=False):
    """One differentiable fused step: the ``hnode_fast::triton_dp_step`` custom op (stages
    recomputed in its backward; ``h``, ``h_next``, ``accept``, ``stiff`` are constants)."""
    from . import library as lib

    if rejected is None:
        rejected = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
    return lib.triton_dp_step(
        y,
        f0,
        u,
        h.to(torch.float64),
        rejected,
        plan.tensors,
        plan.tab,
        lib.plan_meta(plan),
        float(rtol),
        float(atol),
        bool(stiffness),
        bool(allow_tf32),
    )
