"""The CPU backend's lockstep lanes (hnode/lanes.h: LANES trajectories per thread advance
together, their field evaluations batched) give bitwise the results of one-at-a-time solves
(solve_one): field values, outputs, step statistics, checkpointed gradients, every status.
HNODE_CPU_LANES=0 / 1 forces either path (test_cpu_backend runs all its tests under both)."""

import pytest
import torch
from conftest import random_field

import hnode_fast as hf
from hnode_fast import backends

pytestmark = pytest.mark.skipif("cpu" not in backends.available(), reason="CPU solver not built")
cpu = pytest.importorskip("hnode_fast.backends.cpu")
f64 = torch.float64
inf = float("inf")


def per_path(monkeypatch, fn):
    """fn() once one trajectory at a time, once in lanes."""
    out = []
    for flag in ("0", "1"):
        monkeypatch.setenv("HNODE_CPU_LANES", flag)
        out.append(fn())
    return out


def assert_bitwise(a, b):
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_bitwise(x, y)
        return
    if a is None:
        assert b is None
        return
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(torch.isnan(a), torch.isnan(b))
    m = ~torch.isnan(a)
    assert torch.equal(a[m], b[m]), (a[m] - b[m]).abs().max()


@pytest.mark.parametrize("act", ["identity", "tanh", "relu", "elu", "softplus", "silu", "sigmoid"])
@pytest.mark.parametrize("layout", ["dense", "masked", "csr"])
@pytest.mark.parametrize("B", [1, 6, 11])
def test_field_eval_bitwise(act, layout, B, monkeypatch, seed):
    f = random_field(D=5, hidden=(13, 7), activation=act, n_inputs=2, nn_inputs=True, mask_density=None if layout == "dense" else 0.3)
    spec = f.compile(csr_threshold=1.0 if layout == "csr" else 0.25)
    z = torch.randn(B, 5, dtype=f64) * 2
    u = torch.randn(B, 2, dtype=f64)
    a, b = per_path(monkeypatch, lambda: cpu.eval_field(spec, z, u, n_threads=2))
    assert_bitwise(a, b)


def _mixed_problem(B, D=4, K=2, dtype=f64):
    """Trajectories of very different lengths and kinds: own time grids, doses, input switches,
    one without any step (a single output), one that blows up (a large start)."""
    f = random_field(D=D, hidden=(32, 32), n_inputs=K, nn_inputs=True, mask_density=0.15, dtype=dtype)
    assert any(r[2] == 1 for r in f.compile().layer_rows().tolist())  # a CSR layer: the lanes' sparse loop
    t = torch.sort(torch.rand(B, 7, dtype=f64) * torch.rand(B, 1, dtype=f64) * 4, dim=1).values
    t[:, 0] = 0.0
    t[:, -1] += 1e-3 + torch.arange(B, dtype=f64) * 0.1
    ev_t = torch.full((B, 2), inf, dtype=f64)
    ev_t[::3, 0] = t[::3, 2]
    ev_t[1::4, 1] = 0.0
    ev = hf.Events(times=ev_t, states=torch.randint(0, D, (B, 2)), amounts=torch.rand(B, 2, dtype=dtype))
    in_t = torch.sort(torch.rand(B, 3, dtype=f64) * 2, dim=1).values
    inp = hf.Inputs(times=in_t, values=torch.randn(B, 3, K, dtype=dtype))
    y0 = torch.rand(B, D, dtype=dtype)
    return f, y0, t, ev, inp


@pytest.mark.parametrize("dtype", [f64, torch.float32])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_solves_bitwise(dtype, n_threads, monkeypatch, seed):
    B = 13
    f, y0, t, ev, inp = _mixed_problem(B, dtype=dtype)
    with torch.no_grad():
        f.nn.layers[-1].bias[0] = 0.0
    y0[5] = 60.0  # far off: tanh saturates, the mechanistic terms grow; may fail or not, alike
    old = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:

        def run():
            with torch.no_grad():
                y, st = hf.odeint(f, y0, t, events=ev, inputs=inp, rtol=1e-7, atol=1e-9, backend="cpu", return_stats=True)
            return y, st.n_steps, st.n_rejected, st.nfe, st.status

        a, b = per_path(monkeypatch, run)
    finally:
        torch.set_num_threads(old)
    assert_bitwise(a, b)
    assert (a[1] > 0).any() and len(set(a[1].tolist())) > 3  # lanes of very different lengths


def test_failures_bitwise(monkeypatch):
    """A blow-up (status 3, NaN outputs) and max_steps (status 1) inside a batch of good lanes."""
    mech = hf.MechanisticGraph(2, [hf.MassAction((0, 0), 0, 1.0, consume=False), hf.Linear(1, None, 0.5)], dtype=f64)
    f = hf.HybridField(mech=mech)
    y0 = torch.rand(11, 2, dtype=f64) * 0.1
    y0[3, 0] = 2.0
    y0[8, 0] = 1.5
    t = torch.tensor([0.0, 0.5, 2.0, 3.0], dtype=f64)

    def run(max_steps):
        with torch.no_grad():
            y, st = hf.odeint(f, y0, t, rtol=1e-9, atol=1e-11, max_steps=max_steps, backend="cpu", return_stats=True)
        return y, st.n_steps, st.n_rejected, st.nfe, st.status

    for max_steps in (10000, 40):
        a, b = per_path(monkeypatch, lambda: run(max_steps))
        assert_bitwise(a, b)
        assert int(a[4][3]) != 0 and (a[4] == 0).any()


@pytest.mark.parametrize("adjoint", ["discrete", "backsolve"])
def test_gradients_bitwise(adjoint, monkeypatch, seed):
    """The forward's checkpoints (recorded per lane) feed the same adjoint."""
    B = 10
    f, y0, t, ev, inp = _mixed_problem(B)
    w = torch.randn(7, B, 4, dtype=f64)
    params = [p for p in f.parameters() if p.requires_grad]

    def run():
        y0g = y0.clone().requires_grad_()
        y = hf.odeint(f, y0g, t, events=ev, inputs=inp, rtol=1e-7, atol=1e-9, backend="cpu", adjoint=adjoint)
        g = torch.autograd.grad((y * w).sum(), [y0g] + params)
        return (y.detach(),) + g

    a, b = per_path(monkeypatch, run)
    assert_bitwise(a, b)


def _usable_builds():
    from hnode_fast import _native

    names = []
    for name in ("base", "avx2", "avx512"):
        try:
            old = _native._C.cpu_set_isa(name)
        except RuntimeError:  # not compiled in, or not usable on this CPU
            continue
        _native._C.cpu_set_isa(old)
        names.append(name)
    return names


@pytest.mark.parametrize("dtype", [f64, torch.float32], ids=["f64", "f32"])
def test_dense_lanes_every_build_bitwise(dtype, monkeypatch, seed):
    """The register-blocked dense lanes kernel (8/4/1 units x LANES lanes; 4 lanes in the base and
    AVX2 builds, 8 in the AVX-512 build) against one-at-a-time evaluation, in every build this CPU
    can run, and every build against the baseline's bits."""
    from hnode_fast import _native

    f = random_field(D=6, hidden=(21, 12, 9), n_inputs=1, nn_inputs=True, dtype=dtype)
    spec = f.compile()
    assert all(r[2] == 0 for r in spec.layer_rows().tolist())  # all dense
    z = torch.randn(19, 6, dtype=dtype)
    u = torch.randn(19, 1, dtype=dtype)
    results = {}
    for name in _usable_builds():
        old = _native._C.cpu_set_isa(name)
        try:
            one, lanes = per_path(monkeypatch, lambda: cpu.eval_field(spec, z, u, n_threads=1))
        finally:
            _native._C.cpu_set_isa(old)
        assert_bitwise(one, lanes)
        results[name] = lanes
    assert "base" in results
    for name, r in results.items():
        assert_bitwise(results["base"], r)


def test_fma_peak_probe():
    """``_C.cpu_fma_peak`` (bench_cpu.py's yardstick) names the widest ISA this CPU runs and gives
    a finite positive rate."""
    from hnode_fast import _native

    gflops, width, name = _native._C.cpu_fma_peak(0.002, 2)
    assert {"scalar": 1, "avx2": 4, "avx512": 8}[name] == width
    assert 0 < gflops < 1e4
    if "avx512" in _usable_builds():
        assert name == "avx512"
