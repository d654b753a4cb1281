"""The CUDA backend (csrc/cuda/, hnode_fast/backends/cuda.py).

Two groups:
* build / dispatch tests that run everywhere (no GPU needed): the extension says what it compiled,
  the kernel launchers exist when it was compiled with CUDA, the workspace plan picks the
  local-memory bucket for the target field, ``backend="cuda"`` raises ``NotImplementedError``
  naming the reason when unavailable, the ops' fake implementations give the right shapes;
* device tests (skipped with "needs a CUDA device"): the same comparisons as
  tests/test_cpu_backend.py, on CUDA tensors, against the reference backend (run on the CPU).
"""

import copy
import os
import shutil

import pytest
import torch
from conftest import random_field

import hnode_fast as hf
from hnode_fast import _native, backends
from hnode_fast.backends import cuda as hcuda

f64 = torch.float64
NEEDS_GPU = pytest.mark.skipif(not hcuda.is_available(), reason="needs a CUDA device")
DEV = "cuda"


def _nvcc_present():
    return bool(shutil.which("nvcc") or os.path.exists("/usr/local/bin/nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc"))


# ---------------------------------------------------------------- no GPU needed
@pytest.mark.skipif(_native._C is None, reason="extension not built")
def test_build_info_reports_cuda_with_nvcc():
    """With nvcc present (and HNODE_CUDA not OFF in this environment) the build has CUDA for sm_80/90."""
    info = hf.build_info()
    if os.environ.get("HNODE_CUDA", "").upper() in ("OFF", "0", "FALSE", "NO") or not _nvcc_present():
        pytest.skip("CUDA build not expected here (no nvcc or HNODE_CUDA=OFF)")
    assert info["cuda"] is True
    assert info["cuda_archs"], info
    if not os.environ.get("HNODE_CUDA_ARCHS"):
        assert {80, 90} <= set(info["cuda_archs"])


@pytest.mark.skipif(_native._C is None, reason="extension not built")
def test_cuda_launchers_present_iff_compiled():
    info = hf.build_info()
    lib = _native._C
    for name in ("cuda_solve", "cuda_solve_backward", "cuda_plan"):
        assert hasattr(lib, name) == info["cuda"], name
    assert getattr(lib, "has_cuda_solver", False) == info["cuda"]


@pytest.mark.skipif(not hcuda._compiled(), reason="not compiled with CUDA")
def test_workspace_plan_host_side():
    """cuda_plan runs on the host (no GPU): per-thread workspace and the bucket it selects."""
    f = random_field(D=8, hidden=(32, 32), mech=False)
    spec = f.compile()
    lib = _native._C
    for dbl in (False, True):
        p = lib.cuda_plan(spec.ints.data_ptr(), spec.ints.numel(), spec.params.numel(), 8, dbl)
        assert p["wsz"] > 0
        assert p["bucket"] in (0, 1024, 2048)
        assert p["bucket"] == 0 or p["wsz"] <= p["bucket"]
    # the benchmark target field (D=8, (32, 32)) stays on the fixed-size local-array path
    p = lib.cuda_plan(spec.ints.data_ptr(), spec.ints.numel(), spec.params.numel(), 8, False)
    assert p["bucket"] == 2048
    big = random_field(D=8, hidden=(128, 128), mech=False).compile()
    p = lib.cuda_plan(big.ints.data_ptr(), big.ints.numel(), big.params.numel(), 8, False)
    assert p["bucket"] == 0  # generic path: global workspace
    with pytest.raises(RuntimeError, match="D="):
        lib.cuda_plan(spec.ints.data_ptr(), spec.ints.numel(), spec.params.numel(), 7, False)


@pytest.mark.skipif(hcuda.is_available(), reason="CUDA backend available here")
def test_backend_cuda_raises_with_reason_when_unavailable():
    f = random_field(D=2, hidden=(4,))
    y0, t = torch.rand(2, 2, dtype=f64), torch.linspace(0, 1, 3, dtype=f64)
    assert "cuda" not in backends.available()
    reason = hcuda.unavailable_reason()
    assert reason and ("not compiled with CUDA" in reason or "no CUDA device" in reason or "missing" in reason)
    with pytest.raises(NotImplementedError, match="not compiled with CUDA|no CUDA device|missing"):
        hf.odeint(f, y0, t, backend="cuda")
    # auto never falls back to a backend that is not built; on CPU tensors it picks the CPU one
    y = hf.odeint(f, y0, t)
    assert y.shape == (3, 2, 2)


def test_auto_prefers_cuda_only_for_cuda_tensors(monkeypatch):
    calls = []
    monkeypatch.setitem(backends._BUILT, "cuda", lambda prob: calls.append(1))
    f = random_field(D=2, hidden=(4,))
    with torch.no_grad():
        hf.odeint(f, torch.rand(2, 2, dtype=f64), torch.linspace(0, 1, 3, dtype=f64))
    assert calls == []  # CPU tensors: never the CUDA backend


def test_ops_registered_with_fake_impls():
    """The fake implementations give the outputs' shapes/dtypes (meta tensors, no GPU)."""
    B, D, T, E, cap = 3, 2, 4, 1, 5
    m = dict(device="meta")
    ints = torch.zeros(12, dtype=torch.int32, **m)
    params = torch.zeros(7, dtype=f64, **m)
    y0 = torch.zeros(B, D, dtype=f64, **m)
    out_t = torch.zeros(B, T, dtype=f64, **m)
    ev_t = torch.zeros(B, E, dtype=f64, **m)
    args = (
        ints,
        params,
        y0,
        out_t,
        ev_t,
        ev_t,
        torch.zeros(B, E, dtype=torch.int32, **m),
        torch.zeros(B, E, dtype=f64, **m),
        torch.zeros(B, 0, dtype=f64, **m),
        torch.zeros(B, 0, 0, dtype=f64, **m),
        1e-6,
        1e-8,
        100,
        cap,
    )
    y, st, ck_t, ck_tn, ck_y, ck_j, ck_n = torch.ops.hnode_fast.solve(*args[:13], 0, cap)
    assert y.shape == (T, B, D) and st.shape == (B, 4) and st.dtype == torch.int64
    assert ck_t.shape == (B, cap) and ck_y.shape == (B, cap, D) and ck_j.dtype == torch.uint8 and ck_n.shape == (B,)
    gp, gy0, gev = torch.ops.hnode_fast.solve_backward(
        torch.zeros(T, B, D, dtype=f64, **m), *args[:13], 0, st, ck_t, ck_tn, ck_y, ck_j, ck_n
    )
    assert gp.shape == params.shape and gy0.shape == (B, D) and gev.shape == (B, E)


# ---------------------------------------------------------------- on a GPU
def both(f, y0, t, **kw):
    """(reference on the CPU, cuda) solves of the same problem, outputs back on the CPU."""
    ev, inp = kw.pop("events", None), kw.pop("inputs", None)
    yr, sr = hf.odeint(f, y0, t, backend="reference", return_stats=True, events=ev, inputs=inp, **kw)
    fc = copy.deepcopy(f).to(DEV)
    evc = None if ev is None else hf.Events(times=ev.times.to(DEV), states=ev.states.to(DEV), amounts=ev.amounts.to(DEV))
    inc = None if inp is None else hf.Inputs(times=inp.times.to(DEV), values=inp.values.to(DEV))
    yc, sc = hf.odeint(fc, y0.to(DEV), t.to(DEV), backend="cuda", return_stats=True, events=evc, inputs=inc, **kw)
    return (yr, sr), (yc.cpu(), sc)


def _stat(s, name):
    return getattr(s, name).cpu()


def assert_same_stats(sr, sc):
    for name in ("n_steps", "n_rejected", "nfe", "status"):
        assert torch.equal(_stat(sr, name), _stat(sc, name)), (name, _stat(sr, name), _stat(sc, name))


def assert_close_nan(a, b, rtol=1e-11, atol=1e-12):
    assert torch.equal(torch.isnan(a), torch.isnan(b))
    m = ~torch.isnan(a)
    torch.testing.assert_close(a[m], b[m], rtol=rtol, atol=atol)


@NEEDS_GPU
@pytest.mark.parametrize("D", [1, 3, 17])
@pytest.mark.parametrize("B", [1, 4, 300])
def test_solve_matches_reference_float64(D, B, seed):
    f = random_field(D=D, hidden=(16, 16))
    y0 = torch.rand(B, D, dtype=f64)
    t = torch.linspace(0, 3, 13, dtype=f64)
    with torch.no_grad():
        (yr, sr), (yc, sc) = both(f, y0, t, rtol=1e-7, atol=1e-9)
    assert_same_stats(sr, sc)
    torch.testing.assert_close(yc, yr, rtol=1e-11, atol=1e-12)


@NEEDS_GPU
@pytest.mark.parametrize("hidden", [(8,), (32, 32), (128, 128)], ids=["small", "bucket", "generic"])
def test_workspace_paths_agree(hidden, seed):
    f = random_field(D=8, hidden=hidden, scale=0.2)
    y0 = torch.rand(37, 8, dtype=f64)
    t = torch.linspace(0, 1, 5, dtype=f64)
    with torch.no_grad():
        (yr, sr), (yc, sc) = both(f, y0, t)
    assert_same_stats(sr, sc)
    torch.testing.assert_close(yc, yr, rtol=1e-11, atol=1e-12)


@NEEDS_GPU
@pytest.mark.parametrize("act", ["tanh", "relu", "softplus", "sigmoid"])
def test_masked_csr_and_fully_masked_layer(act, seed):
    f = random_field(D=5, hidden=(10, 10), activation=act, mask_density=0.3)
    f.nn.set_mask(1, torch.zeros_like(f.nn.masks[1]))
    y0 = torch.rand(3, 5, dtype=f64)
    t = torch.linspace(0, 2, 5, dtype=f64)
    with torch.no_grad():
        (yr, sr), (yc, sc) = both(f, y0, t)
    assert_same_stats(sr, sc)
    torch.testing.assert_close(yc, yr, rtol=1e-11, atol=1e-12)


@NEEDS_GPU
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
    with torch.no_grad():
        (yr, sr), (yc, sc) = both(f, torch.rand(B, D, dtype=f64), t, events=ev, inputs=inp, rtol=1e-8, atol=1e-10)
    assert_same_stats(sr, sc)
    torch.testing.assert_close(yc, yr, rtol=1e-11, atol=1e-12)


@NEEDS_GPU
def test_float32_close_to_reference(seed):
    f = random_field(D=4, hidden=(16, 16))
    y0 = torch.rand(5, 4, dtype=f64)
    t = torch.linspace(0, 3, 7, dtype=f64)
    with torch.no_grad():
        y64 = hf.odeint(f, y0, t, rtol=1e-5, atol=1e-7, backend="reference")
        f32 = f.float()
        (yr, sr), (yc, sc) = both(f32, y0.float(), t, rtol=1e-5, atol=1e-7)
    assert yc.dtype == torch.float32 and (_stat(sc, "status") == 0).all()
    torch.testing.assert_close(yc, yr, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(yc.double(), y64, rtol=1e-3, atol=1e-4)
    assert (_stat(sc, "n_steps") - _stat(sr, "n_steps")).abs().max() <= 1


@NEEDS_GPU
def test_blow_up_status_and_nan_like_reference():
    f = hf.HybridField(mech=hf.MechanisticGraph(1, [hf.MassAction((0, 0), 0, 1.0, consume=False)], dtype=f64))
    y0 = torch.tensor([[1.0], [0.1]], dtype=f64)
    t = torch.tensor([0.0, 0.5, 2.0, 3.0], dtype=f64)
    with torch.no_grad():
        (yr, sr), (yc, sc) = both(f, y0, t)
    assert int(_stat(sc, "status")[0]) != 0 and int(_stat(sc, "status")[1]) == 0
    assert_same_stats(sr, sc)
    assert_close_nan(yc, yr)


@NEEDS_GPU
def test_max_steps_like_reference(seed):
    f = random_field(D=2, hidden=(4,))
    with torch.no_grad():
        (yr, sr), (yc, sc) = both(f, torch.rand(3, 2, dtype=f64), torch.linspace(0, 5, 4, dtype=f64), rtol=1e-12, atol=1e-14, max_steps=7)
    assert (_stat(sc, "status") == 1).all()
    assert_same_stats(sr, sc)
    assert_close_nan(yc, yr)


def _grads(f, y0, t, w, backend, **kw):
    params = [p for p in f.parameters() if p.requires_grad]
    y = hf.odeint(f, y0, t, backend=backend, **kw)
    return torch.autograd.grad((y.nan_to_num() * w).sum(), [y0] + params, allow_unused=True)


@NEEDS_GPU
@pytest.mark.parametrize("case", ["plain", "events", "masked"])
def test_gradients_equal_autograd_through_reference(case, seed):
    B, D = 3, 4
    kw = {}
    f = random_field(D=D, hidden=(8, 8), mask_density=0.5 if case == "masked" else None)
    if case == "events":
        kw["events"] = hf.Events(
            times=torch.tensor([[0.0, 0.8], [0.5, float("inf")], [1.2, 1.2]], dtype=f64),
            states=torch.tensor([[0, 1], [2, 0], [3, 3]]),
            amounts=torch.rand(B, 2, dtype=f64),
        )
    y0 = torch.rand(B, D, dtype=f64)
    t = torch.linspace(0, 2, 6, dtype=f64)
    w = torch.randn(6, B, D, dtype=f64)
    gr = _grads(f, y0.clone().requires_grad_(), t, w, "reference", rtol=1e-7, atol=1e-9, **kw)
    fc = copy.deepcopy(f).to(DEV)
    kwc = {}
    if "events" in kw:
        ev = kw["events"]
        kwc["events"] = hf.Events(times=ev.times.to(DEV), states=ev.states.to(DEV), amounts=ev.amounts.to(DEV))
    gc = _grads(fc, y0.to(DEV).requires_grad_(), t.to(DEV), w.to(DEV), "cuda", rtol=1e-7, atol=1e-9, **kwc)
    for a, b in zip(gr, gc):
        if a is None:
            assert b is None or (b == 0).all()
        else:
            torch.testing.assert_close(b.cpu(), a, rtol=1e-10, atol=1e-11)


def _op_case(dtype=f64):
    torch.manual_seed(0)
    f = random_field(D=2, hidden=(3,), dtype=dtype)
    spec = f.compile()
    B = 2
    d = dict(device=DEV)
    y0 = torch.rand(B, 2, dtype=dtype, **d)
    out_t = torch.tensor([[0.0, 0.02, 0.05, 0.08], [0.0, 0.03, 0.06, 0.1]], dtype=f64, **d)
    ev_t = torch.tensor([[0.04], [0.05]], dtype=f64, **d)
    ev_s = torch.tensor([[1], [0]], dtype=torch.int32, **d)
    ev_a = torch.rand(B, 1, dtype=dtype, **d)
    in_t = torch.zeros(B, 0, dtype=f64, **d)
    in_v = torch.zeros(B, 0, 0, dtype=dtype, **d)
    return spec, spec.params.detach().to(DEV), y0, out_t, ev_t.clone(), ev_t, ev_s, ev_a, in_t, in_v


@NEEDS_GPU
@pytest.mark.parametrize("cap", [0, 1, 8], ids=["recompute", "overflow", "stored"])
def test_gradcheck_op(cap):
    spec, p0, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v = _op_case()

    def fn(params, y0, ev_a):
        return torch.ops.hnode_fast.solve(spec.ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, 1e-1, 1e-1, 100, 0, cap)[0]

    params = p0.clone().requires_grad_()
    assert torch.autograd.gradcheck(fn, (params, y0.requires_grad_(), ev_a.requires_grad_()), eps=1e-6, atol=1e-8)


@NEEDS_GPU
@pytest.mark.parametrize("cap", [0, 8])
def test_opcheck(cap):
    spec, p0, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v = _op_case()
    args = (
        spec.ints,
        p0.clone().requires_grad_(),
        y0.requires_grad_(),
        out_t,
        stops,
        ev_t,
        ev_s,
        ev_a.requires_grad_(),
        in_t,
        in_v,
        1e-1,
        1e-1,
        100,
        0,
        cap,
    )
    torch.library.opcheck(torch.ops.hnode_fast.solve.default, args)


@NEEDS_GPU
def test_gradients_deterministic_and_large_batch(seed):
    """Two-pass parameter-gradient reduction: bitwise repeatable; many threads, overflowed checkpoints."""
    f = random_field(D=3, hidden=(8, 8)).to(DEV)
    y0 = torch.rand(2000, 3, dtype=f64, device=DEV)
    t = torch.linspace(0, 3, 4, dtype=f64, device=DEV)
    params = [p for p in f.parameters() if p.requires_grad]  # (the mechanistic term gates are frozen)
    gs = [torch.autograd.grad(hf.odeint(f, y0, t, backend="cuda", max_steps=10_000).sum(), params) for _ in range(2)]
    for a, b in zip(gs[0], gs[1]):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- GPU: work layout and scale
def _cpu_vs_cuda(f, y0, t, w, tol, **ex):
    """(outputs, stats, gradients) of the cpu backend (on CPU copies) and of the cuda backend."""
    params = [p for p in f.parameters() if p.requires_grad]
    out = []
    for dev, bk in (("cpu", "cpu"), (DEV, "cuda")):
        fd = copy.deepcopy(f).to(dev)
        pd = [p for p in fd.parameters() if p.requires_grad]
        exd = {k: type(v)(**{n: getattr(v, n).to(dev) for n in v.__dataclass_fields__}) for k, v in ex.items()} if ex else {}
        yy0 = y0.detach().to(dev).requires_grad_(True)
        y, st = hf.odeint(fd, yy0, t.to(dev), backend=bk, return_stats=True, **tol, **exd)
        g = torch.autograd.grad((y.nan_to_num() * w.to(dev)).sum(), [yy0] + pd)
        out.append((y.detach().cpu(), st, [x.cpu() for x in g]))
    assert len(params) + 1 == len(out[0][2])
    return out


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@NEEDS_GPU
@pytest.mark.parametrize(
    "case",
    [
        dict(D=8, hidden=(32, 32), dtype=f64),  # local-memory bucket, weights in shared memory
        dict(D=8, hidden=(128, 128), dtype=f64),  # generic path: global workspace, weights in global memory
        dict(D=5, hidden=(16, 16), dtype=f64, mask_density=0.3, n_inputs=2, nn_inputs=True),  # CSR + inputs + events
        dict(D=8, hidden=(32, 32), dtype=torch.float32),  # float32 forward and gradients
    ],
    ids=["bucket_f64", "generic_f64", "csr_inputs_events_f64", "bucket_f32"],
)
def test_several_trajectories_per_thread(case, seed, monkeypatch):
    """The launches' scratch budget shrunk to 64 KiB: 128 threads for 300 trajectories, so each
    thread solves (and differentiates) several, grid-stride. Outputs, step counts and
    discrete-adjoint gradients (interleaved per-thread partials, then the tree reduction) match
    the cpu backend; gradients bitwise repeatable."""
    monkeypatch.setattr(hcuda, "_WS_BUDGET_BYTES", 1 << 16)
    kw = dict(case)
    dt = kw["dtype"]
    K = kw.get("n_inputs", 0)
    f = random_field(**kw)
    D, B = kw["D"], 300
    y0 = torch.rand(B, D, dtype=dt)
    t = torch.linspace(0, 2, 7, dtype=dt)
    w = torch.randn(7, B, D, dtype=dt)
    ex = {}
    if K:
        times = torch.where(torch.rand(B, 2) < 0.5, torch.rand(B, 2, dtype=f64) * 2, torch.full((B, 2), float("inf"), dtype=f64))
        ex["events"] = hf.Events(times=times, states=torch.randint(0, D, (B, 2)), amounts=torch.rand(B, 2, dtype=dt))
        ex["inputs"] = hf.Inputs(times=torch.sort(torch.rand(B, 3, dtype=f64) * 2, 1).values, values=torch.randn(B, 3, K, dtype=dt))
    spec = f.compile()
    P = spec.params.numel()
    plan = _native._C.cuda_plan(spec.ints.data_ptr(), spec.ints.numel(), P, D, dt == f64)
    assert hcuda._n_thr(B, P + (plan["wsz"] if plan["bucket"] == 0 else 0), y0.element_size()) < B
    tol = dict(rtol=1e-7, atol=1e-9) if dt == f64 else dict(rtol=1e-5, atol=1e-7)
    (yc, sc, gc), (yg, sg, gg) = _cpu_vs_cuda(f, y0, t, w, tol, **ex)
    if dt == f64:
        assert _rel(yg, yc) < 1e-10
        for n in ("n_steps", "n_rejected", "nfe", "status"):
            assert torch.equal(getattr(sg, n).cpu(), getattr(sc, n)), n
        for a, b in zip(gg, gc):
            assert _rel(a, b) < 1e-9
    else:  # float32: FMA contraction on the GPU moves the last bits; a step decision may flip
        assert _rel(yg, yc) < 1e-3
        assert int((sg.n_steps.cpu() - sc.n_steps).abs().max()) <= 1
        for a, b in zip(gg, gc):
            assert _rel(a, b) < 2e-2
    (_, _, gg2) = _cpu_vs_cuda(f, y0, t, w, tol, **ex)[1]
    assert all(torch.equal(a, b) for a, b in zip(gg, gg2))


@NEEDS_GPU
def test_large_batch_sampled_rows_match_cpu(seed):
    """B = 1e5 float32 (the benchmark field): every trajectory succeeds; sampled rows (the first,
    the last -- where 32-bit offsets would overflow first -- and random ones) of the outputs and of
    the y0 gradient match the cpu backend on the same rows."""
    torch.manual_seed(seed)
    f = hf.HybridField(nn=hf.MaskedMLP(8, 8, hidden=(32, 32), activation="tanh")).float()
    B = 100_000
    y0 = (torch.rand(B, 8) - 0.5) * 2
    t = torch.linspace(0, 5.0, 20)
    tol = dict(rtol=1e-5, atol=1e-7)
    fg = copy.deepcopy(f).to(DEV)
    y0g = y0.to(DEV).requires_grad_(True)
    yg, sg = hf.odeint(fg, y0g, t.to(DEV), backend="cuda", return_stats=True, **tol)
    (gy0,) = torch.autograd.grad(yg.pow(2).sum(), [y0g])
    assert bool((sg.status == 0).all())
    idx = torch.cat([torch.arange(32), torch.arange(B - 32, B), torch.randint(0, B, (64,))]).unique()
    ys = y0[idx].clone().requires_grad_(True)
    yc = hf.odeint(f, ys, t, backend="cpu", **tol)
    (gyc,) = torch.autograd.grad(yc.pow(2).sum(), [ys])
    assert _rel(yg[:, idx.to(DEV)].cpu(), yc.detach()) < 1e-3
    assert _rel(gy0[idx.to(DEV)].cpu(), gyc) < 1e-2


@NEEDS_GPU
def test_one_device_sync_per_forward(seed):
    """The forward's validation reads its checks back once, the FieldSpec table is copied to the
    device once per table: a repeated no-grad solve synchronises at most twice (the checks and the
    spec cache's value comparison)."""
    import warnings

    f = random_field(D=4, hidden=(16, 16)).float().to(DEV)
    y0 = torch.rand(64, 4, device=DEV)
    t = torch.linspace(0, 1, 5, device=DEV)
    with torch.no_grad():
        hf.odeint(f, y0, t, backend="cuda")
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                hf.odeint(f, y0, t, backend="cuda")
            finally:
                torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message)[:100] for w in rec if "called a synchronizing" in str(w.message)]
    assert len(syncs) <= 2, syncs


@NEEDS_GPU
def test_auto_picks_cuda_for_cuda_tensors(monkeypatch):
    calls = []
    orig = backends._BUILT["cuda"]
    monkeypatch.setitem(backends._BUILT, "cuda", lambda prob: calls.append(1) or orig(prob))
    f = random_field(D=2, hidden=(4,)).to(DEV)
    with torch.no_grad():
        hf.odeint(f, torch.rand(2, 2, dtype=f64, device=DEV), torch.linspace(0, 1, 3, dtype=f64, device=DEV))
    assert calls == [1]


@NEEDS_GPU
def test_runs_on_current_stream_and_rejects_bad_args():
    f = random_field(D=2, hidden=(4,)).to(DEV)
    s = torch.cuda.Stream()
    with torch.no_grad(), torch.cuda.stream(s):
        y = hf.odeint(f, torch.rand(4, 2, dtype=f64, device=DEV), torch.linspace(0, 1, 3, dtype=f64, device=DEV), backend="cuda")
    s.synchronize()
    assert torch.isfinite(y).all()
    spec, p0, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v = _op_case()
    good = [spec.ints, p0, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, 1e-3, 1e-6, 100, 0]
    for i, bad in ((1, p0[:-1]), (2, y0.float()), (3, out_t[:1]), (6, ev_s + 5), (2, y0.cpu())):
        args = list(good)
        args[i] = bad
        with pytest.raises((ValueError, RuntimeError)):
            torch.ops.hnode_fast.solve(*args)


def test_one_argument_check_for_every_device():
    """The CPU and CUDA kernels validate their arguments with one checker (backends/args.py):
    shapes, dtypes and ranges on CPU tensors here; the device rules (everything but ``ints`` on
    y0's device) with meta tensors standing in for a device, so this runs without a GPU."""
    from hnode_fast.backends import args as A

    torch.manual_seed(0)
    spec = random_field(D=2, hidden=(3,)).compile()
    B = 2
    y0 = torch.rand(B, 2, dtype=f64)
    out_t = torch.tensor([[0.0, 0.5], [0.0, 0.6]], dtype=f64)
    ev_t = torch.tensor([[0.4], [0.5]], dtype=f64)
    ev_s = torch.tensor([[1], [0]], dtype=torch.int32)
    good = [
        spec.ints,
        spec.params.detach(),
        y0,
        out_t,
        ev_t,
        ev_t,
        ev_s,
        torch.rand(B, 1, dtype=f64),
        torch.zeros(B, 0, dtype=f64),
        torch.zeros(B, 0, 0, dtype=f64),
    ]

    def check(args, device_type="cpu"):
        A.check("op", *args, 100, device_type)

    check(good)
    for i, bad in ((1, good[1][:-1]), (2, y0.float()), (3, out_t[:1]), (6, ev_s + 5), (6, ev_s.long()), (0, spec.ints.long())):
        args = list(good)
        args[i] = bad
        with pytest.raises(ValueError, match="^op: "):
            check(args)
    with pytest.raises(ValueError, match="y0 must be a CUDA tensor"):
        check(good, "cuda")
    # a device: every tensor but ints on y0's device (no events, so no value is read)
    host = [x[:, :0] if i in (4, 5, 6, 7) else x for i, x in enumerate(good)]
    dev = [x if i == 0 else x.to("meta") for i, x in enumerate(host)]
    check(dev, "meta")
    for i in range(1, 10):
        args = list(dev)
        args[i] = host[i]
        with pytest.raises(ValueError, match="is on cpu but y0 is on meta|y0 must be a META tensor"):
            check(args, "meta")
    args = list(dev)
    args[0] = torch.zeros_like(spec.ints, device="meta")
    with pytest.raises(ValueError, match="ints .FieldSpec table. must be a CPU tensor"):
        check(args, "meta")
