"""Fitting into PyTorch: torch.compile gives the eager result; DDP all-reduces gradients."""

import os
import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp

import hnode_fast as hf
from hnode_fast import backends
from hnode_fast.problems import mlp_field


def _conftest():
    # tests/conftest.py loaded by path: the bare name `conftest` can resolve to
    # tests/triton/conftest.py here and in the processes the DDP tests spawn
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location("_hnode_tests_conftest", pathlib.Path(__file__).with_name("conftest.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def random_field(*args, **kwargs):
    return _conftest().random_field(*args, **kwargs)


f64 = torch.float64


@pytest.mark.parametrize("backend", [b for b in backends.available() if b in ("reference", "cpu")])
def test_torch_compile_matches_eager(backend):
    torch.manual_seed(0)
    f = mlp_field(D=3, hidden=(8,), dtype=f64)
    y0 = torch.randn(4, 3, dtype=f64, requires_grad=True)
    t = torch.linspace(0, 1, 5, dtype=f64)

    def loss(y0):
        return hf.odeint(f, y0, t, backend=backend, rtol=1e-8, atol=1e-10).pow(2).sum()

    e = loss(y0)
    (ge,) = torch.autograd.grad(e, y0)
    torch._dynamo.reset()
    c = torch.compile(loss)(y0)
    (gc,) = torch.autograd.grad(c, y0)
    torch.testing.assert_close(c, e, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(gc, ge, rtol=1e-12, atol=1e-13)


needs_cpu = pytest.mark.skipif("cpu" not in backends.available(), reason="needs the compiled CPU backend")


def hybrid_field(n_inputs=0):
    """Mechanistic terms + a masked MLP (CSR layer and constant units included); smooth Hill
    exponents (see assert_grads_close)."""
    f = random_field(D=3, hidden=(8, 6), n_inputs=n_inputs, mask_density=0.45, hill_n=_conftest().SMOOTH_HILL)
    f.mech.set_term_mask(torch.arange(f.mech.n_terms) % 4 != 1)
    return f


def compiled(fn):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True)


def grads(out, inputs):
    return torch.autograd.grad(out, inputs, allow_unused=True)


def assert_grads_close(a, b):
    """Compiled vs eager gradients. Not bitwise: the compiled graph folds the constant units'
    biases (spec.gather_params) with inductor's own matmul and tanh, which may round the last
    bit differently from eager (and differently on another CPU), and the adaptive solve
    amplifies that. Measured (1-ulp perturbation of every parameter, 26 seeds, rtol 1e-8): up
    to 1.1e-11 relative with smooth Hill terms; up to 6e-8 with Hill exponent 1.5, whose
    Jacobian is not Lipschitz at 0 (a CI failure at 4.9e-12 with rtol 1e-12, seed 599047233).
    A wrong gradient, a graph break or a stale spec is off by far more than 1e-10."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-13)


@needs_cpu
@pytest.mark.parametrize("adjoint", ["discrete", "backsolve"])
def test_compile_fullgraph_hybrid_field(adjoint, seed):
    """hf.odeint(backend="cpu") traces into ONE graph (validation, spec gather, op): forward and
    backward equal eager in float64."""
    f = hybrid_field()
    y0 = (torch.rand(5, 3, dtype=f64) + 0.1).requires_grad_(True)
    t = torch.linspace(0, 1.5, 6, dtype=f64)
    params = [p for p in f.parameters() if p.requires_grad]

    def loss(y0):
        return hf.odeint(f, y0, t, backend="cpu", rtol=1e-8, atol=1e-10, adjoint=adjoint).pow(2).sum()

    e = loss(y0)
    ge = grads(e, [y0] + params)
    cfn = compiled(loss)  # fullgraph=True: any graph break is an error
    for _ in range(2):  # the second call reuses the compiled graph
        c = cfn(y0)
        torch.testing.assert_close(c, e, rtol=1e-12, atol=0)
        assert_grads_close(grads(c, [y0] + params), ge)
    ex = torch._dynamo.explain(loss)(y0)
    assert ex.graph_count == 1 and ex.graph_break_count == 0, ex.break_reasons


@needs_cpu
def test_compile_fullgraph_events_inputs_stats(seed):
    """Doses (gradient to the amounts), exogenous inputs broadcast from one row, per-trajectory
    times and return_stats trace too (backend="auto" picks cpu)."""
    f = hybrid_field(n_inputs=1)
    B = 4
    y0 = (torch.rand(B, 3, dtype=f64) + 0.1).requires_grad_(True)
    t = torch.rand(B, 5, dtype=f64).cumsum(1)
    amounts = torch.rand(B, 2, dtype=f64, requires_grad=True)
    times = t[:, :1] + torch.rand(B, 2, dtype=f64).sort(1).values
    times[0, 1] = float("inf")  # a padded slot
    ev = hf.Events(times=times, states=torch.randint(0, 3, (B, 2)), amounts=amounts)
    inp = hf.Inputs(times=torch.tensor([[0.0, 0.7]], dtype=f64), values=torch.rand(1, 2, 1, dtype=f64))
    params = [p for p in f.parameters() if p.requires_grad]

    def loss(y0):
        y, st = hf.odeint(f, y0, t, rtol=1e-8, atol=1e-10, events=ev, inputs=inp, return_stats=True)
        return y.pow(2).sum(), st.nfe

    e, nfe_e = loss(y0)
    ge = grads(e, [y0, amounts] + params)
    c, nfe_c = compiled(loss)(y0)
    torch.testing.assert_close(c, e, rtol=1e-12, atol=0)
    assert torch.equal(nfe_c, nfe_e)
    assert_grads_close(grads(c, [y0, amounts] + params), ge)


@needs_cpu
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_compile_fullgraph_l0_gates_edge_weights(mode, seed):
    """L0 gates (some closed) and HGS edge weights: under compile the structure comes from the
    masks only (closed gates multiply by 0); equal to eager up to rounding."""
    net = hf.MaskedMLP(3, 3, hidden=(6, 5), gates="l0").to(f64)
    with torch.no_grad():
        net.log_alpha[1][:3] = -20.0  # closed in eval mode and (almost surely) in training mode
    net.add_edge_weights(torch.arange(6) % 3)
    mech = hf.MechanisticGraph(3, [hf.Linear(0, 1, 0.5), hf.Constant(0, 0.1)], dtype=f64, learn_gates=True)
    f = getattr(hf.HybridField(mech=mech, nn=net), mode)()
    net.resample_gates()
    y0 = (torch.rand(4, 3, dtype=f64) + 0.1).requires_grad_(True)
    t = torch.linspace(0, 1, 4, dtype=f64)
    params = [p for p in f.parameters() if p.requires_grad]

    def loss(y0):
        return hf.odeint(f, y0, t, backend="cpu", rtol=1e-9, atol=1e-11).pow(2).sum()

    e = loss(y0)
    ge = grads(e, [y0] + params)
    c = compiled(loss)(y0)
    torch.testing.assert_close(c, e, rtol=1e-12, atol=0)
    assert_grads_close(grads(c, [y0] + params), ge)  # the gates' sigmoid is inductor's here too


@needs_cpu
def test_compile_bad_input_still_raises():
    """Under torch.compile the data-dependent checks run inside the graph; the op raises the
    same ValueError as eager (nothing NaN passes silently)."""
    f = hybrid_field()
    t = torch.linspace(0, 1, 3, dtype=f64)
    cfn = compiled(lambda y0, t: hf.odeint(f, y0, t, backend="cpu"))
    y0 = torch.rand(2, 3, dtype=f64)
    torch.testing.assert_close(cfn(y0, t), hf.odeint(f, y0, t, backend="cpu"), rtol=1e-13, atol=0)
    with pytest.raises(ValueError, match="y0 contains NaN"):
        cfn(torch.tensor([[float("nan"), 1.0, 1.0]] * 2, dtype=f64), t)
    with pytest.raises(ValueError, match="strictly increasing"):
        cfn(y0, torch.tensor([0.0, 1.0, 0.5], dtype=f64))
    with torch.no_grad():
        f.nn.layers[1].bias[0] = float("inf")
    with pytest.raises(ValueError, match="nn.layers.1.bias"):
        cfn(y0, t)


@needs_cpu
def test_compile_follows_mask_changes():
    """The sparsity structure is a constant of the compiled graph: set_mask / set_term_mask
    trigger a recompile (guard); masks edited in place some other way make the op raise."""
    f = hybrid_field()
    y0 = torch.rand(3, 3, dtype=f64)
    t = torch.linspace(0, 1, 3, dtype=f64)
    solve = lambda y0: hf.odeint(f, y0, t, backend="cpu")  # noqa: E731
    cfn = compiled(solve)
    torch.testing.assert_close(cfn(y0), solve(y0), rtol=1e-13, atol=0)
    f.nn.set_mask(0, torch.ones_like(f.nn.masks[0]))
    torch.testing.assert_close(cfn(y0), solve(y0), rtol=1e-13, atol=0)
    f.mech.set_term_mask(torch.ones(f.mech.n_terms, dtype=torch.bool))
    torch.testing.assert_close(cfn(y0), solve(y0), rtol=1e-13, atol=0)
    with torch.no_grad():
        f.nn.mask_1[0, 0] = not bool(f.nn.mask_1[0, 0])
    with pytest.raises(ValueError, match="torch.compiler.reset"):
        cfn(y0)


@needs_cpu
def test_sharding_the_batch_is_bit_identical(seed):
    """Per-trajectory step sizes: each trajectory's solve does not depend on the others, so a
    batch split across ranks (docs/distributed.md) gives bit-identical outputs, stats and y0
    gradients; parameter gradients are sums over trajectories (equal up to summation order)."""
    f = hybrid_field()
    B = 9
    y0 = (torch.rand(B, 3, dtype=f64) + 0.1).requires_grad_(True)
    t = torch.rand(B, 4, dtype=f64).cumsum(1)
    ev = hf.Events(times=t[:, 1:2] + 0.1, states=torch.randint(0, 3, (B, 1)), amounts=torch.rand(B, 1, dtype=f64))
    params = [p for p in f.parameters() if p.requires_grad]

    def run(sl):
        e = hf.Events(ev.times[sl], ev.states[sl], ev.amounts[sl])
        y, st = hf.odeint(f, y0[sl], t[sl], backend="cpu", rtol=1e-7, atol=1e-9, events=e, return_stats=True)
        g = torch.autograd.grad(y.pow(2).sum(), [y0] + params)
        return y, st, g

    y, st, g = run(slice(None))
    parts = [run(slice(0, 4)), run(slice(4, B))]
    assert torch.equal(torch.cat([p[0] for p in parts], dim=1), y)
    for k in ("n_steps", "n_rejected", "nfe", "status"):
        assert torch.equal(torch.cat([getattr(p[1], k) for p in parts]), getattr(st, k))
    assert torch.equal(parts[0][2][0] + parts[1][2][0], g[0])  # y0 rows: disjoint, exact
    for a, b, c in zip(parts[0][2][1:], parts[1][2][1:], g[1:]):
        torch.testing.assert_close(a + b, c, rtol=1e-13, atol=1e-15)


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.field = mlp_field(D=3, hidden=(6,), dtype=f64)
        self.t = torch.linspace(0, 1, 4, dtype=f64)

    def forward(self, y0):
        return hf.odeint(self.field, y0, self.t, rtol=1e-8, atol=1e-10)


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, generator=g, dtype=f64), torch.randn(4, 8, 3, generator=g, dtype=f64)


def _worker(rank, world, port, out, compile_model=False):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = torch.nn.parallel.DistributedDataParallel(Model())
    if compile_model:  # DDP's optimizer splits the graph at bucket boundaries; the solve traces
        model = torch.compile(model)
    y0, target = _data()
    sl = slice(rank * 4, rank * 4 + 4)
    loss = ((model(y0[sl]) - target[:, sl]) ** 2).sum() / 8 * world  # mean over the global batch
    loss.backward()
    if rank == 0:
        ddp = model._orig_mod if compile_model else model
        torch.save({n: p.grad for n, p in ddp.module.named_parameters() if p.grad is not None}, out)
    torch.distributed.barrier()  # no rank tears gloo down while the other still talks to it
    torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available() or sys.platform == "win32", reason="needs torch.distributed")
@pytest.mark.parametrize("compile_model", [pytest.param(False, id="eager"), pytest.param(True, marks=needs_cpu, id="compiled")])
def test_ddp_two_processes_gloo(tmp_path, compile_model):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "grads.pt")
    mp.spawn(_worker, args=(2, port, out, compile_model), nprocs=2, join=True)
    ddp = torch.load(out)
    model = Model()
    y0, target = _data()
    (((model(y0) - target) ** 2).sum() / 8).backward()  # full-batch mean loss in one process
    ref = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(ddp) == set(ref) and ref
    for n in ref:
        # each rank's loss is world * (its share of the global mean); DDP averages over ranks
        torch.testing.assert_close(ddp[n], ref[n], rtol=1e-10, atol=1e-12)


def solve_sharded(field, y0, t, **kw):
    """docs/distributed.md's recipe: each rank solves its shard of the batch, all_gather."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    B = y0.shape[0]
    per = -(-B // world)
    lo, hi = min(rank * per, B), min((rank + 1) * per, B)
    y = hf.odeint(field, y0[lo:hi], t if t.dim() == 1 else t[lo:hi], **kw)
    T, D = y.shape[0], y.shape[2]
    pad = y.new_full((T, per - (hi - lo), D), float("nan"))
    y = torch.cat([y.detach(), pad], dim=1).contiguous()
    parts = [torch.empty_like(y) for _ in range(world)]
    torch.distributed.all_gather(parts, y)
    return torch.cat(parts, dim=1)[:, :B]


def _ensemble_problem():
    torch.manual_seed(2)
    f = hybrid_field()
    B = 11  # odd: the second shard is short
    return f, torch.rand(B, 3, dtype=f64) + 0.1, torch.rand(B, 6, dtype=f64).cumsum(1)


def _ensemble_worker(rank, world, port, out):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    f, y0, t = _ensemble_problem()
    y = solve_sharded(f, y0, t, backend="cpu", rtol=1e-8, atol=1e-10)
    if rank == 0:
        torch.save(y, out)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


@needs_cpu
@pytest.mark.skipif(not torch.distributed.is_available() or sys.platform == "win32", reason="needs torch.distributed")
def test_sharded_ensemble_two_processes_gloo(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "y.pt")
    mp.spawn(_ensemble_worker, args=(2, port, out), nprocs=2, join=True)
    f, y0, t = _ensemble_problem()
    assert torch.equal(torch.load(out), hf.odeint(f, y0, t, backend="cpu", rtol=1e-8, atol=1e-10))
