"""hnode_fast CUDA backend vs torchdiffeq dopri5 on CUDA tensors (issue 4 targets).

Problem: D=8 states, masked MLP hidden (32, 32) tanh (dense masks), t in [0, 5] with 20 outputs,
rtol 1e-5, atol 1e-7, float32, B in 1e2, 1e4, 1e5, 1e6. "fwd": torch.no_grad(); "fwd+bwd":
sum(y^2) backpropagated to y0 and the parameters (hnode: discrete adjoint kernel; torchdiffeq:
autograd through its solver). Times: median of CUDA-event-timed repetitions after a warm-up
(torch.cuda.synchronize() around each). Ratios: torchdiffeq time / hnode time.
Targets (H100, fp32): fwd >= 100x at B=1e5; fwd+bwd >= 30x; fwd kernel >= 30% of FP32 peak at B=1e6.

Analytic FLOP count (what "achieved FLOP/s" means here):
  per field evaluation   F_eval = sum_l (2 * n_in_l * n_out_l + n_out_l) + C_act * sum_hidden n_out_l + D
                          (matvec multiply-adds, bias adds, activations, adding the output into dz;
                           C_act = 25 flops per tanh: the kernel's exp polynomial + reduction + divide)
  per attempted step      F_step = D * (2 * (1 + 2 + 3 + 4 + 5) + 2 * 6 + 2 * 6 + 6) = 60 * D
                          (stage arguments, 5th-order update, error estimate, scaled RMS norm)
  per solve               FLOPs = sum_b [ nfe_b * F_eval + (n_steps_b + n_rejected_b) * F_step ]
  achieved FLOP/s = FLOPs / forward time; fraction = achieved / FP32 peak (table below by device
  name, or --peak-tflops). Dense output, controller and bookkeeping are not counted.

Run:  python benchmarks/bench_cuda.py [--quick] [--batches 100,10000] [--csv out.csv] [--peak-tflops 66.9]
Needs a CUDA device and torchdiffeq (pip install torchdiffeq); nothing here runs without them.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys

import torch

import hnode_fast as hf
from hnode_fast import backends
from hnode_fast.backends import cuda as hcuda

RTOL, ATOL = 1e-5, 1e-7
D, HIDDEN, T_END, N_OUT = 8, (32, 32), 5.0, 20
DTYPE = torch.float32
C_ACT = 25
PEAK_FP32_TFLOPS = {
    "H100 SXM": 66.9,
    "H100 NVL": 60.0,
    "H100 PCIe": 51.2,
    "H100": 66.9,
    "H200": 66.9,
    "A100": 19.5,
    "L40S": 91.6,
    "L4": 30.3,
    "A10": 31.2,
    "RTX 4090": 82.6,
}


def make_field(seed=0):
    torch.manual_seed(seed)
    net = hf.MaskedMLP(D, D, hidden=HIDDEN, activation="tanh")
    return hf.HybridField(nn=net).to(device="cuda", dtype=DTYPE)


def make_problem(B, seed=1):
    g = torch.Generator(device="cuda").manual_seed(seed)
    y0 = (torch.rand(B, D, generator=g, device="cuda", dtype=DTYPE) - 0.5) * 2.0
    t = torch.linspace(0, T_END, N_OUT, dtype=DTYPE, device="cuda")
    return y0, t


def flops_per_eval():
    dims = [D, *HIDDEN, D]
    f = sum(2 * a * b + b for a, b in zip(dims[:-1], dims[1:]))
    return f + C_ACT * sum(HIDDEN) + D


def solve_flops(stats):
    steps = (stats.n_steps + stats.n_rejected).double().sum().item()
    return stats.nfe.double().sum().item() * flops_per_eval() + steps * 60 * D


def peak_tflops(override):
    if override:
        return override
    name = torch.cuda.get_device_name()
    for k, v in PEAK_FP32_TFLOPS.items():
        if k in name:
            return v
    return float("nan")


def cuda_time(fn, reps, warmup=1):
    for _ in range(warmup):
        fn()
    ts = []
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
        y, st = hf.odeint(f, y0, t, rtol=RTOL, atol=ATOL, backend="cuda", return_stats=True)
        y.pow(2).sum().backward()
        return st
    with torch.no_grad():
        return hf.odeint(f, y0, t, rtol=RTOL, atol=ATOL, backend="cuda", return_stats=True)[1]


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


def bench(batches, quick, peak):
    f = make_field()
    rows = []
    for B in batches:
        y0, t = make_problem(B)
        for mode, grad in (("fwd", False), ("fwd+bwd", True)):
            reps = 2 if quick else 5
            row = dict(B=B, mode=mode)
            st = run_hnode(f, y0, t, grad)
            row["hnode_ms"] = cuda_time(lambda: run_hnode(f, y0, t, grad), reps)
            row["hnode_nfe"] = st.nfe.double().mean().item()
            row["status_ok"] = bool((st.status == 0).all())
            if not grad:
                fl = solve_flops(st)
                row["gflops"] = fl / (row["hnode_ms"] * 1e-3) / 1e9
                row["pct_peak"] = 100 * row["gflops"] / (peak * 1e3)
            try:
                td_reps = 1 if (quick or B >= 100_000) else 3
                row["torchdiffeq_nfe"] = run_torchdiffeq(f, y0, t, grad)
                row["torchdiffeq_ms"] = cuda_time(lambda: run_torchdiffeq(f, y0, t, grad), td_reps, warmup=0)
                row["ratio"] = row["torchdiffeq_ms"] / row["hnode_ms"]
            except (ImportError, torch.cuda.OutOfMemoryError) as e:  # report, do not hide
                row["torchdiffeq_ms"] = row["ratio"] = float("nan")
                row["torchdiffeq_nfe"] = float("nan")
                row["note"] = type(e).__name__
                torch.cuda.empty_cache()
            rows.append(row)
            print(fmt(row), flush=True)
    return rows


def fmt(r):
    extra = f" | {r['gflops']:9.1f} GFLOP/s {r['pct_peak']:5.1f}% peak" if "gflops" in r else ""
    return (
        f"B={r['B']:>8} {r['mode']:>8} | hnode {r['hnode_ms']:10.2f} ms  torchdiffeq {r['torchdiffeq_ms']:10.1f} ms"
        f" | x{r['ratio']:8.1f} | NFE {r['hnode_nfe']:6.1f} / {r['torchdiffeq_nfe']}{extra}"
        f"{'' if r['status_ok'] else '  (some trajectories failed)'} {r.get('note', '')}"
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batches", default="100,10000,100000,1000000")
    ap.add_argument("--csv")
    ap.add_argument("--peak-tflops", type=float, default=None)
    a = ap.parse_args(argv)
    if not (torch.cuda.is_available() and "cuda" in backends.available()):
        print(
            "bench_cuda: needs a CUDA device and hnode_fast built with CUDA; "
            f"reason: {hcuda.unavailable_reason() or 'backend not registered'}"
        )
        return 1
    peak = peak_tflops(a.peak_tflops)
    print(f"device {torch.cuda.get_device_name()}, FP32 peak {peak} TFLOP/s, F_eval {flops_per_eval()} flops")
    rows = bench([int(b) for b in a.batches.split(",")], a.quick, peak)
    if a.csv:
        keys = sorted({k for r in rows for k in r})
        with open(a.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
