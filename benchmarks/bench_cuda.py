"""hnode_fast CUDA backend vs torchdiffeq dopri5 on CUDA tensors (issue 18 targets).

Problems (``--problem``):
  mlp  D=8 states, masked MLP hidden (32, 32) tanh (dense masks), t in [0, 5] with 20 outputs;
  pk   a pharmacokinetic hybrid: two-compartment oral model (depot -> central <-> peripheral,
       elimination; 4 linear mechanistic terms) plus a (16, 16) tanh MLP correction, dose in the
       depot at t=0 (in y0, so torchdiffeq solves the same problem), t in [0, 24] with 25 outputs.
rtol 1e-5, atol 1e-7, float32 (``--dtype float64`` for the FP64 figures), B in 1e2 .. 1e6.
"fwd": torch.no_grad(); "fwd+bwd": sum(y^2) backpropagated to y0 and the parameters (hnode:
discrete adjoint kernel; torchdiffeq: autograd through its solver). Times: median of
CUDA-event-timed repetitions after a warm-up (synchronised around each). Ratios: torchdiffeq
time / hnode time, same problem, same process. ``--minb 1,4,6`` times each register-cap build
of the float kernels (HNODE_CUDA_MINB, csrc/cuda/solve_cuda.cu) on the same inputs.
Targets (H100/H200, fp32, mlp): fwd >= 100x at B=1e5; fwd+bwd >= 30x; fwd kernel >= 30% of FP32
peak at B=1e6.

Analytic FLOP count (what "achieved FLOP/s" means here):
  per field evaluation   F_eval = sum_l (2 * n_in_l * n_out_l + n_out_l) + C_act * sum_hidden n_out_l
                          + D + 3 * n_terms
                          (matvec multiply-adds, bias adds, activations, adding the output into dz,
                           mechanistic terms; C_act = 25 flops per tanh)
  per attempted step      F_step = 60 * D (stage arguments, 5th-order update, error estimate, norm)
  per solve               FLOPs = sum_b [ nfe_b * F_eval + (n_steps_b + n_rejected_b) * F_step ]
  achieved FLOP/s = FLOPs / forward time; fraction = achieved / peak of the dtype (table below by
  device name, or --peak-tflops). Dense output, controller and bookkeeping are not counted.

Run:  python benchmarks/bench_cuda.py [--problem mlp|pk] [--quick] [--batches 100,10000] [--minb 1,4]
                                      [--dtype float32] [--csv out.csv] [--peak-tflops 66.9]
Needs a CUDA device and torchdiffeq (pip install torchdiffeq); nothing here runs without them.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time

import torch

import hnode_fast as hf
from hnode_fast import backends
from hnode_fast.backends import cuda as hcuda

RTOL, ATOL = 1e-5, 1e-7
C_ACT = 25
# HNODE_BENCH_DRYRUN=1: the same logic on CPU tensors with backend="cpu" (checks the script
# without a GPU; the figures mean nothing)
DRY = os.environ.get("HNODE_BENCH_DRYRUN") == "1"
DEV, BK = ("cpu", "cpu") if DRY else ("cuda", "cuda")
# dense (non-tensor-core) peaks, TFLOP/s, by device name: (FP32, FP64)
PEAK_TFLOPS = {
    "H100 SXM": (66.9, 33.5),
    "H100 NVL": (60.0, 30.0),
    "H100 PCIe": (51.2, 25.6),
    "H100": (66.9, 33.5),
    "H200": (66.9, 33.5),
    "A100": (19.5, 9.7),
    "L40S": (91.6, 1.4),
    "L4": (30.3, 0.5),
    "A10": (31.2, 1.0),
    "RTX 4090": (82.6, 1.3),
}
PROBLEMS = {
    "mlp": dict(D=8, hidden=(32, 32), t_end=5.0, n_out=20),
    "pk": dict(D=3, hidden=(16, 16), t_end=24.0, n_out=25),
}


def make_field(problem="mlp", dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    cfg = PROBLEMS[problem]
    D = cfg["D"]
    mech = None
    if problem == "pk":  # depot -ka-> central -ke->, central <-k12/k21-> peripheral
        terms = [hf.Linear(0, 1, 1.2), hf.Linear(1, None, 0.15), hf.Linear(1, 2, 0.4), hf.Linear(2, 1, 0.2)]
        mech = hf.MechanisticGraph(D, terms, param="log", dtype=dtype)
    net = hf.MaskedMLP(D, D, hidden=cfg["hidden"], activation="tanh")
    if problem == "pk":
        with torch.no_grad():
            for layer in net.layers:
                layer.weight.mul_(0.3)
    return hf.HybridField(mech=mech, nn=net).to(device=DEV, dtype=dtype)


def make_problem(B, problem="mlp", dtype=torch.float32, seed=1):
    cfg = PROBLEMS[problem]
    g = torch.Generator(device=DEV).manual_seed(seed)
    if problem == "pk":  # a dose of 1..5 in the depot, nothing elsewhere
        y0 = torch.zeros(B, cfg["D"], device=DEV, dtype=dtype)
        y0[:, 0] = 1.0 + 4.0 * torch.rand(B, generator=g, device=DEV, dtype=dtype)
    else:
        y0 = (torch.rand(B, cfg["D"], generator=g, device=DEV, dtype=dtype) - 0.5) * 2.0
    t = torch.linspace(0, cfg["t_end"], cfg["n_out"], dtype=dtype, device=DEV)
    return y0, t


def flops_per_eval(f):
    net, D = f.nn, f.n_states
    dims = [net.layers[0].in_features] + [layer.out_features for layer in net.layers]
    fl = sum(2 * a * b + b for a, b in zip(dims[:-1], dims[1:])) + C_ACT * sum(dims[1:-1]) + D
    n_terms = len(f.mech.terms) if f.mech is not None else 0
    return fl + 3 * n_terms


def solve_flops(f, stats):
    steps = (stats.n_steps + stats.n_rejected).double().sum().item()
    return stats.nfe.double().sum().item() * flops_per_eval(f) + steps * 60 * f.n_states


def peak_tflops(override, dtype):
    if override:
        return override
    name = torch.cuda.get_device_name() if not DRY else "cpu"
    for k, v in PEAK_TFLOPS.items():
        if k in name:
            return v[1] if dtype == torch.float64 else v[0]
    return float("nan")


def cuda_time(fn, reps, warmup=1):
    for _ in range(warmup):
        fn()
    ts = []
    if DRY:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    return statistics.median(ts)


def run_hnode(f, y0, t, grad):
    if grad:
        y0 = y0.clone().requires_grad_()
        y, st = hf.odeint(f, y0, t, rtol=RTOL, atol=ATOL, backend=BK, return_stats=True)
        y.pow(2).sum().backward()
        return st
    with torch.no_grad():
        return hf.odeint(f, y0, t, rtol=RTOL, atol=ATOL, backend=BK, return_stats=True)[1]


class Counted(torch.nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f, self.n = f, 0

    def forward(self, t, y):
        self.n += 1
        return self.f(t, y)


def run_torchdiffeq(f, y0, t, grad):
    import torchdiffeq

    cf = Counted(f)
    if grad:
        y0 = y0.clone().requires_grad_()
        torchdiffeq.odeint(cf, y0, t, rtol=RTOL, atol=ATOL, method="dopri5").pow(2).sum().backward()
    else:
        with torch.no_grad():
            torchdiffeq.odeint(cf, y0, t, rtol=RTOL, atol=ATOL, method="dopri5")
    return cf.n


def _set_minb(m):
    if m is None:
        os.environ.pop("HNODE_CUDA_MINB", None)
    else:
        os.environ["HNODE_CUDA_MINB"] = str(m)


def bench(batches, quick, peak, problem="mlp", dtype=torch.float32, minbs=(None,), peers=True):
    f = make_field(problem, dtype)
    rows = []
    for B in batches:
        y0, t = make_problem(B, problem, dtype)
        for mode, grad in (("fwd", False), ("fwd+bwd", True)):
            reps = 3 if quick else 5
            td = {}
            if peers:
                try:
                    td_reps = 1 if (quick or B >= 100_000) else 3
                    td["nfe"] = run_torchdiffeq(f, y0, t, grad)
                    td["ms"] = cuda_time(lambda: run_torchdiffeq(f, y0, t, grad), td_reps, warmup=0)
                except (ImportError, torch.cuda.OutOfMemoryError) as e:  # report, do not hide
                    td = dict(ms=float("nan"), nfe=float("nan"), note=type(e).__name__)
                    torch.cuda.empty_cache()
            for m in minbs:
                _set_minb(m)
                row = dict(problem=problem, dtype=str(dtype).replace("torch.", ""), B=B, mode=mode, minb=m or "default")
                st = run_hnode(f, y0, t, grad)
                row["hnode_ms"] = cuda_time(lambda: run_hnode(f, y0, t, grad), reps)
                row["hnode_nfe"] = st.nfe.double().mean().item()
                row["hnode_steps"] = (st.n_steps + st.n_rejected).double().mean().item()
                row["status_ok"] = bool((st.status == 0).all())
                if not grad:
                    fl = solve_flops(f, st)
                    row["gflops"] = fl / (row["hnode_ms"] * 1e-3) / 1e9
                    row["pct_peak"] = 100 * row["gflops"] / (peak * 1e3)
                row["torchdiffeq_ms"] = td.get("ms", float("nan"))
                row["torchdiffeq_nfe"] = td.get("nfe", float("nan"))
                row["ratio"] = row["torchdiffeq_ms"] / row["hnode_ms"]
                if "note" in td:
                    row["note"] = td["note"]
                rows.append(row)
                print(fmt(row), flush=True)
            _set_minb(None)
    return rows


def fmt(r):
    extra = f" | {r['gflops']:9.1f} GFLOP/s {r['pct_peak']:5.1f}% peak" if "gflops" in r else ""
    return (
        f"{r['problem']:>3} {r['dtype']:>7} B={r['B']:>8} {r['mode']:>8} minb={r['minb']!s:>7} | hnode {r['hnode_ms']:10.3f} ms"
        f"  torchdiffeq {r['torchdiffeq_ms']:10.2f} ms | x{r['ratio']:8.1f} | NFE {r['hnode_nfe']:6.1f} / {r['torchdiffeq_nfe']}"
        f"{extra}{'' if r['status_ok'] else '  (some trajectories failed)'} {r.get('note', '')}"
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", default="mlp", choices=sorted(PROBLEMS))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batches", default="100,10000,100000,1000000")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--minb", default="", help="comma-separated HNODE_CUDA_MINB builds to time (default: the default build)")
    ap.add_argument("--no-peers", action="store_true", help="skip torchdiffeq")
    ap.add_argument("--csv")
    ap.add_argument("--peak-tflops", type=float, default=None)
    a = ap.parse_args(argv)
    if not DRY and not (torch.cuda.is_available() and "cuda" in backends.available()):
        print(
            "bench_cuda: needs a CUDA device and hnode_fast built with CUDA; "
            f"reason: {hcuda.unavailable_reason() or 'backend not registered'}"
        )
        return 1
    dtype = getattr(torch, a.dtype)
    peak = peak_tflops(a.peak_tflops, dtype)
    minbs = tuple(int(m) for m in a.minb.split(",")) if a.minb else (None,)
    f = make_field(a.problem, dtype)
    print(
        f"device {torch.cuda.get_device_name() if not DRY else 'cpu (dry run)'}, cuda/torch {torch.version.cuda}/{torch.__version__}, "
        f"{a.problem} {a.dtype}, "
        f"peak {peak} TFLOP/s, F_eval {flops_per_eval(f)} flops"
    )
    rows = bench([int(b) for b in a.batches.split(",")], a.quick, peak, a.problem, dtype, minbs, not a.no_peers)
    if a.csv:
        keys = sorted({k for r in rows for k in r})
        with open(a.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
