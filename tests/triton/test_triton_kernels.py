"""Field evaluation, VJP and fused DP5 step kernels against the reference (float64 ~1e-12)."""

import pytest
import torch
from tt_helpers import error_norm_rounding, f64, leaf_spec, make_field, ref_step, stage_noise

from hnode_fast.backends import triton as ht
from hnode_fast.backends.triton import ops
from hnode_fast.reference import dopri5 as dp
from hnode_fast.reference.spec_eval import eval_spec

CONFIGS = {
    "D3-inputs-tanh": dict(D=3, hidden=(8, 8), n_inputs=1, nn_inputs=True, mask_density=0.7),
    "D1-batch-odd": dict(D=1, hidden=(5,), activation="silu"),
    "D17-w20-silu": dict(D=17, hidden=(20,), activation="silu", full_terms=False),
    "L4-relu-csr": dict(D=4, hidden=(6, 7, 9), activation="relu", mask_density=0.3),
    "elu-softplus": dict(D=2, hidden=(3,), activation="elu"),
    "softplus": dict(D=2, hidden=(4, 3), activation="softplus"),
    "mech-only": dict(D=3, nn=False, n_inputs=2),
    "nn-only": dict(D=3, mech=False, hidden=(5,)),
    "fully-masked": dict(D=3, hidden=(4,), mask_density=0.0),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_field_forward_and_vjp(name, device, tseed):
    cfg = CONFIGS[name]
    f = make_field(**cfg)
    spec = leaf_spec(f, device=device)
    B = 19 if name.startswith("D3") else (1 if name.startswith("D1") else 5)
    z = (torch.rand(B, f.n_states, dtype=f64, device=device) + 0.1).requires_grad_(True)
    u = torch.rand(B, f.n_inputs, dtype=f64, device=device) if f.n_inputs else None
    out = ht.field_eval(spec, z, u)
    ref = eval_spec(spec, z, u)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-13)
    g = torch.randn_like(ref)
    a = torch.autograd.grad((out * g).sum(), [z, spec.params])
    b = torch.autograd.grad((ref * g).sum(), [z, spec.params])
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-12)


def test_field_float32(device, tseed):
    f = make_field(D=5, hidden=(24, 24), activation="silu", n_inputs=1)
    spec = f.compile()
    z = torch.rand(33, 5, dtype=f64, device=device)
    u = torch.rand(33, 1, dtype=f64, device=device)
    ref = eval_spec(spec.to(device=device), z, u)
    out = ht.field_eval(spec.to(torch.float32, device), z.float(), u.float())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["D3-inputs-tanh", "D1-batch-odd", "L4-relu-csr", "mech-only"])
@pytest.mark.parametrize("stiffness", [False, True])
def test_dp_step_matches_reference(name, stiffness, device, tseed):
    f = make_field(**CONFIGS[name])
    spec = leaf_spec(f, device=device)
    B = 3 if not name.startswith("D1") else 1
    y = torch.rand(B, f.n_states, dtype=f64, device=device) + 0.1
    u = torch.rand(B, f.n_inputs, dtype=f64, device=device) if f.n_inputs else None
    h = torch.rand(B, dtype=f64, device=device) * 0.3 + 0.05
    rtol, atol = 1e-7, 1e-9
    y1r, enr, K, Ys = ref_step(spec, y, u, h, rtol, atol)
    t = torch.zeros(B, dtype=f64, device=device)
    res = ht.dp_step(spec, y, t, h, rtol, atol, stiffness=stiffness, u=u)
    y1, en, hn, acc = res[:4]
    torch.testing.assert_close(y1, y1r, rtol=1e-12, atol=1e-13)
    # the estimate is a cancelling sum of cancelling field values: agree to the rounding of both
    # (seed 1413887824: field value 3e-4 from terms of 0.1, stage values 1200 eps apart, gap 4e-11)
    noise = stage_noise(ht.field_eval, spec, Ys, K, u)
    # field_eval is checked on its own in test_field_forward_and_vjp; keep the widening honest here too
    assert float(noise.max()) <= 1e-11 * (1.0 + max(float(k.abs().max()) for k in K))
    tol = 64 * error_norm_rounding(K, h, y, y1r, rtol, atol, noise)
    en_engine = dp.error_norm(K, h, y, y1r, rtol, atol, dp.rms_rows)
    for other in (enr, en_engine):
        gap = (en - other).abs()
        assert bool((gap <= tol).all()), f"error norm gap {gap.tolist()} > rounding bound {tol.tolist()}"
    assert torch.equal(acc, en_engine < 1)
    fac = torch.where(en_engine < 1, torch.clamp(0.9 * en_engine**-0.2, max=10.0), torch.clamp(0.9 * en_engine**-0.2, min=0.2))
    torch.testing.assert_close(hn, h * fac, rtol=1e-8, atol=0)
    if stiffness:
        num = torch.linalg.vector_norm(K[6] - K[5], dim=1)
        den = torch.linalg.vector_norm(Ys[6] - Ys[5], dim=1)
        # a difference quotient of nearby stages: relative rounding ~ (field noise + eps|K|)/|dK| + eps|Y|/|dY|
        eps = torch.finfo(f64).eps
        dk = torch.linalg.vector_norm(2 * noise + eps * (K[6].abs() + K[5].abs()), dim=1)
        dy = torch.linalg.vector_norm(eps * (Ys[6].abs() + Ys[5].abs()), dim=1)
        rel = float((dk / num + 2 * dy / den).max())
        print(f"stiffness estimate relative rounding {rel:.3g}")
        torch.testing.assert_close(res[4], num / den, rtol=max(1e-9, 16 * rel), atol=1e-14)


@pytest.mark.parametrize("name", ["D3-inputs-tanh", "L4-relu-csr", "D1-batch-odd"])
def test_dp_step_vjp_matches_autograd(name, device, tseed):
    f = make_field(**CONFIGS[name])
    spec = leaf_spec(f, device=device)
    B = 3 if not name.startswith("D1") else 1
    y = (torch.rand(B, f.n_states, dtype=f64, device=device) + 0.1).requires_grad_(True)
    u = torch.rand(B, f.n_inputs, dtype=f64, device=device) if f.n_inputs else None
    h = torch.rand(B, dtype=f64, device=device) * 0.3 + 0.05
    rtol, atol = 1e-6, 1e-8
    w = torch.randn(B, f.n_states, dtype=f64, device=device)
    c = torch.randn(B, dtype=f64, device=device)
    y1r, enr, K, Ys = ref_step(spec, y, u, h, rtol, atol)
    t = torch.zeros(B, dtype=f64, device=device)
    y1, en, _, _ = ht.dp_step(spec, y, t, h, rtol, atol, u=u)
    # relative rounding of the error estimate (a cancelling sum of cancelling field values)
    rel = float((error_norm_rounding(K, h, y, y1r, rtol, atol, stage_noise(ht.field_eval, spec, Ys, K, u)) / enr.detach()).max())
    # VJP of y1: ~1e-12
    gr = torch.autograd.grad((y1r * w).sum(), [y, spec.params], retain_graph=True)
    gt = torch.autograd.grad((y1 * w).sum(), [y, spec.params], retain_graph=True)
    for a, b in zip(gt, gr):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)
    # VJP of the error norm: its relative rounding follows the estimate's (typically ~1e-9)
    gr = torch.autograd.grad((enr * c).sum(), [y, spec.params])
    gt = torch.autograd.grad((en * c).sum(), [y, spec.params])
    tol = max(1e-7, 100 * rel)
    for a, b in zip(gt, gr):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * float(b.abs().max()))


def test_dp_step_detached_k1(device, tseed):
    """Pal et al.: k1 detached -> gradients reach the parameters only through k2..k7."""
    f = make_field(D=2, hidden=(4,))
    spec = leaf_spec(f, device=device)
    y = torch.rand(2, 2, dtype=f64, device=device) + 0.1
    h = torch.full((2,), 0.2, dtype=f64, device=device)
    t = torch.zeros(2, dtype=f64, device=device)
    f0 = eval_spec(spec, y).detach()
    _, en, _, _ = ht.dp_step(spec, y, t, h, 1e-6, 1e-8, f0=f0)
    (g,) = torch.autograd.grad(en.sum(), [spec.params])

    def fun(tt, yy, ts):
        return eval_spec(spec, yy)

    y1r, K, _ = dp.rk_step(fun, t, y, f0, h, t)
    err = sum(K[j] * dp.E[j] for j in range(7) if dp.E[j] != 0.0) * h[:, None]
    enr = dp.rms_rows(err / (1e-8 + torch.maximum(y.abs(), y1r.abs()) * 1e-6))
    (gr,) = torch.autograd.grad(enr.sum(), [spec.params])
    torch.testing.assert_close(g, gr, rtol=1e-7, atol=1e-7 * float(gr.abs().max()))


def test_dp_step_gradcheck(device, tseed):
    f = make_field(D=2, hidden=(3,), full_terms=True)
    plan = ht.build_plan(f.compile(), f64, device)
    plan.tensors = [x.detach() for x in plan.tensors]
    h = torch.full((2,), 0.3, dtype=f64, device=device)
    y = (torch.rand(2, 2, dtype=f64, device=device) + 0.2).requires_grad_(True)
    f0 = torch.rand(2, 2, dtype=f64, device=device).requires_grad_(True)

    def fn(y, f0):
        y1, k7, q, err, *_ = ops.dp_step_apply(plan, y, f0, None, h, 1e-3, 1e-3)
        return y1, k7, q, err

    assert torch.autograd.gradcheck(fn, (y, f0), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_no_eager_triton_import():
    import subprocess
    import sys

    code = "import sys, hnode_fast as hf; from hnode_fast import backends; assert 'triton' not in sys.modules, 'eager'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_custom_ops_opcheck_and_compile(device, tseed):
    from hnode_fast.backends.triton import library as lib

    f = make_field(D=2, hidden=(3,), n_inputs=1, nn_inputs=True)
    plan = ht.build_plan(f.compile(), f64, device)
    pt = [t.detach() for t in plan.tensors]
    meta = lib.plan_meta(plan)
    z = (torch.rand(3, 2, dtype=f64, device=device) + 0.1).requires_grad_(True)
    u = torch.rand(3, 1, dtype=f64, device=device)
    h = torch.full((3,), 0.2, dtype=f64, device=device)
    rej = torch.zeros(3, dtype=torch.bool, device=device)
    torch.library.opcheck(lib.triton_field_eval, (z, u, pt, plan.tab, meta, False))
    f0 = lib.triton_field_eval(z, u, pt, plan.tab, meta, False).detach()
    torch.library.opcheck(lib.triton_dp_step, (z, f0, u, h, rej, pt, plan.tab, meta, 1e-6, 1e-8, True, False))

    def fn(z):
        return lib.triton_field_eval(z, u, pt, plan.tab, meta, False).sum()

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(z.detach()), fn(z.detach()))


@pytest.mark.parametrize("what", ["field", "step"])
def test_k_chunked_dots(what, device, tseed, monkeypatch):
    """Layers wider than KCHUNK take the scratch/K-chunk path (the wide-field GPU path)."""
    monkeypatch.setattr(ops, "KCHUNK", 16)
    f = make_field(D=17, hidden=(40, 33), activation="silu", n_inputs=20, nn_inputs=True, full_terms=False)
    spec = leaf_spec(f, device=device)
    B = 18
    z = (torch.rand(B, 17, dtype=f64, device=device) + 0.1).requires_grad_(True)
    u = torch.rand(B, 20, dtype=f64, device=device)
    w = torch.randn(B, 17, dtype=f64, device=device)
    if what == "field":
        out, ref = ht.field_eval(spec, z, u), eval_spec(spec, z, u)
    else:
        h = torch.full((B,), 0.1, dtype=f64, device=device)
        out = ht.dp_step(spec, z, h * 0, h, 1e-6, 1e-8, u=u)[0]
        ref = ref_step(spec, z, u, h, 1e-6, 1e-8)[0]
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-13)
    a = torch.autograd.grad((out * w).sum(), [z, spec.params])
    b = torch.autograd.grad((ref * w).sum(), [z, spec.params])
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-12)


def test_allow_tf32_is_opt_in(device, tseed):
    f = make_field(D=4, hidden=(32,), activation="tanh")
    spec = f.compile()
    z = torch.rand(16, 4, dtype=f64, device=device)
    ref = eval_spec(spec.to(device=device), z)
    # float64 ignores allow_tf32 (always IEEE)
    out64 = ht.field_eval(spec.to(device=device), z, allow_tf32=True)
    torch.testing.assert_close(out64, ref, rtol=1e-12, atol=1e-13)
    s32 = spec.to(torch.float32, device)
    out_ieee = ht.field_eval(s32, z.float())
    out_tf32 = ht.field_eval(s32, z.float(), allow_tf32=True)
    torch.testing.assert_close(out_ieee.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out_tf32.double(), ref, rtol=1e-2, atol=1e-2)  # ~10-bit mantissa products
