"""The FieldSpec of a field for the compiled backends (cpu, cuda), cached while the field is
unchanged: its structure (int tables, from the masks) and, with no gradient needed, the whole
spec. Values are compared, not versions (writes through ``.data`` bump no version). Under
``torch.compile`` the structure is a constant of the graph and only the parameter gather is traced
(docs/compile.md)."""

from __future__ import annotations

import sys
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import _hostcheck
from ..fields.spec import FieldSpec, SpecStructure, gather_params, spec_structure, structure_matches


def structure_refs(field) -> List[Tensor]:
    """The tensors a field's :class:`SpecStructure` is built from (masks, term mask)."""
    refs: List[Tensor] = list(field.nn.masks) if field.nn is not None else []
    if field.mech is not None:
        refs.append(field.mech.term_mask)
    return refs


def structure_for(field) -> SpecStructure:
    """The field's :class:`SpecStructure` built from its masks only (see ``spec_structure``),
    cached on the field while the masks and the term mask are the same tensors holding the same
    values (compared by value, so writes through ``.data``, which bump no version, are seen)."""
    refs = structure_refs(field)
    ref = field.nn.layers[0].weight if field.nn is not None else (field.mech.params if field.mech is not None else None)
    cfg = (
        field.n_states,
        field.n_inputs,
        field.nn_uses_inputs,
        None if ref is None else (ref.dtype, ref.device),
        None if field.mech is None else (id(field.mech.terms), len(field.mech.terms)),
    )
    cache = field.__dict__.get("_hnode_structure_cache")
    if (
        cache is not None
        and cache[0] == cfg
        and len(cache[1]) == len(refs)
        and all(a is b for a, b in zip(cache[1], refs))
        and same_values(cache[2], refs)
    ):
        return cache[3]
    with torch.inference_mode(False):  # cached: its index tensors may later be saved for backward
        st = spec_structure(field.mech, field.nn, field.n_states, field.n_inputs, field.nn_uses_inputs)
    object.__setattr__(field, "_hnode_structure_cache", (cfg, tuple(refs), snapshot(refs), st))
    return st


def snapshot(tensors: Sequence[Tensor]) -> Tuple[Tensor, ...]:
    """Detached copies of ``tensors`` (the values a cached result was built from)."""
    return tuple(t.detach().clone() for t in tensors)


def same_values(snap: Sequence[Tensor], tensors: Sequence[Tensor], fused: Optional[bool] = None) -> bool:
    """``tensors`` hold the values of ``snap`` (same shapes, dtypes, devices; equal elementwise,
    NaN never equal, so a NaN parameter is never served from a cache).

    A by-value check: ``_version`` misses writes through ``.data`` (``p.data += 1`` does not bump
    ``p._version``), after which a version-keyed cache would silently solve the old field.
    ``fused`` (default: when any tensor is off the CPU) reduces all comparisons on the device and
    synchronises once instead of once per tensor."""
    if len(snap) != len(tensors):
        return False
    for a, b in zip(snap, tensors):
        if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
            return False
    if not snap:
        return True
    if fused is None:
        fused = any(b.device.type != "cpu" for b in tensors)
    if fused:
        return bool(torch.stack([(a == b.detach()).all() for a, b in zip(snap, tensors)]).all())
    same = _hostcheck.all_equal(snap, tensors)  # one call into _C for host float/int/bool tensors
    if same is not None:
        return same
    return all(torch.equal(a, b.detach()) for a, b in zip(snap, tensors))


def _assume_constant_result(fn):
    """``torch.compiler.assume_constant_result`` without importing torch._dynamo (and with it
    triton) when hnode_fast is imported: the decorator only sets this attribute. The fullgraph
    tests (tests/test_ecosystem.py) fail if a torch release changes that."""
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True
    return fn


@_assume_constant_result
def _traced_structure(field, versions) -> SpecStructure:
    # Run while torch.compile traces (on the real module); the result is a constant of the graph
    # (int tables, index tensors). ``versions`` (bumped by set_mask / set_term_mask) are read in the
    # traced code, so Dynamo guards on them and recompiles after a change through those methods;
    # the graph also checks that the masks still match (``structure_matches``) and the op raises if
    # they were changed some other way.
    return structure_for(field)


def _structure_versions(field) -> Tuple[int, int]:
    return (
        getattr(field.nn, "_hnode_structure_version", 0) if field.nn is not None else 0,
        getattr(field.mech, "_hnode_structure_version", 0) if field.mech is not None else 0,
    )


_STRUCTURE_CHANGED = (
    "the field's masks or term mask changed after torch.compile traced this function (its sparsity "
    "structure is a constant of the compiled graph): call torch.compiler.reset() and compile again"
)


def spec_for(field, checks: Optional[list] = None, module_tensors=None) -> FieldSpec:
    """The field's :class:`FieldSpec` (``field.compile()``), differentiable when a gradient is needed.

    Eager: the int tables are cached while the masks hold the same values (:func:`structure_for`)
    and the parameter vector is gathered from the current values each call; with no gradient
    needed the whole spec is also cached while every parameter and buffer holds the same values. L0-gated networks
    (structure depends on which gates are exactly 0) are compiled afresh when a gradient is needed.
    ``module_tensors``: the field's ``(parameters, buffers)`` if the caller already listed them
    (``Problem.module_tensors``); listed here otherwise.

    Under ``torch.compile`` the structure (masks only) is a constant of the graph and only the
    gather is traced; a check that the masks are unchanged is appended to ``checks`` (raised by the
    op) or, if ``checks`` is None, evaluated here.
    """
    if torch.compiler.is_compiling():
        mlp = field.nn
        st = _traced_structure(field, _structure_versions(field))
        ok = structure_matches(st, field.mech, mlp)
        if checks is not None:
            checks.append((ok, _STRUCTURE_CHANGED))
        elif not bool(ok):
            raise RuntimeError(_STRUCTURE_CHANGED)
        return FieldSpec(st.ints, gather_params(st, field.mech, mlp), st.header)
    ps, bs = module_tensors if module_tensors is not None else _hostcheck.module_tensors(field)
    tensors = ps + bs
    if torch.is_grad_enabled() and any(p.requires_grad for p in tensors):
        mlp = field.nn
        if mlp is not None and mlp.gates is not None:
            return field.compile()
        st = structure_for(field)
        return FieldSpec(st.ints, gather_params(st, field.mech, mlp), st.header)
    # no gradient: reuse the last spec while the field has the same parameter and buffer tensors
    # holding the same values (compared by value: see same_values)
    cache = field.__dict__.get("_hnode_cpu_spec_cache")
    if (
        cache is not None
        and len(cache[1]) == len(tensors)
        and all(a is b for a, b in zip(cache[1], tensors))
        and same_values(cache[2], tensors)
    ):
        return cache[0]
    mlp = field.nn
    if mlp is not None and mlp.gates is not None:
        spec = field.compile().detach()
    else:
        st = structure_for(field)
        spec = FieldSpec(st.ints, gather_params(st, field.mech, mlp).detach(), st.header)
    object.__setattr__(field, "_hnode_cpu_spec_cache", (spec, tuple(tensors), snapshot(tensors)))
    return spec
