"""``torch.library.opcheck`` on the Triton custom ops (schema, fake impl, autograd registration,
AOT dispatch with dynamic shapes), on CUDA or on the CPU under TRITON_INTERPRET=1. The census of
all hnode_fast ops is in tests/test_opcheck.py (COVERAGE)."""

import pytest
import torch
from tt_helpers import f64, make_field

from hnode_fast.backends.triton import build_plan
from hnode_fast.backends.triton import library as lib

CONFIGS = {"inputs": dict(D=3, hidden=(8,), n_inputs=1, nn_inputs=True), "nn-only": dict(D=2, mech=False, hidden=(5,))}


def setup(name, device, B=3):
    f = make_field(**CONFIGS[name])
    plan = build_plan(f.compile(), f64, device)
    tensors = [t.detach().clone() for t in plan.tensors]
    z = torch.rand(B, f.n_states, dtype=f64, device=device) + 0.1
    u = torch.rand(B, f.n_inputs, dtype=f64, device=device) if f.n_inputs else None
    return z, u, tensors, plan.tab, lib.plan_meta(plan)


def grads(z, tensors):
    return z.clone().requires_grad_(True), [t.clone().requires_grad_(True) for t in tensors]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_opcheck_field_eval(name, device, tseed):
    z, u, tensors, tab, meta = setup(name, device)
    zg, tg = grads(z, tensors)
    torch.library.opcheck(torch.ops.hnode_fast.triton_field_eval.default, (zg, u, tg, tab, meta, False))
    g = torch.randn_like(z)
    torch.library.opcheck(torch.ops.hnode_fast.triton_field_eval_bwd.default, (z, u, g, tensors, tab, meta, False))


@pytest.mark.parametrize("name,stiffness", [("inputs", False), ("nn-only", True)])
def test_opcheck_dp_step(name, stiffness, device, tseed):
    z, u, tensors, tab, meta = setup(name, device)
    B = z.shape[0]
    f0 = lib.triton_field_eval(z, u, tensors, tab, meta, False)
    h = torch.rand(B, dtype=f64, device=device) * 0.2 + 0.05
    rejected = torch.zeros(B, dtype=torch.bool, device=device)
    zg, tg = grads(z, tensors)
    f0g = f0.clone().requires_grad_(True)
    torch.library.opcheck(
        torch.ops.hnode_fast.triton_dp_step.default, (zg, f0g, u, h, rejected, tg, tab, meta, 1e-6, 1e-8, stiffness, False)
    )
    gy1, gk7 = torch.randn_like(z), torch.randn_like(z)
    gq, gerr = torch.randn(4, *z.shape, dtype=f64, device=device), torch.randn(B, dtype=f64, device=device)
    torch.library.opcheck(
        torch.ops.hnode_fast.triton_dp_step_bwd.default, (z, f0, u, h, tensors, tab, meta, 1e-6, 1e-8, False, gy1, gk7, gq, gerr)
    )
