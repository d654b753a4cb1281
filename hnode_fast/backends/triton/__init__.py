"""Triton backend: masked field evaluation and fused Dormand–Prince steps (see docs/triton.md).

Importing :mod:`hnode_fast` never imports triton; this package imports it on first use of the
kernels. On CPU tensors the kernels run only under ``TRITON_INTERPRET=1`` (tests); on CUDA
tensors they are compiled.

Public helpers:
    :func:`dp_step` — one fused DP5 step with error estimate (local regularizer hook),
    :func:`field_eval` — differentiable field evaluation, :func:`build_plan`, :func:`solve`.
"""

from __future__ import annotations

import importlib.util

from .plan import Plan, build_plan, pad_width  # noqa: F401  (torch only)


def has_triton() -> bool:
    """Whether the ``triton`` package is importable (without importing it)."""
    return importlib.util.find_spec("triton") is not None


def _as_spec(spec_or_field):
    from ...fields.hybrid import HybridField
    from ...fields.spec import FieldSpec

    if isinstance(spec_or_field, HybridField):
        return spec_or_field.compile()
    if isinstance(spec_or_field, FieldSpec):
        return spec_or_field
    raise ValueError(f"expected an hf.HybridField or hf.FieldSpec, got {type(spec_or_field).__name__}")


def field_eval(spec_or_field, z, u=None, allow_tf32: bool = False):
    """``dz/dt`` of a field/spec for ``z (B, D)`` (``u (B, K)``) with the Triton kernels;
    differentiable w.r.t. ``z`` and ``spec.params`` (hence the module's parameters)."""
    from . import library as lib

    spec = _as_spec(spec_or_field)
    plan = build_plan(spec, z.dtype, z.device)
    return lib.triton_field_eval(z, u, plan.tensors, plan.tab, lib.plan_meta(plan), bool(allow_tf32))


def dp_step(spec_or_field, y, t, h, rtol, atol, stiffness: bool = False, f0=None, u=None, allow_tf32: bool = False):
    """One fused Dormand–Prince 5(4) step per trajectory (Pal et al. 2023 local regularizer).

    Args:
        spec_or_field: ``hf.HybridField`` or its ``FieldSpec`` (``field.compile()``).
        y: ``(B, D)`` state at ``t``; ``t``: ``(B,)`` times (unused by the autonomous field;
            inputs, if any, are passed as ``u (B, K)`` held over the step); ``h``: ``(B,)`` or
            scalar step sizes (constants for differentiation).
        rtol, atol: tolerances of the error norm.
        stiffness: also return ``||k7 - k6|| / ||y1 - g6||`` per trajectory (not differentiable;
            divide by 3.3066 for Pal et al.'s rho).
        f0: optional ``k1 = f(y)``; pass ``f0.detach()`` to stop gradients through ``k1``
            (Pal et al. detach ``k1``); default: evaluated (differentiably) here.

    Returns ``(y1, err_norm, h_next, accept[, stiff])``: ``y1 (B, D)``; ``err_norm (B,)``
    float64 RMS over states of ``err / (atol + rtol * max(|y|, |y1|))`` — equal to
    ``reference.dopri5.error_norm`` with ``rms_rows`` but differentiable w.r.t. ``y``, ``f0``
    and ``spec.params``; ``h_next`` float64 ``(B,)`` (controller proposal), ``accept`` bool ``(B,)``.
    The batch RMS of Pal et al. is ``err_norm.pow(2).mean().sqrt()``.
    """
    import torch

    from . import library as lib

    spec = _as_spec(spec_or_field)
    plan = build_plan(spec, y.dtype, y.device)
    meta = lib.plan_meta(plan)
    B = y.shape[0]
    h = torch.as_tensor(h, dtype=torch.float64, device=y.device).reshape(-1).expand(B).contiguous()
    if f0 is None:
        f0 = lib.triton_field_eval(y, u, plan.tensors, plan.tab, meta, bool(allow_tf32))
    rejected = torch.zeros(B, dtype=torch.bool, device=y.device)
    y1, k7, q, err, hn, acc, st = lib.triton_dp_step(
        y, f0, u, h, rejected, plan.tensors, plan.tab, meta, float(rtol), float(atol), bool(stiffness), bool(allow_tf32)
    )
    return (y1, err, hn, acc, st) if stiffness else (y1, err, hn, acc)


def solve(prob):
    """``backend="triton"`` entry point (see :mod:`.backend`)."""
    from .backend import solve as _solve

    return _solve(prob)


__all__ = ["dp_step", "field_eval", "build_plan", "Plan", "solve", "has_triton"]
