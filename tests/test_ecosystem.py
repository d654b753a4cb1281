"""Fitting into PyTorch: torch.compile gives the eager result; DDP all-reduces gradients."""
import os
import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp

import hnode_fast as hf
from hnode_fast import backends
from hnode_fast.bench import mlp_field

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


def _worker(rank, world, port, out):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = torch.nn.parallel.DistributedDataParallel(Model())
    y0, target = _data()
    sl = slice(rank * 4, rank * 4 + 4)
    loss = ((model(y0[sl]) - target[:, sl]) ** 2).sum() / 8 * world  # mean over the global batch
    loss.backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in model.module.named_parameters() if p.grad is not None}, out)
    torch.distributed.barrier()  # no rank tears gloo down while the other still talks to it
    torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available() or sys.platform == "win32", reason="needs torch.distributed")
def test_ddp_two_processes_gloo(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "grads.pt")
    mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
    ddp = torch.load(out)
    model = Model()
    y0, target = _data()
    (((model(y0) - target) ** 2).sum() / 8).backward()  # full-batch mean loss in one process
    ref = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(ddp) == set(ref) and ref
    for n in ref:
        # each rank's loss is world * (its share of the global mean); DDP averages over ranks
        torch.testing.assert_close(ddp[n], ref[n], rtol=1e-10, atol=1e-12)
