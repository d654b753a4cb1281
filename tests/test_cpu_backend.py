"""The compiled CPU backend against the reference: field eval/VJP, whole solves (same accepted
steps, float64 to ~1e-12), float32, events, inputs, grids, failures, gradients, the custom op."""

import os
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import SMOOTH_HILL, random_field

import hnode_fast as hf
from hnode_fast import _native, backends
from hnode_fast.reference.spec_eval import eval_spec

pytestmark = pytest.mark.skipif("cpu" not in backends.available(), reason="CPU solver not built")
cpu = pytest.importorskip("hnode_fast.backends.cpu")
f64, f32 = torch.float64, torch.float32
ACTS = ["identity", "tanh", "relu", "elu", "softplus", "silu", "sigmoid"]


@pytest.fixture(autouse=True, params=["one", "lanes", "gpuloops"])
def cpu_path(request, monkeypatch):
    """Every test here runs three ways of the CPU launchers: one trajectory at a time (solve_one),
    lockstep lanes (hnode/lanes.h; see test_lanes.py), and the build with the CUDA kernels' loop
    forms (HNODE_GPU_LOOPS: register-blocked dense matvec, interleaved adjoint partials; see
    test_gpuloops.py), so the CPU runs the code the GPU runs."""
    monkeypatch.setenv("HNODE_CPU_LANES", "1" if request.param == "lanes" else "0")
    if request.param != "gpuloops":
        yield request.param
        return
    old = _native._C.cpu_set_isa("gpuloops")
    try:
        yield request.param
    finally:
        _native._C.cpu_set_isa(old)


def both(f, y0, t, **kw):
    out = []
    for be in ("reference", "cpu"):
        out.append(hf.odeint(f, y0, t, backend=be, return_stats=True, **kw))
    return out


def assert_same_stats(sr, sc):
    for name in ("n_steps", "n_rejected", "nfe", "status"):
        assert torch.equal(getattr(sr, name), getattr(sc, name)), (name, getattr(sr, name), getattr(sc, name))


def assert_close_nan(a, b, rtol=1e-12, atol=1e-12):
    assert torch.equal(torch.isnan(a), torch.isnan(b))
    m = ~torch.isnan(a)
    torch.testing.assert_close(a[m], b[m], rtol=rtol, atol=atol)


# ---------------------------------------------------------------- field evaluation and VJP
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("layout", ["dense", "masked", "csr"])
def test_field_eval_and_vjp_match_reference(act, layout, seed):
    density = None if layout == "dense" else 0.4
    f = random_field(D=5, hidden=(12, 7), activation=act, n_inputs=2, nn_inputs=True, mask_density=density)
    spec = f.compile(csr_threshold=1.0 if layout == "csr" else 0.25)
    if layout == "csr":
        assert any(r[2] == 1 for r in spec.layer_rows().tolist())
    z = torch.randn(9, 5, dtype=f64)
    u = torch.randn(9, 2, dtype=f64)
    torch.testing.assert_close(cpu.eval_field(spec, z, u), eval_spec(spec, z, u), rtol=1e-12, atol=1e-13)
    a = torch.randn(9, 5, dtype=f64)
    zz = z.clone().requires_grad_()
    p = spec.params.detach().clone().requires_grad_()
    gz, gp = torch.autograd.grad(eval_spec(spec, zz, u, params=p), (zz, p), a)
    cgz, cgp = cpu.vjp_field(spec, z, a, u)
    torch.testing.assert_close(cgz, gz, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(cgp, gp, rtol=1e-11, atol=1e-12)


def test_very_sparse_layer_uses_csr_and_matches(seed):
    f = random_field(D=6, hidden=(40, 40), mech=False, mask_density=0.1)
    spec = f.compile()
    assert [r[2] for r in spec.layer_rows().tolist()].count(1) >= 1
    z = torch.randn(4, 6, dtype=f64)
    torch.testing.assert_close(cpu.eval_field(spec, z), eval_spec(spec, z), rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------- whole solves
@pytest.mark.parametrize("D", [1, 3, 17])
@pytest.mark.parametrize("B", [1, 4])
def test_solve_matches_reference_float64(D, B, seed):
    f = random_field(D=D, hidden=(16, 16))
    y0 = torch.rand(B, D, dtype=f64)
    t = torch.linspace(0, 3, 13, dtype=f64)
    with torch.no_grad():
        (yr, sr), (yc, sc) = both(f, y0, t, rtol=1e-7, atol=1e-9)
    assert_same_stats(sr, sc)
    torch.testing.assert_close(yc, yr, rtol=1e-11, atol=1e-12)


def test_single_step_matches_reference(seed):
    f = random_field(D=4, hidden=(8,))
    y0 = torch.rand(3, 4, dtype=f64)
    t = torch.tensor([0.0, 0.004, 0.01], dtype=f64)
    with torch.no_grad():
        (yr, sr), (yc, sc) = both(f, y0, t, rtol=1e-2, atol=1e-2)
    assert (sr.n_steps == 1).all()
    assert_same_stats(sr, sc)
    torch.testing.assert_close(yc, yr, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("act", ["tanh", "relu", "softplus"])
def test_masked_csr_and_fully_masked_layer(act, seed):
    f = random_field(D=5, hidden=(10, 10), activation=act, mask_density=0.3)
    f.nn.set_mask(1, torch.zeros_like(f.nn.masks[1]))  # kills every path: only biases remain
    y0 = torch.rand(3, 5, dtype=f64)
    t = torch.linspace(0, 2, 5, dtype=f64)
    with torch.no_grad():
        (yr, sr), (yc, sc) = both(f, y0, t)
    assert_same_stats(sr, sc)
    torch.testing.assert_close(yc, yr, rtol=1e-11, atol=1e-12)


def test_events_inputs_and_per_trajectory_grids(seed):
    B, D, K = 4, 3, 2
    f = random_field(D=D, hidden=(8, 8), n_inputs=K, nn_inputs=True)
    inf = float("inf")
    ev = hf.Events(
        times=torch.tensor([[0.0, 0.7, 0.7, inf], [1.1, inf, inf, inf], [0.3, 2.5, inf, inf], [inf, inf, inf, inf]], dtype=f64),
        states=torch.tensor([[0, 1, 1, 0], [2, 0, 0, 0], [1, 2, 0, 0], [0, 0, 0, 0]]),
        amounts=torch.rand(B, 4, dtype=f64),
    )
    inp = hf.Inputs(
        times=torch.tensor([[0.0, 1.0, 1.7], [-1.0, 0.7, inf], [0.5, 0.9, 2.2], [0.2, 0.4, 0.6]], dtype=f64),
        values=torch.randn(B, 3, K, dtype=f64),
    )
    t = torch.sort(torch.rand(B, 9, dtype=f64) * 3, dim=1).values
    t[:, 0] = 0.0
    t[0] = torch.tensor([0.0, 0.2, 0.4, 0.55, 0.7, 1.2, 1.9, 2.4, 3.0])  # 0.7: output at a dose (pre-dose)
    with torch.no_grad():
        (yr, sr), (yc, sc) = both(f, torch.rand(B, D, dtype=f64), t, events=ev, inputs=inp, rtol=1e-8, atol=1e-10)
    assert_same_stats(sr, sc)
    torch.testing.assert_close(yc, yr, rtol=1e-11, atol=1e-12)


def test_float32_close_to_reference(seed):
    f = random_field(D=4, hidden=(16, 16))
    y0 = torch.rand(5, 4, dtype=f64)
    t = torch.linspace(0, 3, 7, dtype=f64)
    with torch.no_grad():
        y64 = hf.odeint(f, y0, t, rtol=1e-5, atol=1e-7, backend="reference")
        f32 = f.float()
        yr, sr = hf.odeint(f32, y0.float(), t, rtol=1e-5, atol=1e-7, backend="reference", return_stats=True)
        yc, sc = hf.odeint(f32, y0.float(), t, rtol=1e-5, atol=1e-7, backend="cpu", return_stats=True)
    assert yc.dtype == torch.float32 and (sc.status == 0).all()
    torch.testing.assert_close(yc, yr, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(yc.double(), y64, rtol=1e-3, atol=1e-4)
    assert (sc.n_steps - sr.n_steps).abs().max() <= 1


def test_blow_up_status_and_nan_like_reference():
    f = hf.HybridField(mech=hf.MechanisticGraph(1, [hf.MassAction((0, 0), 0, 1.0, consume=False)], dtype=f64))
    y0 = torch.tensor([[1.0], [0.1]], dtype=f64)
    t = torch.tensor([0.0, 0.5, 2.0, 3.0], dtype=f64)
    with torch.no_grad():
        (yr, sr), (yc, sc) = both(f, y0, t)
    assert int(sc.status[0]) != 0 and int(sc.status[1]) == 0
    assert_same_stats(sr, sc)
    assert_close_nan(yc, yr)


def test_max_steps_like_reference(seed):
    f = random_field(D=2, hidden=(4,))
    with torch.no_grad():
        (yr, sr), (yc, sc) = both(f, torch.rand(3, 2, dtype=f64), torch.linspace(0, 5, 4, dtype=f64), rtol=1e-12, atol=1e-14, max_steps=7)
    assert (sc.status == 1).all() and ((sc.n_steps + sc.n_rejected) == 7).all()
    assert_same_stats(sr, sc)
    assert_close_nan(yc, yr)


def test_isa_builds_agree_bitwise():
    """The AVX2 and AVX-512 builds (own template instantiations, see macros.h) give the baseline's bits."""
    code = (
        "import torch, hnode_fast as hf, sys; sys.path.insert(0, 'tests'); from conftest import SMOOTH_HILL, random_field;"
        "from hnode_fast.backends import cpu;"
        "torch.manual_seed(3); f = random_field(D=5, hidden=(16, 16), mask_density=0.3);"
        "y0 = torch.rand(7, 5, dtype=torch.float64, requires_grad=True);"
        "y = hf.odeint(f, y0, torch.linspace(0, 2, 5, dtype=torch.float64), backend='cpu');"
        "g = torch.autograd.grad(y.sum(), [y0] + [p for p in f.parameters() if p.requires_grad], allow_unused=True);"
        "z = torch.randn(9, 5, dtype=torch.float64); s = f.compile();"
        "e64 = cpu.eval_field(s, z); e32 = cpu.eval_field(s.to(torch.float32), z.float());"
        "print(repr([y.detach().flatten().tolist(), [x.flatten().tolist() for x in g if x is not None],"
        " e64.flatten().tolist(), e32.flatten().tolist()]))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    outs = []
    for isa in ("base", "avx2", "auto"):  # auto: AVX-512 where the CPU has it
        env = dict(os.environ, HNODE_CPU_ISA=isa)
        r = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout)
    assert outs[0] == outs[1]


def _tanh_spec(dtype):
    """A field whose output is tanh(z) (one unit, weights 1, biases 0): the kernel's tanh_fast."""
    net = hf.MaskedMLP(1, 1, hidden=(1,), activation="tanh")
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.fill_(1.0)
            layer.bias.zero_()
    return hf.HybridField(nn=net).to(dtype).compile()


def _signed(pos):
    """``pos``, ``-pos`` and +inf, -inf, NaN, as a ``(N, 1)`` state batch of pos's dtype."""
    return torch.cat([pos, -pos, torch.tensor([float("inf"), -float("inf"), float("nan")], dtype=pos.dtype)])[:, None]


def test_kernel_tanh_accuracy():
    """The kernels' branch-free tanh (field.h tanh_fast) within a few ulp of torch.tanh, everywhere."""
    spec = _tanh_spec(f64)
    g = torch.Generator().manual_seed(0)
    pos = torch.cat(
        [
            torch.tensor([0.0, 1e-300, 1e-20, 1e-8, 0.0999, 0.1, 0.1001, 0.17328679513998632, 0.3466, 0.35, 1.0, 19.0, 20.0, 40.0, 1e300]),
            torch.rand(4000, generator=g, dtype=f64) * 2.0,
            torch.rand(4000, generator=g, dtype=f64) * 25.0,
            torch.pow(10.0, -torch.rand(2000, generator=g, dtype=f64) * 30.0),
        ]
    ).to(f64)
    z = _signed(pos)
    out = cpu.eval_field(spec, z)[:, 0]
    ref = torch.tanh(z[:, 0])
    fin = ref.isfinite()
    assert torch.isnan(out[~fin]).all() and torch.equal(out[-3:-1], torch.tensor([1.0, -1.0], dtype=f64))
    ulp = (torch.nextafter(ref[fin].abs(), torch.tensor(float("inf"), dtype=f64)) - ref[fin].abs()).clamp_min(torch.finfo(f64).tiny)
    err = ((out[fin] - ref[fin]).abs() / ulp).max()
    assert err <= 8, f"tanh kernel {float(err):.1f} ulp from torch.tanh"
    assert torch.equal(torch.sign(out[fin]), torch.sign(ref[fin]))


def test_kernel_tanh_accuracy_float32():
    """tanh_fast(float) computes in single precision (the GPU's float path): within 4 float ulp
    of the exact tanh (torch.tanh in float64), NaN propagated, +-1 at +-inf, odd."""
    spec = _tanh_spec(f32)
    g = torch.Generator().manual_seed(0)
    pos = torch.cat(
        [
            torch.tensor([0.0, 1e-38, 1e-20, 1e-8, 0.0999, 0.1, 0.1001, 0.1732868, 0.3466, 0.35, 1.0, 8.9, 9.02, 9.1, 10.0, 20.0, 1e30]),
            torch.rand(20000, generator=g) * 2.0,
            torch.rand(20000, generator=g) * 25.0,
            torch.pow(10.0, -torch.rand(5000, generator=g) * 37.0),
        ]
    ).to(f32)
    z = _signed(pos)
    out = cpu.eval_field(spec, z)[:, 0]
    assert out.dtype == f32
    exact = torch.tanh(z[:, 0].double())
    fin = exact.isfinite()
    assert torch.isnan(out[~fin]).all() and torch.equal(out[-3:-1], torch.tensor([1.0, -1.0]))
    r = exact[fin].to(f32).abs()
    ulp = (torch.nextafter(r, torch.tensor(float("inf"))) - r).clamp_min(torch.finfo(f32).tiny).double()
    err = ((out[fin].double() - exact[fin]).abs() / ulp).max()
    assert err <= 4, f"float tanh kernel {float(err):.2f} ulp from the exact tanh"
    assert torch.equal(out[: pos.numel()], -out[pos.numel() : 2 * pos.numel()])


# ---------------------------------------------------------------- gradients
def _grads(f, y0, t, w, backend, **kw):
    params = [p for p in f.parameters() if p.requires_grad]
    y = hf.odeint(f, y0, t, backend=backend, **kw)
    return torch.autograd.grad((y.nan_to_num() * w).sum(), [y0] + params, allow_unused=True)


@pytest.mark.parametrize("case", ["plain", "events_inputs", "masked"])
def test_gradients_equal_autograd_through_reference(case, seed):
    B, D = 3, 4
    kw = {}
    if case == "events_inputs":
        # smooth Hill exponents: with n=1.5 a state grazing 0 amplifies 1e-13 rounding into 1e-9
        # gradient differences (seeds 170, 194), which is conditioning, not a backend difference
        f = random_field(D=D, hidden=(8, 8), n_inputs=1, hill_n=SMOOTH_HILL)
        kw["events"] = hf.Events(
            times=torch.tensor([[0.0, 0.8], [0.5, float("inf")], [1.2, 1.2]], dtype=f64),
            states=torch.tensor([[0, 1], [2, 0], [3, 3]]),
            amounts=torch.rand(B, 2, dtype=f64),
        )
        kw["inputs"] = hf.Inputs(times=torch.tensor([[0.3, 1.0]] * B, dtype=f64), values=torch.randn(B, 2, 1, dtype=f64))
    else:
        f = random_field(D=D, hidden=(8, 8), mask_density=0.5 if case == "masked" else None)
    y0 = torch.rand(B, D, dtype=f64, requires_grad=True)
    t = torch.linspace(0, 2, 6, dtype=f64)
    w = torch.randn(6, B, D, dtype=f64)
    gr = _grads(f, y0, t, w, "reference", rtol=1e-7, atol=1e-9, **kw)
    gc = _grads(f, y0, t, w, "cpu", rtol=1e-7, atol=1e-9, **kw)
    for a, b in zip(gr, gc):
        if a is None:
            assert b is None or (b == 0).all()
        else:
            # normwise per tensor: the adjoint recursion over ~100 steps of a field with Lipschitz
            # constant ~3 amplifies operation-order rounding to ~1e-11 of the tensor's scale
            # (measured, seed 301), spread over its entries; same accepted steps on both sides
            scale = max(float(a.abs().max()), 1.0)
            assert float((b - a).abs().max()) <= 1e-10 * scale, (float((b - a).abs().max()), scale)
    if case == "masked":
        for layer, m in zip(f.nn.layers, f.nn.masks):
            g = torch.autograd.grad(hf.odeint(f, y0, t, backend="cpu").sum(), layer.weight)[0]
            assert (g[~m] == 0).all()


def test_event_amount_gradient_matches_reference(seed):
    f = random_field(D=3, hidden=(6,))
    amounts = torch.rand(2, 2, dtype=f64, requires_grad=True)
    ev = hf.Events(times=torch.tensor([[0.0, 0.9], [0.4, 5.0]], dtype=f64), states=torch.tensor([[0, 2], [1, 1]]), amounts=amounts)
    y0 = torch.rand(2, 3, dtype=f64)
    t = torch.linspace(0, 2, 5, dtype=f64)
    g = [torch.autograd.grad(hf.odeint(f, y0, t, events=ev, backend=be).pow(2).sum(), amounts)[0] for be in ("reference", "cpu")]
    torch.testing.assert_close(g[1], g[0], rtol=1e-10, atol=1e-12)
    assert g[1][1, 1] == 0  # dose after the last output time is never applied


def _op_case(dtype=f64):
    """Small problem whose step sizes are clipped to the stops (so they do not depend on y0 or
    params and finite differences see the same accepted steps)."""
    torch.manual_seed(0)
    f = random_field(D=2, hidden=(3,), dtype=dtype)
    spec = f.compile()
    B = 2
    y0 = torch.rand(B, 2, dtype=dtype)
    out_t = torch.tensor([[0.0, 0.02, 0.05, 0.08], [0.0, 0.03, 0.06, 0.1]], dtype=f64)
    ev_t = torch.tensor([[0.04], [0.05]], dtype=f64)
    ev_s = torch.tensor([[1], [0]], dtype=torch.int32)
    ev_a = torch.rand(B, 1, dtype=dtype)
    stops = ev_t.clone()
    in_t = torch.zeros(B, 0, dtype=f64)
    in_v = torch.zeros(B, 0, 0, dtype=dtype)
    return spec, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v


@pytest.mark.parametrize("cap", [0, 1, 8], ids=["recompute", "overflow", "stored"])
def test_gradcheck_op(cap):
    spec, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v = _op_case()

    def fn(params, y0, ev_a):
        y, st = torch.ops.hnode_fast.solve(spec.ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, 1e-1, 1e-1, 100, 1, cap)[:2]
        return y

    params = spec.params.detach().clone().requires_grad_()
    with torch.no_grad():
        _, st = torch.ops.hnode_fast.solve(spec.ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, 1e-1, 1e-1, 100, 1)[:2]
    assert (st[:, 0] == 2).all() and (st[:, 1] == 0).all()  # one clipped step per segment
    assert torch.autograd.gradcheck(fn, (params, y0.requires_grad_(), ev_a.requires_grad_()), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("cap", [0, 8])
def test_opcheck(cap):
    spec, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v = _op_case()
    params = spec.params.detach().clone().requires_grad_()
    args = (spec.ints, params, y0.requires_grad_(), out_t, stops, ev_t, ev_s, ev_a.requires_grad_(), in_t, in_v, 1e-1, 1e-1, 100, 1, cap)
    torch.library.opcheck(torch.ops.hnode_fast.solve.default, args)


# ---------------------------------------------------------------- backsolve (continuous) adjoint
# The CPU kernel runs the algorithm of reference/backsolve.py step for step (same accepted
# steps of the augmented backward solve), so on smooth fields the two agree to rounding
# (measured <= ~1e-13 relative over 30 seeds at rtol=1e-10); the 1e-9 tolerance leaves room for
# an accept/reject decision flipped by a rounding difference. random_field's mechanistic part
# has a kink (Hill terms use max(z, 0), with exponent 1.5: a non-Lipschitz Jacobian at 0):
# when a state crosses 0 the backward error control is sensitive to rounding and the two step
# sequences can differ (measured up to ~1e-7 relative), so those fields get a looser check.
BS_TOL = dict(rtol=1e-10, atol=1e-12)


def _bs_grads(f, y0, t, w, backend, adjoint="backsolve", **kw):
    y0 = y0.detach().clone().requires_grad_(True)
    params = [p for p in f.parameters() if p.requires_grad]
    y = hf.odeint(f, y0, t, backend=backend, adjoint=adjoint, **kw)
    return torch.autograd.grad((y.nan_to_num() * w).sum() + (y.nan_to_num() ** 2).sum(), [y0] + params, allow_unused=True)


def _assert_grads_close(gc, gr, rtol, atol):
    for c, r in zip(gc, gr):
        if r is None or c is None:  # unused parameter: no gradient on one side, zeros at most on the other
            assert (c is None or (c == 0).all()) and (r is None or (r == 0).all())
            continue
        assert_close_nan(c, r, rtol=rtol, atol=atol * max(1.0, float(r.nan_to_num().abs().max())))


@pytest.mark.parametrize("D", [1, 17])
@pytest.mark.parametrize("B", [1, 4])
def test_backsolve_matches_reference_float64(D, B, seed):
    f = random_field(D=D, hidden=(7, 5), mask_density=0.6, mech=False)
    y0 = torch.rand(B, D, dtype=f64)
    t = torch.linspace(0, 1.5, 4, dtype=f64)
    w = torch.randn(4, B, D, dtype=f64)
    gr = _bs_grads(f, y0, t, w, "reference", **BS_TOL)
    gc = _bs_grads(f, y0, t, w, "cpu", **BS_TOL)
    _assert_grads_close(gc, gr, rtol=1e-9, atol=1e-12)


def test_backsolve_events_inputs_grids_match_reference(seed):
    B, D, K = 4, 3, 2
    f = random_field(D=D, hidden=(8, 8), n_inputs=K, nn_inputs=True, mech=False)
    inf = float("inf")
    # doses at t0, at an output time, twice at one time, after t_end; switches before t0, at
    # an output time, padded
    ev = hf.Events(
        times=torch.tensor([[0.0, 0.7, 0.7, inf], [1.1, inf, inf, inf], [0.3, 2.5, inf, inf], [inf, inf, inf, inf]], dtype=f64),
        states=torch.tensor([[0, 1, 1, 0], [2, 0, 0, 0], [1, 2, 0, 0], [0, 0, 0, 0]]),
        amounts=torch.rand(B, 4, dtype=f64),
    )
    inp = hf.Inputs(
        times=torch.tensor([[0.0, 1.2, 1.7], [-1.0, 0.7, inf], [0.5, 0.9, 2.2], [0.2, 0.4, 0.6]], dtype=f64),
        values=torch.randn(B, 3, K, dtype=f64),
    )
    t = torch.sort(torch.rand(B, 7, dtype=f64) * 2.4, dim=1).values
    t[:, 0] = 0.0
    t[0] = torch.tensor([0.0, 0.2, 0.55, 0.7, 1.2, 1.9, 2.4])  # 0.7: dose, 1.2: switch
    y0 = torch.rand(B, D, dtype=f64)
    w = torch.randn(7, B, D, dtype=f64)
    kw = dict(events=ev, inputs=inp, **BS_TOL)
    gr = _bs_grads(f, y0, t, w, "reference", **kw)
    gc = _bs_grads(f, y0, t, w, "cpu", **kw)
    _assert_grads_close(gc, gr, rtol=1e-9, atol=1e-12)


def test_backsolve_kinked_mechanistic_field_close_to_reference(seed):
    f = random_field(D=5, hidden=(6,), n_inputs=1)
    inp = hf.Inputs(times=[[0.0, 0.8]] * 3, values=torch.tensor([[[1.0], [0.3]]] * 3, dtype=f64))
    y0 = torch.rand(3, 5, dtype=f64)
    t = torch.linspace(0, 2, 5, dtype=f64)
    w = torch.randn(5, 3, 5, dtype=f64)
    gr = _bs_grads(f, y0, t, w, "reference", inputs=inp, **BS_TOL)
    gc = _bs_grads(f, y0, t, w, "cpu", inputs=inp, **BS_TOL)
    _assert_grads_close(gc, gr, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("case", ["D1", "D3", "D17", "events_inputs"])
def test_backsolve_close_to_discrete(case, seed):
    # The continuous adjoint approximates the gradient of the exact solution, the discrete one
    # is the exact gradient of the computed solution: they differ by a solver-tolerance effect
    # that converges irregularly (measured normwise: up to ~7e-7 at rtol=1e-10, <= ~1e-8 at
    # rtol=1e-12, over 40 seeds), so compare at rtol=1e-12, normwise per tensor.
    D = 3 if case == "events_inputs" else int(case[1:])
    kw = dict(rtol=1e-12, atol=1e-14)
    if case == "events_inputs":
        f = random_field(D=D, hidden=(6, 6), n_inputs=1, nn_inputs=True, mech=False)
        kw["events"] = hf.Events(
            times=torch.tensor([[0.0, 0.8], [0.5, float("inf")], [1.2, 1.2]], dtype=f64),
            states=torch.tensor([[0, 1], [2, 0], [1, 1]]),
            amounts=torch.rand(3, 2, dtype=f64),
        )
        kw["inputs"] = hf.Inputs(times=torch.tensor([[0.3, 1.0]] * 3, dtype=f64), values=torch.randn(3, 2, 1, dtype=f64))
    else:
        f = random_field(D=D, hidden=(6, 6), mech=False)
    y0 = torch.rand(3, D, dtype=f64)
    t = torch.linspace(0, 2, 5, dtype=f64)
    w = torch.randn(5, 3, D, dtype=f64)
    gd = _bs_grads(f, y0, t, w, "cpu", adjoint="discrete", **kw)
    gb = _bs_grads(f, y0, t, w, "cpu", **kw)
    for b, d in zip(gb, gd):
        if d is None or b is None:
            continue
        assert float((b - d).abs().max()) <= 1e-7 * max(float(d.abs().max()), 1e-3), (case, b, d)


def test_backsolve_single_output_and_float32(seed):
    f = random_field(D=3, hidden=(6,))
    y0 = torch.rand(2, 3, dtype=f64, requires_grad=True)
    t = torch.tensor([0.5], dtype=f64)
    (g,) = torch.autograd.grad((hf.odeint(f, y0, t, backend="cpu", adjoint="backsolve") * 3).sum(), y0)
    assert (g == 3).all()
    # float32 at rtol 1e-5: both are approximations of the exact gradient to ~tolerance, and
    # float32 rounding can flip an accept decision between them, so compare normwise to the
    # tensor's scale (measured worst over 40 seeds: 3.7e-4 on seed 315)
    f32 = random_field(D=3, hidden=(6,), dtype=torch.float32, hill_n=SMOOTH_HILL)
    y32 = torch.rand(2, 3)
    t = torch.linspace(0, 1, 3, dtype=f64)
    w = torch.randn(3, 2, 3)
    gr = _bs_grads(f32, y32, t, w, "reference", rtol=1e-5, atol=1e-7)
    gc = _bs_grads(f32, y32, t, w, "cpu", rtol=1e-5, atol=1e-7)
    for c, r in zip(gc, gr):
        if r is None or c is None:
            assert (c is None or (c == 0).all()) and (r is None or (r == 0).all())
            continue
        assert torch.isfinite(c).all()
        assert float((c - r).abs().max()) <= 2e-3 * max(float(r.abs().max()), 1.0)


@pytest.mark.parametrize("adjoint", ["discrete", "backsolve"])
def test_parameter_gradients_repeatable(adjoint, seed):
    """Each thread sums the parameter gradients of a fixed set of trajectories, then the partial
    sums are added in thread order: for a given thread count, repeated calls are bitwise equal
    (a dynamic schedule in the backsolve made them differ by ~1e-15 relative)."""
    f = random_field(D=4, hidden=(9, 7), mask_density=0.7, hill_n=SMOOTH_HILL)
    B = 37  # trajectories of unequal cost, so a dynamic schedule would vary its assignment
    y0 = torch.rand(B, 4, dtype=f64) * torch.linspace(0.1, 3.0, B, dtype=f64)[:, None]
    t = torch.linspace(0, 2.0, 5, dtype=f64)
    w = torch.randn(5, B, 4, dtype=f64)
    n = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        ref = _bs_grads(f, y0, t, w, "cpu", adjoint=adjoint, rtol=1e-8, atol=1e-10)
        for _ in range(6):
            g = _bs_grads(f, y0, t, w, "cpu", adjoint=adjoint, rtol=1e-8, atol=1e-10)
            for a, b in zip(g, ref):
                assert (a is None) == (b is None)
                if a is not None:
                    assert torch.equal(a, b), (a - b).abs().max()
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize("adjoint", ["discrete", "backsolve"])
def test_inference_mode_then_gradients(adjoint):
    """A first solve under torch.inference_mode, then one with gradients: nothing cached by the
    first (spec, zero-size tensors) may be an inference tensor that autograd refuses to save."""
    f = random_field(D=3, hidden=(5,), hill_n=SMOOTH_HILL)
    y0 = torch.rand(4, 3, dtype=f64)
    t = torch.linspace(0, 1, 3, dtype=f64)
    with torch.inference_mode():
        y_inf = hf.odeint(f, y0, t, backend="cpu")
    g = _bs_grads(f, y0, t, torch.ones(3, 4, 3, dtype=f64), "cpu", adjoint=adjoint)
    assert all(x is None or torch.isfinite(x).all() for x in g)
    with torch.no_grad():
        assert torch.equal(hf.odeint(f, y0, t, backend="cpu"), y_inf)


def test_backsolve_failed_forward_like_reference():
    # row 0 blows up (status != 0): its outputs after the failure are NaN, their gradient is
    # treated as 0 and the backward starts from the state where the forward stopped
    f = hf.HybridField(mech=hf.MechanisticGraph(1, [hf.MassAction((0, 0), 0, 1.0, consume=False)], dtype=f64))
    y0 = torch.tensor([[1.0], [0.1]], dtype=f64)
    t = torch.tensor([0.0, 0.5, 2.0, 3.0], dtype=f64)
    w = torch.ones(4, 2, 1, dtype=f64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gr = _bs_grads(f, y0, t, w, "reference")
        gc = _bs_grads(f, y0, t, w, "cpu")
    assert torch.isfinite(gc[0][1]).all()
    _assert_grads_close(gc, gr, rtol=1e-9, atol=1e-12)


def test_opcheck_backsolve():
    spec, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v = _op_case()
    y = torch.ops.hnode_fast.solve(spec.ints, spec.params.detach(), y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, 1e-3, 1e-6, 100, 1)[0]
    args = (
        torch.randn_like(y),
        spec.ints,
        spec.params.detach(),
        y0,
        out_t,
        stops,
        ev_t,
        ev_s,
        ev_a,
        in_t,
        in_v,
        y.contiguous(),
        1e-3,
        1e-6,
        100,
        1,
    )
    torch.library.opcheck(torch.ops.hnode_fast.backsolve.default, args)


# ---------------------------------------------------------------- dispatch and bad input
def test_auto_picks_cpu_for_fields(monkeypatch):
    calls = []
    orig = backends._BUILT["cpu"]
    monkeypatch.setitem(backends._BUILT, "cpu", lambda prob: calls.append(1) or orig(prob))
    f = random_field(D=2, hidden=(4,))
    hf.odeint(f, torch.rand(2, 2, dtype=f64), torch.linspace(0, 1, 3, dtype=f64))
    assert calls == [1]
    hf.odeint(lambda t, y: -y, torch.rand(2, 2, dtype=f64), torch.linspace(0, 1, 3, dtype=f64))
    hf.odeint(f, torch.rand(2, 2, dtype=f64), torch.linspace(0, 1, 3, dtype=f64), step_mode="shared")
    assert calls == [1]


def test_unsupported_options_raise():
    f = random_field(D=2, hidden=(4,))
    y0, t = torch.rand(2, 2, dtype=f64), torch.linspace(0, 1, 3, dtype=f64)
    with pytest.raises(NotImplementedError, match="HybridField"):
        hf.odeint(lambda t, y: -y, y0, t, backend="cpu")
    with pytest.raises(NotImplementedError, match="shared"):
        hf.odeint(f, y0, t, backend="cpu", step_mode="shared")
    ev = hf.Events(times=[[0.5]] * 2, states=[[0]] * 2, amounts=torch.ones(2, 1, dtype=f64, requires_grad=True))
    with pytest.raises(NotImplementedError, match="backsolve"):
        hf.odeint(f, y0, t, backend="cpu", adjoint="backsolve", events=ev)
    with pytest.raises(ValueError, match="y0"):
        hf.odeint(f, torch.full((2, 2), float("nan"), dtype=f64), t, backend="cpu")


def test_spec_cache_sees_parameter_updates():
    f = random_field(D=2, hidden=(4,))
    y0, t = torch.rand(2, 2, dtype=f64), torch.linspace(0, 1, 3, dtype=f64)
    with torch.no_grad():
        y1 = hf.odeint(f, y0, t, backend="cpu")
        f.nn.layers[0].weight.add_(0.5)
        y2 = hf.odeint(f, y0, t, backend="cpu")
        y3 = hf.odeint(f, y0, t, backend="reference")
    assert not torch.equal(y1, y2)
    torch.testing.assert_close(y2, y3, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("grad", [False, True])
def test_spec_cache_sees_writes_through_data(grad):
    """``p.data`` writes bump no version: the cached spec and structure must still see them."""
    torch.manual_seed(11)
    f = random_field(D=3, hidden=(5, 4), mask_density=0.5)
    y0, t = torch.rand(2, 3, dtype=f64), torch.linspace(0, 1, 4, dtype=f64)

    def solve(backend):
        with torch.set_grad_enabled(grad):
            return hf.odeint(f, y0, t, backend=backend).detach()

    y1 = solve("cpu")
    f.nn.layers[0].bias.data += 0.5  # a parameter
    y2 = solve("cpu")
    assert not torch.equal(y1, y2)
    torch.testing.assert_close(y2, solve("reference"), rtol=1e-11, atol=1e-12)
    m = f.nn.masks[1]
    off = (m == 0).nonzero()[0]
    m.data[tuple(off)] = 1  # a mask: a weight comes back (the structure changes)
    y3 = solve("cpu")
    assert not torch.equal(y2, y3)
    torch.testing.assert_close(y3, solve("reference"), rtol=1e-11, atol=1e-12)


def test_op_rejects_bad_arguments():
    spec, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v = _op_case()
    good = [spec.ints, spec.params.detach(), y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, 1e-3, 1e-6, 100, 1]
    for i, bad in (
        (1, spec.params.detach()[:-1]),
        (2, y0.float()),
        (3, out_t[:1]),
        (6, ev_s.long()),
        (6, ev_s + 5),
        (9, torch.zeros(2, 1, 3, dtype=f64)),
    ):
        args = list(good)
        args[i] = bad
        with pytest.raises((ValueError, RuntimeError)):
            torch.ops.hnode_fast.solve(*args)


@pytest.mark.parametrize("fused", [False, True])
def test_same_values_helper(fused):
    """The cache check behind the spec caches (fused: the one-sync form used off the CPU)."""
    from hnode_fast.backends.specs import same_values as _same_values
    from hnode_fast.backends.specs import snapshot as _snapshot

    ts = [torch.randn(3, 2, dtype=f64), torch.ones(4, dtype=torch.bool), torch.randn(5, dtype=f64)]
    snap = _snapshot(ts)
    assert _same_values(snap, ts, fused=fused)
    ts[2].data[4] = torch.nextafter(ts[2][4], torch.tensor(float("inf"), dtype=f64))  # one ulp still counts
    assert not _same_values(snap, ts, fused=fused)
    ts[2].data[4] = snap[2][4]
    ts[1].data[0] = False
    assert not _same_values(snap, ts, fused=fused)
    ts[1].data[0] = True
    assert _same_values(snap, ts, fused=fused)
    nan_snap = _snapshot([torch.tensor([float("nan")])])
    assert not _same_values(nan_snap, [nan_snap[0].clone()], fused=fused)
    assert not _same_values(snap, ts[:2], fused=fused)
    assert not _same_values(snap, [ts[0], ts[1], ts[2].float()], fused=fused)
