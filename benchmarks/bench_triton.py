"""Benchmarks of the Triton backend (needs a CUDA GPU; prints a notice and exits 0 otherwise).

    python benchmarks/bench_triton.py [--B 10000] [--D 32] [--hidden 256 256] [--act silu]
                                      [--dtype float32] [--tf32] [--csv out.csv]

Reports, on the same problem in the same run:
  1. fused DP5 step (one launch) vs the same step in eager PyTorch ops (reference rk_step + error_norm);
  2. whole solve backend="triton" vs torchdiffeq.odeint (dopri5) and vs backend="cuda" if built;
     forward and forward+backward;
  3. field evaluation throughput at B=1e5 (analytic FLOPs of the unpadded dense layers) as a
     fraction of the given peak (--peak-tflops; default H100 SXM: 67 FP32, 495 TF32 dense).
Targets (issue 5, H100, float32, D=32, hidden (256, 256) silu, B=1e4): step >= 20x eager,
solve >= 20x torchdiffeq, field eval >= 50% of peak at B=1e5.
"""

from __future__ import annotations

import argparse
import csv
import sys

import torch


def _time(fn, warmup=2, iters=10):
    if not torch.cuda.is_available():  # smoke mode (--smoke-cpu, TRITON_INTERPRET=1): wall clock
        import time

        fn()
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters / 1e3  # seconds


def make_field(D, hidden, act, dtype, device):
    import hnode_fast as hf

    terms = [hf.Linear(i, None, 0.1) for i in range(D)]
    mech = hf.MechanisticGraph(D, terms, dtype=dtype)
    net = hf.MaskedMLP(D, D, hidden=tuple(hidden), activation=act)
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.mul_(0.5)
    return hf.HybridField(mech=mech, nn=net).to(dtype=dtype, device=device)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=10_000)
    ap.add_argument("--B-eval", type=int, default=100_000)
    ap.add_argument("--D", type=int, default=32)
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    ap.add_argument("--act", default="silu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--tf32", action="store_true", help="allow TF32 dots (breaks tight tolerances)")
    ap.add_argument("--rtol", type=float, default=1e-5)
    ap.add_argument("--atol", type=float, default=1e-7)
    ap.add_argument("--t1", type=float, default=1.0)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--csv", default=None)
    ap.add_argument(
        "--smoke-cpu", action="store_true", help="run the script logic on CPU tensors (needs TRITON_INTERPRET=1; tiny sizes only)"
    )
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke_cpu:
        print("bench_triton: needs a CUDA GPU (Triton kernels); nothing to do on this machine.")
        return 0

    import hnode_fast as hf
    from hnode_fast import backends
    from hnode_fast.backends.triton import build_plan, ops
    from hnode_fast.reference import dopri5 as dp

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    f = make_field(args.D, args.hidden, args.act, dtype, dev)
    rows = []

    def report(name, value, unit, note=""):
        print(f"{name:48s} {value:12.4g} {unit} {note}")
        rows.append(dict(name=name, value=value, unit=unit, note=note))

    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu (interpreter smoke run)"
    print(f"device {name}, {args.dtype}, D={args.D}, hidden={args.hidden} {args.act}, B={args.B}, tf32={args.tf32}")
    # ---------------------------------------------------------------- 1. one step
    B, D = args.B, args.D
    y = torch.rand(B, D, dtype=dtype, device=dev)
    h = torch.full((B,), 0.05, dtype=torch.float64, device=dev)
    t = torch.zeros(B, dtype=torch.float64, device=dev)
    with torch.no_grad():
        plan = build_plan(f.compile(), dtype, dev)
        f0 = f.eval_u(y, None)

        def fused():
            ops.dp_step_forward(plan, y, f0, None, h, args.rtol, args.atol, allow_tf32=args.tf32)

        def eager():
            fun = lambda tt, yy, ts: f.eval_u(yy, None)  # noqa: E731
            y1, K, _ = dp.rk_step(fun, t, y, f0, h, t)
            dp.error_norm(K, h, y, y1, args.rtol, args.atol, dp.rms_rows)

        tf, te = _time(fused), _time(eager)
    report("step: fused triton [ms]", tf * 1e3, "ms")
    report("step: eager torch [ms]", te * 1e3, "ms")
    report("step: speedup fused vs eager", te / tf, "x", "target >= 20")

    # ---------------------------------------------------------------- 2. whole solve
    y0 = torch.rand(B, D, dtype=dtype, device=dev)
    tt = torch.linspace(0, args.t1, 10, dtype=torch.float64, device=dev)
    tol = dict(rtol=args.rtol, atol=args.atol)
    from hnode_fast.backends.triton.backend import solve as tsolve
    from hnode_fast.solve import _validate

    def run_triton(grad=False):
        with torch.set_grad_enabled(grad):
            y0_ = y0.clone().requires_grad_(grad)
            prob = _validate(f, y0_, tt, args.rtol, args.atol, "dopri5", "triton", "discrete", "per_sample", None, None, 10_000)
            out, _ = tsolve(prob, allow_tf32=args.tf32)
            if grad:
                out.sum().backward()

    ttri = _time(lambda: run_triton(False), 1, 3)
    report("solve fwd: triton [s]", ttri, "s")
    ttri_b = _time(lambda: run_triton(True), 1, 2)
    report("solve fwd+bwd: triton [s]", ttri_b, "s")
    try:
        import torchdiffeq

        fn = lambda tq, yy: f(tq, yy)  # noqa: E731

        def run_tde(grad=False):
            y0_ = y0.clone().requires_grad_(grad)
            out = torchdiffeq.odeint(fn, y0_, tt.to(dtype), method="dopri5", **tol)
            if grad:
                out.sum().backward()

        with torch.no_grad():
            ttde = _time(lambda: run_tde(False), 1, 3)
        report("solve fwd: torchdiffeq (shared step) [s]", ttde, "s")
        report("solve fwd: speedup triton vs torchdiffeq", ttde / ttri, "x", "target >= 20")
        ttde_b = _time(lambda: run_tde(True), 1, 2)
        report("solve fwd+bwd: speedup triton vs torchdiffeq", ttde_b / ttri_b, "x")
    except ImportError:
        print("torchdiffeq not installed: skipped")
    if "cuda" in backends.available():
        with torch.no_grad():
            tcu = _time(lambda: hf.odeint(f, y0, tt, backend="cuda", **tol), 1, 3)
        report("solve fwd: cuda ensemble backend [s]", tcu, "s")
        report("solve fwd: speedup triton vs cuda ensemble", tcu / ttri, "x")

    # ---------------------------------------------------------------- 3. field eval throughput
    Be = args.B_eval
    z = torch.rand(Be, D, dtype=dtype, device=dev)
    widths = [D] + list(args.hidden) + [D]
    flops = 2 * Be * sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    with torch.no_grad():
        te = _time(lambda: ops.field_forward(plan, z, None, allow_tf32=args.tf32), 3, 20)
        tt_eager = _time(lambda: f.eval_u(z, None), 3, 20)
    peak = args.peak_tflops or (495.0 if args.tf32 else 67.0)
    report("field eval: triton [TFLOP/s]", flops / te / 1e12, "TFLOP/s")
    report("field eval: fraction of peak", flops / te / 1e12 / peak, "", f"peak {peak} TFLOP/s; target >= 0.5")
    report("field eval: eager torch [TFLOP/s]", flops / tt_eager / 1e12, "TFLOP/s")
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["name", "value", "unit", "note"])
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
