"""The CUDA kernels' loop forms, run on the CPU (csrc/cpu/kernels_gpuloops.cpp, HNODE_GPU_LOOPS in
hnode/field.h): the register-blocked dense matvec (vector loads when rows are 16-byte aligned,
scalar otherwise; blocks of 8, 4 and 1 units) and the adjoint's interleaved per-thread parameter
partials (StridedGrad). Both keep every sum in the host form's order, so with no FMA contraction
on the CPU the results are bitwise those of the default build. test_cpu_backend.py also runs its
whole suite under this build (cpu_path fixture)."""

import contextlib

import pytest
import torch
from conftest import random_field

import hnode_fast as hf
from hnode_fast import _native, backends

pytestmark = pytest.mark.skipif("cpu" not in backends.available(), reason="CPU solver not built")
cpu = pytest.importorskip("hnode_fast.backends.cpu")
f64, f32 = torch.float64, torch.float32

# (D, hidden, mask_density, n_inputs): aligned widths (vector-load path, blocks of 8), odd widths
# (scalar path, blocks of 4 and single units), a sparse net (CSR layers), inputs into the net
SHAPES = [
    (8, (32, 32), None, 0),
    (3, (5, 7), None, 0),
    (5, (13, 4, 9), None, 2),
    (6, (24, 24), 0.3, 0),
    (4, (16,), 0.6, 1),
]


@contextlib.contextmanager
def isa(name):
    old = _native._C.cpu_set_isa(name)
    try:
        yield
    finally:
        _native._C.cpu_set_isa(old)


def _field(D, hidden, dens, K, dtype, act="tanh"):
    return random_field(D=D, hidden=hidden, mask_density=dens, n_inputs=K, nn_inputs=K > 0, dtype=dtype, activation=act)


def test_set_isa_round_trip_and_errors():
    with isa("gpuloops"):
        assert _native._C.cpu_isa() == "gpuloops"
        with isa("base"):
            assert _native._C.cpu_isa() == "base"
        assert _native._C.cpu_isa() == "gpuloops"
    with pytest.raises(RuntimeError, match="name must be"):
        _native._C.cpu_set_isa("sse9")


@pytest.mark.parametrize("dtype", [f64, f32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"D{s[0]}h{'x'.join(map(str, s[1]))}{'csr' if s[2] else ''}K{s[3]}")
@pytest.mark.parametrize("act", ["tanh", "silu"])
def test_eval_and_vjp_bitwise(seed, dtype, shape, act):
    D, hidden, dens, K = shape
    f = _field(D, hidden, dens, K, dtype, act)
    spec = f.compile()
    B = 37
    z = torch.randn(B, D, dtype=dtype)
    u = torch.randn(B, K, dtype=dtype) if K else None
    a = torch.randn(B, D, dtype=dtype)
    ref = cpu.eval_field(spec, z, u)
    rgz, rgp = cpu.vjp_field(spec, z, a, u)
    with isa("gpuloops"):
        out = cpu.eval_field(spec, z, u)
        gz, gp = cpu.vjp_field(spec, z, a, u)
    assert torch.equal(out, ref)
    assert torch.equal(gz, rgz) and torch.equal(gp, rgp)


@pytest.mark.parametrize("dtype", [f64, f32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"D{s[0]}h{'x'.join(map(str, s[1]))}{'csr' if s[2] else ''}K{s[3]}")
@pytest.mark.parametrize("threads", [1, 2])
def test_solve_and_adjoint_bitwise(seed, dtype, shape, threads):
    """Forward (outputs, stats) and discrete-adjoint gradients (y0, parameters, dose amounts)
    bitwise equal to the default build, with 1 and 2 threads (the interleaved partials of 2
    threads are summed in the same order as the per-thread rows)."""
    D, hidden, dens, K = shape
    f = _field(D, hidden, dens, K, dtype)
    B = 11
    y0 = torch.rand(B, D, dtype=dtype)
    t = torch.linspace(0, 2, 6, dtype=dtype)
    ev = hf.Events(times=torch.rand(B, 2, dtype=f64) * 2, states=torch.randint(0, D, (B, 2)), amounts=torch.rand(B, 2, dtype=dtype))
    ex = dict(events=ev)
    if K:
        ex["inputs"] = hf.Inputs(times=torch.sort(torch.rand(B, 3, dtype=f64) * 2, 1).values, values=torch.randn(B, 3, K, dtype=dtype))
    tol = dict(rtol=1e-7, atol=1e-9) if dtype == f64 else dict(rtol=1e-5, atol=1e-7)
    w = torch.randn(6, B, D, dtype=dtype)
    params = [p for p in f.parameters() if p.requires_grad]

    def run():
        yy0 = y0.clone().requires_grad_(True)
        amounts = ev.amounts.clone().requires_grad_(True)
        exx = dict(ex, events=hf.Events(times=ev.times, states=ev.states, amounts=amounts))
        y, st = hf.odeint(f, yy0, t, backend="cpu", return_stats=True, **tol, **exx)
        g = torch.autograd.grad((y * w).sum(), [yy0, amounts] + params)
        return y.detach(), st, g

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y_ref, st_ref, g_ref = run()
        with isa("gpuloops"):
            y, st, g = run()
    finally:
        torch.set_num_threads(old_threads)
    assert torch.equal(y, y_ref)
    for name in ("n_steps", "n_rejected", "nfe", "status"):
        assert torch.equal(getattr(st, name), getattr(st_ref, name)), name
    for a, b in zip(g, g_ref):
        assert torch.equal(a, b)
