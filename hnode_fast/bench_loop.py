"""The torchdiffeq ode_demo training loop, timed: ``hnode-fast bench --loop``.

ode_demo (torchdiffeq/examples/ode_demo.py): the spiral ``dy/dt = (y**3) A`` sampled at 1000 times
on [0, 25]; each iteration draws B=20 windows of 10 samples, solves the network field
``nn.Sequential(Linear(2, 50), Tanh, Linear(50, 2))`` from each window's first sample (dopri5,
rtol 1e-7, atol 1e-9, float32), takes the mean absolute error, backward, one Adam step
(lr 1e-3). Both solvers train the SAME network on ``y`` (ode_demo feeds ``y**3``, which a compiled
field cannot express: see the README's migration table), from the same initial weights, on the
same windows. Rows: ms per iteration (median after warm-up), the ratio to torchdiffeq, NFE of
the forward solve per iteration (torchdiffeq: calls of the batched function, which takes one
step size for the whole batch; hnode: the largest per-trajectory count).

Conditions: ``quiet`` (nothing else running), and ``busy N`` with N extra processes spinning on
the cores (the shared-machine case, where a thread pool stalls on a descheduled peer). Both with
the default environment (torch's default thread count, no OMP_NUM_THREADS). The hnode rows use
the cpu backend's thread choice by work size and, for comparison, every torch thread forced.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from .backends import available
from .backends.threads import get_cpu_threads, set_cpu_threads
from .fields import HybridField
from .solve import odeint

D, WIDTH, B, WINDOW, N_SAMPLES = 2, 50, 20, 10, 1000
TRUE_A = [[-0.1, 2.0], [-2.0, -0.1]]


def _spin() -> None:  # pragma: no cover - runs in the busy child processes
    while True:
        pass


def spiral_data(dtype=torch.float32):
    """ode_demo's data: ``t (1000,)`` and ``y (1000, 1, 2)``, solved tightly by the reference."""
    t = torch.linspace(0.0, 25.0, N_SAMPLES, dtype=torch.float64)
    A = torch.tensor(TRUE_A, dtype=torch.float64)
    with torch.no_grad():
        y = odeint(
            lambda tt, yy: (yy**3) @ A, torch.tensor([[2.0, 0.0]], dtype=torch.float64), t, rtol=1e-10, atol=1e-12, backend="reference"
        )
    return t.to(dtype), y.to(dtype)


def make_net(seed: int, dtype=torch.float32) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(D, WIDTH), torch.nn.Tanh(), torch.nn.Linear(WIDTH, D)).to(dtype)
    for m in net:
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, mean=0, std=0.1)
            torch.nn.init.constant_(m.bias, val=0)
    return net


class _Func(torch.nn.Module):
    """ode_demo's ODEFunc without the cube: ``f(t, y) = net(y)``, counting calls."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return self.net(y)


def training_step(solver: str, iters: int, seed: int = 0, warmup: int = 3) -> Dict[str, float]:
    """``{"ms": median ms per iteration, "nfe": median forward NFE}`` of ``iters`` timed ode_demo
    iterations with ``solver`` in ``torchdiffeq | hnode_cpu | hnode_cpu_all_threads | hnode_reference``."""
    t, y = spiral_data()
    net = make_net(seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    bt = t[:WINDOW]
    if solver == "torchdiffeq":
        import torchdiffeq

        func = _Func(net)

        def solve(y0):
            func.nfe = 0
            out = torchdiffeq.odeint(func, y0, bt, rtol=1e-7, atol=1e-9)
            return out, float(func.nfe)
    else:
        field = HybridField(nn=net)
        backend = "reference" if solver == "hnode_reference" else "cpu"

        def solve(y0):
            out, st = odeint(field, y0, bt, rtol=1e-7, atol=1e-9, backend=backend, return_stats=True)
            return out, float(st.nfe.max())

    old = get_cpu_threads()
    if solver == "hnode_cpu_all_threads":
        set_cpu_threads(torch.get_num_threads())
    times: List[float] = []
    nfes: List[float] = []
    try:
        for i in range(warmup + iters):
            s = torch.randint(0, N_SAMPLES - WINDOW, (B,), generator=g)
            y0 = y[s, 0]  # (B, 2)
            target = torch.stack([y[s + k, 0] for k in range(WINDOW)])  # (T, B, 2)
            t0 = time.perf_counter()
            opt.zero_grad()
            pred, nfe = solve(y0)
            loss = (pred - target).abs().mean()
            loss.backward()
            opt.step()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
                nfes.append(nfe)
    finally:
        set_cpu_threads(old)
    return {"ms": 1e3 * statistics.median(times), "nfe": statistics.median(nfes)}


def solvers() -> List[str]:
    out = []
    try:
        import torchdiffeq  # noqa: F401

        out.append("torchdiffeq")
    except ImportError:
        print('warning: torchdiffeq is not installed: no baseline rows; install it with: pip install "hnode_fast[bench]"', file=sys.stderr)
    if "cpu" in available():
        out += ["hnode_cpu", "hnode_cpu_all_threads"]
    else:
        print("warning: the cpu backend is not built: only the reference backend is timed", file=sys.stderr)
    return out + ["hnode_reference"]


def run(
    conditions: Sequence[int], iters: int, names: Optional[Sequence[str]] = None, progress: Optional[Callable[[str], None]] = None
) -> List[Dict[str, Any]]:
    """Rows ``{condition, solver, ms, nfe, speedup_vs_torchdiffeq, threads, load}`` for each number
    of busy processes in ``conditions`` (0 = quiet)."""
    rows: List[Dict[str, Any]] = []
    for n_busy in conditions:
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_spin, daemon=True) for _ in range(n_busy)]
        for p in procs:
            p.start()
        try:
            if procs:
                time.sleep(1.0)  # let the spinners take the cores
            cond = "quiet" if n_busy == 0 else f"busy {n_busy}"
            base = None
            for name in names or solvers():
                r = training_step(name, iters)
                try:
                    load = os.getloadavg()[0]
                except OSError:
                    load = float("nan")
                base = r["ms"] if name == "torchdiffeq" else base
                row = {"condition": cond, "solver": name, "ms": r["ms"], "nfe": r["nfe"], "threads": torch.get_num_threads(), "load": load}
                row["speedup_vs_torchdiffeq"] = base / r["ms"] if base is not None else float("nan")
                rows.append(row)
                if progress is not None:
                    progress(f"{cond:8s} {name:22s} {r['ms']:8.2f} ms/iter  nfe {r['nfe']:.0f}")
        finally:
            for p in procs:
                p.terminate()
                p.join()
    return rows


def markdown(rows: List[Dict[str, Any]]) -> str:
    out = [
        "ode_demo training loop (D=2, 50-unit tanh MLP, B=20, 10 outputs, Adam, float32, rtol 1e-7, atol 1e-9), "
        f"torch threads {torch.get_num_threads()}, {os.cpu_count()} cores",
        "",
        "| condition | solver | ms / iter | x torchdiffeq | NFE / iter | load avg |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        sp = r["speedup_vs_torchdiffeq"]
        out.append(
            f"| {r['condition']} | {r['solver']} | {r['ms']:.2f} | {'-' if sp != sp else f'{sp:.1f}'} | {r['nfe']:.0f} | {r['load']:.1f} |"
        )
    return "\n".join(out)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--loop",
        action="store_true",
        help="time the ode_demo training loop (D=2, 50-unit tanh MLP, B=20, Adam) against torchdiffeq, quiet and with --busy processes",
    )
    ap.add_argument("--busy", type=int, default=None, help="--loop: busy processes in the loaded condition (default: the core count)")
    ap.add_argument("--iters", type=int, default=30, help="--loop: timed iterations per solver and condition (median)")


def main(a: argparse.Namespace) -> int:
    busy = a.busy if a.busy is not None else (os.cpu_count() or 1)
    rows = run([0, busy] if busy > 0 else [0], a.iters, progress=None if a.quiet else (lambda s: print(s, flush=True)))
    print(markdown(rows))
    return 0
