"""hnode_fast CPU backend vs torchdiffeq dopri5 vs torchode Dopri5 on the same field.

Field: D=8 states, masked MLP hidden (32, 32) tanh, t in [0, 5] with 20 outputs,
rtol 1e-5, atol 1e-7, float64, torch.set_num_threads(2). Times are medians in one process over
interleaved rounds (each solver once per round, after a warm-up call; hnode: the median of 5 calls
per round after its own warm-up call); ratios are torchdiffeq / hnode and torchode / hnode. "fwd"
runs under torch.no_grad() for all three solvers; "fwd+bwd" backpropagates sum(y^2) to y0 and the
parameters (hnode: discrete adjoint; torchdiffeq / torchode: autograd through the solver). NFE:
mean function evaluations per trajectory (torchdiffeq: calls of the batched function). Error:
max |y - y_ref| against scipy DOP853 at rtol 1e-12, atol 1e-14. Also: field evaluation and forward
solves, dense vs 90% weight sparsity (bench_sparsity), and GFLOP/s of dense evaluation and solves
as a fraction of the FP64 FMA peak measured in the same run (bench_flops).

Run:  python benchmarks/bench_cpu.py [--quick] [--csv out.csv]
      pytest benchmarks/bench_cpu.py --benchmark-only   (pytest-benchmark functions)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import hnode_fast as hf

RTOL, ATOL = 1e-5, 1e-7
D, HIDDEN, T_END, N_OUT = 8, (32, 32), 5.0, 20
DTYPE = torch.float64


def make_field(seed=0, density=None, hidden=HIDDEN):
    torch.manual_seed(seed)
    net = hf.MaskedMLP(D, D, hidden=hidden, activation="tanh")
    if density is not None:
        for i, layer in enumerate(net.layers):
            net.set_mask(i, torch.rand(layer.weight.shape) < density)
    return hf.HybridField(nn=net).to(DTYPE)


def make_problem(B, seed=1):
    g = torch.Generator().manual_seed(seed)
    y0 = (torch.rand(B, D, generator=g, dtype=DTYPE) - 0.5) * 2.0
    t = torch.linspace(0, T_END, N_OUT, dtype=DTYPE)
    return y0, t


class Counted(torch.nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f
        self.n = 0

    def forward(self, t, y):
        self.n += 1
        return self.f(t, y)


def run_hnode(f, y0, t, grad):
    if grad:
        y0 = y0.clone().requires_grad_()
        y, st = hf.odeint(f, y0, t, rtol=RTOL, atol=ATOL, backend="cpu", return_stats=True)
        y.square().sum().backward()
    else:
        with torch.no_grad():
            y, st = hf.odeint(f, y0, t, rtol=RTOL, atol=ATOL, backend="cpu", return_stats=True)
    return y.detach(), float(st.nfe.double().mean())


def run_torchdiffeq(f, y0, t, grad):
    import torchdiffeq

    cf = Counted(f)
    if grad:
        y0 = y0.clone().requires_grad_()
        y = torchdiffeq.odeint(cf, y0, t, rtol=RTOL, atol=ATOL, method="dopri5")
        y.square().sum().backward()
    else:
        with torch.no_grad():
            y = torchdiffeq.odeint(cf, y0, t, rtol=RTOL, atol=ATOL, method="dopri5")
    return y.detach(), float(cf.n)


def run_torchode(f, y0, t, grad):
    import torchode as to

    term = to.ODETerm(f)
    solver = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=ATOL, rtol=RTOL, term=term))
    B = y0.shape[0]

    def go(y0):
        sol = solver.solve(to.InitialValueProblem(y0=y0, t_eval=t.expand(B, -1)))
        return sol.ys.transpose(0, 1), sol.stats["n_f_evals"]

    if grad:
        y0 = y0.clone().requires_grad_()
        y, nfe = go(y0)
        y.square().sum().backward()
    else:
        with torch.no_grad():
            y, nfe = go(y0)
    return y.detach(), float(nfe.double().mean())


PROVIDERS = {"hnode": run_hnode, "torchdiffeq": run_torchdiffeq, "torchode": run_torchode}


def scipy_reference(f, y0, t):
    from scipy.integrate import solve_ivp

    B = y0.shape[0]

    def rhs(_, z):
        with torch.no_grad():
            return f(None, torch.from_numpy(z).view(B, D)).numpy().ravel()

    sol = solve_ivp(rhs, (0.0, T_END), y0.numpy().ravel(), method="DOP853", t_eval=t.numpy(), rtol=1e-12, atol=1e-14)
    return torch.from_numpy(sol.y.T.reshape(len(t), B, D).copy())


def timeit(fn, reps, warmup=1, clock=time.perf_counter):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        a = clock()
        fn()
        ts.append(clock() - a)
    return statistics.median(ts) * 1e3


def bench_solvers(batches=(1, 64, 1024), quick=False):
    rows = []
    f = make_field()
    for B in batches:
        y0, t = make_problem(B)
        ref = scipy_reference(f, y0, t)
        for grad in (False, True):
            row = {"B": B, "mode": "fwd+bwd" if grad else "fwd"}
            for name, fn in PROVIDERS.items():  # warm-up, NFE, error
                f.zero_grad(set_to_none=True)
                y, nfe = fn(f, y0, t, grad)
                row[name + "_nfe"] = nfe
                row[name + "_err"] = float((y - ref).abs().max())
            # interleaved rounds (each solver once per round): drift of a shared machine hits all three alike
            rounds = 3 if (quick or B >= 1024) else 9
            inner = {"hnode": 5 if B < 1024 else 2}  # hnode: a warm-up call then these, per round (median kept)
            ts: dict = {name: [] for name in PROVIDERS}
            for _ in range(rounds):
                for name, fn in PROVIDERS.items():
                    ts[name].append(timeit(lambda: fn(f, y0, t, grad), inner.get(name, 1), warmup=int(name in inner)))
            for name in PROVIDERS:
                row[name + "_ms"] = statistics.median(ts[name])
            row["x_torchdiffeq"] = row["torchdiffeq_ms"] / row["hnode_ms"]
            row["x_torchode"] = row["torchode_ms"] / row["hnode_ms"]
            rows.append(row)
            print(fmt_row(row), flush=True)
    return rows


def fmt_header():
    return (
        f"{'B':>5} {'mode':>8} | {'hnode ms':>9} {'tdiffeq ms':>10} {'torchode ms':>11} | {'x tdiffeq':>9} "
        f"{'x tode':>7} | {'NFE h/td/to':>17} | {'max err h / td / to':>28}"
    )


def fmt_row(r):
    return (
        f"{r['B']:>5} {r['mode']:>8} | {r['hnode_ms']:>9.3f} {r['torchdiffeq_ms']:>10.2f} "
        f"{r['torchode_ms']:>11.2f} | {r['x_torchdiffeq']:>9.1f} {r['x_torchode']:>7.1f} | "
        f"{r['hnode_nfe']:>5.0f}/{r['torchdiffeq_nfe']:>5.0f}/{r['torchode_nfe']:>5.0f} | "
        f"{r['hnode_err']:.1e} / {r['torchdiffeq_err']:.1e} / {r['torchode_err']:.1e}"
    )


def _with_lanes(flag, fn):
    """fn() with the CPU launchers forced to one path: "0" one trajectory (state) at a time,
    "1" lockstep lanes, None their default choice (lanes when every layer is CSR)."""
    import os

    old = os.environ.get("HNODE_CPU_LANES")
    try:
        if flag is None:
            os.environ.pop("HNODE_CPU_LANES", None)
        else:
            os.environ["HNODE_CPU_LANES"] = flag
        return fn()
    finally:
        if old is None:
            os.environ.pop("HNODE_CPU_LANES", None)
        else:
            os.environ["HNODE_CPU_LANES"] = old


def bench_sparsity(B=1024, repeat=200, solve_batches=(64, 1024), quick=False):
    """Dense vs 90% weight sparsity, hidden (32, 32) and (64, 64).

    Field evaluation: compiled kernel, 1 thread, thread CPU time per state, evaluated one state at
    a time ("one", as solve_one does) and 4 states in lockstep ("lanes", as the lane solver does);
    "auto" is what the solver picks (lanes for the all-CSR sparse networks, one for dense). The
    ratio compares the dense and sparse fields' auto paths. Solves: the bench problem forward
    (no grad) and forward+backward (discrete adjoint, not lane-batched), 2 threads, wall-clock
    medians, dense / sparse with the default paths."""
    from hnode_fast.backends import cpu

    out = []
    rounds = 3 if quick else 7
    paths = (("one", "0"), ("lanes", "1"), ("auto", None))
    for hidden in ((32, 32), (64, 64)):
        cases = {}
        for label, density in (("dense", None), ("90% sparse", 0.1)):
            f = make_field(seed=2, density=density, hidden=hidden)
            cases[label] = (f, f.compile())
        z = torch.randn(B, D, dtype=DTYPE)
        problems = {Bs: make_problem(Bs) for Bs in solve_batches}
        # interleaved rounds (every measurement once per round): drifts of the machine's speed hit
        # the dense and the sparse field alike
        ts = {}
        for _ in range(rounds + 1):
            for label, (f, spec) in cases.items():
                for path, flag in paths:
                    # one thread on the calling thread: its CPU time is robust to other load on the machine
                    call = lambda: cpu.eval_field(spec, z, repeat=repeat, n_threads=1)  # noqa: E731
                    ms = _with_lanes(flag, lambda: timeit(call, 1, warmup=0, clock=time.thread_time))
                    ts.setdefault((label, path), []).append(ms * 1e6 / (repeat * B))
                for Bs, (y0, t) in problems.items():
                    for grad in (False, True):
                        ts.setdefault((label, Bs, grad), []).append(timeit(lambda: run_hnode(f, y0, t, grad), 1, warmup=0))
        med = {k: statistics.median(v[1:]) for k, v in ts.items()}  # round 0: warm-up
        res = {}
        for label, (f, spec) in cases.items():
            ns = {path: med[label, path] for path, _ in paths}
            solve_ms = {(Bs, g): med[label, Bs, g] for Bs in solve_batches for g in (False, True)}
            res[label] = (ns, spec.n_weights(), solve_ms)
        ratio = res["dense"][0]["auto"] / res["90% sparse"][0]["auto"]
        for label in ("dense", "90% sparse"):
            ns, nw, _ = res[label]
            evals = ", ".join(f"{k} {ns[k]:5.0f}" for k in ("one", "lanes", "auto"))
            print(f"hidden {hidden} {label:>10} ({nw:>4} weights): eval ns/state {evals}", flush=True)
        print(f"hidden {hidden}: field evaluation dense / 90% sparse {ratio:.1f}x", flush=True)
        for grad in (False, True):
            dn, sp = res["dense"][2], res["90% sparse"][2]
            solve = ", ".join(
                f"B={Bs} {dn[Bs, grad]:.2f} / {sp[Bs, grad]:.2f} ms = {dn[Bs, grad] / sp[Bs, grad]:.1f}x" for Bs in solve_batches
            )
            print(f"hidden {hidden}: {'fwd+bwd' if grad else 'fwd'} solves dense / sparse: {solve}", flush=True)
        out.append((hidden, res, ratio))
    return out


def _dense_flops(hidden):
    """Multiply-add FLOPs of one evaluation of the dense D -> hidden -> D network (2 per weight)."""
    widths = (D, *hidden, D)
    return 2 * sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def bench_flops(B=1024, quick=False, hiddens=((32, 32), (64, 64), (128, 128))):
    """GFLOP/s of the dense kernels and their fraction of the machine's FP64 FMA peak, both
    measured in this run (peak: ``_C.cpu_fma_peak``, a tight loop of independent vector FMAs on
    one thread, best of 5).

    Field evaluation: 1 thread, thread CPU time, one state at a time ("one"), in lanes ("lanes")
    and what the launcher picks ("auto"). Whole forward solves (the bench problem, B trajectories,
    2 threads, wall clock): field FLOPs = total NFE x FLOPs per evaluation, against 2 x the
    one-thread peak; the rest of a step (stage sums, error norm, dense output) is not counted.
    The CPU kernels do not contract multiply-adds into FMAs (bitwise equality with the baseline
    build), so half the FMA peak is their ceiling."""
    from hnode_fast import _native
    from hnode_fast.backends import cpu

    peak, width, isa = _native._C.cpu_fma_peak(0.05, 5)
    print(f"FP64 FMA peak, one thread ({isa}, {width} doubles): {peak:.1f} GFLOP/s; kernels ISA {_isa()}", flush=True)
    rounds = 3 if quick else 7
    repeat = 20 if quick else 50
    out = []
    for hidden in hiddens:
        f = make_field(seed=2, hidden=hidden)
        spec = f.compile()
        flops = _dense_flops(hidden)
        z = torch.randn(B, D, dtype=DTYPE)
        ts = {}
        for _ in range(rounds + 1):
            for path, flag in (("one", "0"), ("lanes", "1"), ("auto", None)):
                call = lambda: cpu.eval_field(spec, z, repeat=repeat, n_threads=1)  # noqa: E731
                ms = _with_lanes(flag, lambda: timeit(call, 1, warmup=0, clock=time.thread_time))
                ts.setdefault(path, []).append(ms * 1e-3 / (repeat * B))
        sec = {k: statistics.median(v[1:]) for k, v in ts.items()}
        y0, t = make_problem(B)
        with torch.no_grad():
            _, st = hf.odeint(f, y0, t, rtol=RTOL, atol=ATOL, backend="cpu", return_stats=True)
        nfe = float(st.nfe.double().sum())
        solve_s = timeit(lambda: run_hnode(f, y0, t, False), rounds) * 1e-3
        solve_gf = nfe * flops / solve_s / 1e9
        row = {"hidden": hidden, "flops": flops, "peak": peak, "solve_gflops": solve_gf, "nfe": nfe, "solve_ms": solve_s * 1e3}
        evals = []
        for path in ("one", "lanes", "auto"):
            gf = flops / sec[path] / 1e9
            row[f"{path}_ns"], row[f"{path}_gflops"] = sec[path] * 1e9, gf
            evals.append(f"{path} {sec[path] * 1e9:6.0f} ns {gf:5.1f} GFLOP/s ({100 * gf / peak:4.1f}%)")
        print(f"hidden {hidden} ({flops} FLOP/eval): " + ", ".join(evals), flush=True)
        print(
            f"hidden {hidden}: forward solve B={B}, 2 threads: {solve_s * 1e3:.1f} ms, NFE {nfe:.0f}, "
            f"field {solve_gf:.1f} GFLOP/s ({100 * solve_gf / (2 * peak):.1f}% of 2 threads' peak)",
            flush=True,
        )
        out.append(row)
    return out


def _isa():
    from hnode_fast import _native

    return _native._C.cpu_isa()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--batches", default="1,64,1024")
    ap.add_argument("--csv", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, hnode_fast "
        f"{hf.__version__ if hasattr(hf, '__version__') else ''}, ISA {_isa()}"
    )
    print(fmt_header())
    rows = bench_solvers(tuple(int(b) for b in args.batches.split(",")), quick=args.quick)
    print()
    bench_sparsity(quick=args.quick)
    print()
    bench_flops(quick=args.quick)
    if args.csv:
        import csv

        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


# ---------------------------------------------------------------- pytest-benchmark
try:
    import pytest

    @pytest.mark.parametrize("B", [1, 64, 1024])
    @pytest.mark.parametrize("grad", [False, True], ids=["fwd", "fwd+bwd"])
    @pytest.mark.parametrize("provider", list(PROVIDERS))
    def test_bench_solve(benchmark, provider, grad, B):
        torch.set_num_threads(2)
        f = make_field()
        y0, t = make_problem(B)
        benchmark.group = f"B={B} {'fwd+bwd' if grad else 'fwd'}"
        benchmark(PROVIDERS[provider], f, y0, t, grad)
except ImportError:  # pragma: no cover
    pass

if __name__ == "__main__":
    main()
