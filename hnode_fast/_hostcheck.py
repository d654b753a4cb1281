"""Cheap eager checks on host tensors, for ``hf.odeint``'s validation and the spec caches.

On a small CPU tensor each torch op costs microseconds of dispatch, and ``torch.isfinite(x).all()``
is three of them (~10-20 us measured, whatever the size); ``Module.parameters()`` walks the module
tree through generators (~40-80 us for a HybridField). At batch 1 those added up to ~20x the
solve itself. These helpers make one call into ``hnode_fast._C`` per check for contiguous CPU
float tensors (one pass over the values) and fall back to the torch expression for anything else:
another device, dtype or layout, a tensor subclass, no compiled module, or torch.compile tracing.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _native

_PLAIN = (torch.Tensor, torch.nn.Parameter)
_KIND = {torch.float32: 0, torch.float64: 1}


def _fast() -> bool:
    """The compiled module is there and torch.compile is not tracing (no data_ptr() then)."""
    return _native._C is not None and not torch.compiler.is_compiling()


def _host(x: Tensor) -> bool:
    """``x`` can be read through ``data_ptr()`` as ``numel`` contiguous host values."""
    return type(x) in _PLAIN and x.is_cpu and x.layout == torch.strided and x.is_contiguous()


def first_nonfinite(tensors: Sequence[Tensor]) -> int:
    """Index of the first tensor holding NaN or inf, -1 when none does (one call into _C for
    host float32/float64 tensors)."""
    if _fast():
        items = []
        for x in tensors:
            kind = _KIND.get(x.dtype)
            if kind is None or not _host(x):
                break
            items.append((x.data_ptr(), x.numel(), kind))
        else:
            return int(_native._lib().first_nonfinite(items))
    if not tensors:
        return -1
    # torch: one fused check (one device sync on a GPU); per tensor only to find the culprit
    flat = [x.detach().reshape(-1) for x in tensors]
    if all(f.device == flat[0].device for f in flat) and bool(torch.isfinite(torch.cat(flat)).all()):
        return -1
    for i, f in enumerate(flat):
        if not bool(torch.isfinite(f).all()):
            return i
    return -1


def all_finite(x: Tensor) -> bool:
    """No NaN or inf in ``x`` (any shape): ``bool(torch.isfinite(x).all())``."""
    return first_nonfinite((x,)) < 0


def rows_increasing(t: Tensor) -> bool:
    """Every row of ``t`` (``(T,)`` or ``(B, T)``) strictly increasing; NaN makes it False."""
    if t.dtype == torch.float64 and t.dim() in (1, 2) and _fast() and _host(t):
        T = t.shape[-1]
        return bool(_native._lib().rows_increasing(t.data_ptr(), t.numel() // max(T, 1), T))
    t = t.detach()
    return bool((t[..., 1:] > t[..., :-1]).all())


def all_equal(a: Sequence[Tensor], b: Sequence[Tensor]) -> Optional[bool]:
    """``all(torch.equal(x, y) for x, y in zip(a, b))`` in one call, for sequences of host
    tensors whose pairs have equal shapes and dtypes: float32/float64 by value (NaN is never
    equal, -0 == +0), integer and bool by bytes. None when some tensor is not such a host tensor
    or has another floating or complex dtype (equal values in different bytes): the caller
    then uses torch."""
    if not _fast():
        return None
    pairs: List[Tuple[int, int, int, int]] = []
    for x, y in zip(a, b):
        kind = _KIND.get(x.dtype, 2)
        if kind == 2 and (x.is_floating_point() or x.is_complex()):
            return None
        if not (_host(x) and _host(y)):
            return None
        n = x.numel() if kind < 2 else x.numel() * x.element_size()
        pairs.append((x.data_ptr(), y.data_ptr(), n, kind))
    return bool(_native._lib().all_equal(pairs))


def module_tensors(m: torch.nn.Module) -> Tuple[List[Tensor], List[Tensor]]:
    """``(list(m.parameters()), list(m.buffers()))``, same order and de-duplication, from the
    modules' own dicts instead of ``named_members``' generators (several times faster)."""
    params: List[Tensor] = []
    buffers: List[Tensor] = []
    seen_p: set = set()
    seen_b: set = set()
    seen_m: set = set()

    def walk(mod: torch.nn.Module) -> None:
        seen_m.add(id(mod))
        for p in mod._parameters.values():
            if p is not None and id(p) not in seen_p:
                seen_p.add(id(p))
                params.append(p)
        for b in mod._buffers.values():
            if b is not None and id(b) not in seen_b:
                seen_b.add(id(b))
                buffers.append(b)
        for c in mod._modules.values():
            if c is not None and id(c) not in seen_m:
                walk(c)

    walk(m)
    return params, buffers
