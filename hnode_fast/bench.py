"""Speed comparison harness: hnode_fast backends vs torchdiffeq / torchode on one problem.

Ratios are measured in one process on the same field, tolerances and outputs, after a warm-up,
as the median of several runs; NFE and max error against a tight scipy solution are reported
alongside. ``hnode-fast bench`` runs a quick subset and writes ``bench.md``, ``bench.csv`` and
``bench.png`` (time vs batch size, log-log, one line per solver).
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch

from .fields import HybridField, MaskedMLP
from .solve import odeint


def mlp_field(D: int = 8, hidden=(32, 32), activation: str = "tanh", seed: int = 0,
              dtype=torch.float32, sparsity: float = 0.0) -> HybridField:
    """The benchmark field: a random (optionally pruned) MLP with a stable linear drift."""
    g = torch.Generator().manual_seed(seed)
    net = MaskedMLP(D, D, hidden=hidden, activation=activation)
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) / layer.in_features ** 0.5)
            layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=g))
        if sparsity > 0:
            for i, layer in enumerate(net.layers):
                net.set_mask(i, torch.rand(layer.weight.shape, generator=g) >= sparsity)
    return HybridField(nn=net).to(dtype)


def machine() -> Dict[str, str]:
    """CPU model, threads, GPU and versions, recorded with every result."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "threads": str(torch.get_num_threads()), "torch": torch.__version__,
            "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none"}
    for mod in ("torchdiffeq", "torchode"):
        try:
            info[mod] = __import__(mod).__version__ if hasattr(__import__(mod), "__version__") else "installed"
        except ImportError:
            info[mod] = "missing"
    from . import __version__
    info["hnode_fast"] = __version__
    return info


def timeit(fn: Callable[[], None], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time in seconds."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def providers(field: HybridField, rtol: float, atol: float) -> Dict[str, Callable]:
    """name -> ``solve(y0, t) -> (y (T, B, D), nfe per trajectory)``."""
    from . import backends
    out = {}
    for b in backends.available():
        if b in ("cpu", "reference"):
            def run(y0, t, b=b):
                y, st = odeint(field, y0, t, rtol=rtol, atol=atol, backend=b, return_stats=True)
                return y, float(st.nfe.double().mean())
            out[f"hnode_{b}"] = run
    try:
        import torchdiffeq

        class Counted(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.f, self.n = field, 0

            def forward(self, t, y):
                self.n += 1
                return self.f(t, y)
        cf = Counted()

        def run_td(y0, t):
            cf.n = 0
            return torchdiffeq.odeint(cf, y0, t, rtol=rtol, atol=atol, method="dopri5"), float(cf.n)
        out["torchdiffeq"] = run_td
    except ImportError:
        pass
    try:
        import torchode as to
        term = to.ODETerm(lambda t, y: field(t, y))
        solver = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=atol, rtol=rtol, term=term))

        def run_to(y0, t):
            sol = solver.solve(to.InitialValueProblem(y0=y0, t_eval=t.expand(y0.shape[0], -1)))
            return sol.ys.transpose(0, 1), float(sol.stats["n_f_evals"].double().mean())
        out["torchode"] = run_to
    except ImportError:
        pass
    return out


def reference_solution(field: HybridField, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Tight scipy DOP853 solution (float64), ``(T, B, D)``."""
    from scipy.integrate import solve_ivp
    f64 = field.to(torch.float64)
    outs = []
    with torch.no_grad():
        for b in range(y0.shape[0]):
            def fun(tt, yy):
                return f64(tt, torch.as_tensor(yy)[None]).reshape(-1).numpy()
            s = solve_ivp(fun, (float(t[0]), float(t[-1])), y0[b].double().numpy(), method="DOP853",
                          t_eval=t.double().numpy(), rtol=1e-12, atol=1e-12)
            outs.append(torch.as_tensor(s.y.T))
    field.to(y0.dtype)
    return torch.stack(outs, 1)


def run(batches=(1, 64), modes=("fwd", "fwd+bwd"), D=8, hidden=(32, 32), rtol=1e-5, atol=1e-7, T=20,
        repeats=5, skip: Optional[List[str]] = None, err_rows: int = 4, progress=print) -> List[dict]:
    """Benchmark every provider; returns rows with time, ratio to torchdiffeq, NFE, error."""
    field = mlp_field(D, hidden)
    t = torch.linspace(0, 5, T)
    rows = []
    for B in batches:
        y0 = torch.randn(B, D, generator=torch.Generator().manual_seed(B)) * 0.5
        ref = reference_solution(field, y0[:err_rows], t)
        provs = {k: v for k, v in providers(field, rtol, atol).items() if not (skip and k in skip)}
        if B > 64:
            provs.pop("hnode_reference", None)  # the oracle is not a speed contender
        base = {}
        for mode in modes:
            for name, fn in provs.items():
                if mode == "fwd":
                    def call(fn=fn):
                        with torch.no_grad():
                            fn(y0, t)
                else:
                    params = [p for p in field.parameters() if p.requires_grad]

                    def call(fn=fn, params=params):
                        y0g = y0.clone().requires_grad_(True)
                        y, _ = fn(y0g, t)
                        torch.autograd.grad(y.sum(), [y0g] + params)
                try:
                    sec = timeit(call, repeats=repeats)
                    with torch.no_grad():
                        y, nfe = fn(y0, t)
                    err = float((y[:, :err_rows].double() - ref).abs().max())
                except Exception as e:  # a peer failing must not hide the others
                    progress(f"{name} B={B} {mode}: failed ({type(e).__name__}: {e})")
                    continue
                if name == "torchdiffeq":
                    base[mode] = sec
                rows.append({"B": B, "mode": mode, "solver": name, "ms": sec * 1e3, "nfe": nfe, "max_err": err})
                progress(f"B={B:<6} {mode:<8} {name:<16} {sec * 1e3:10.2f} ms  nfe {nfe:7.1f}  err {err:.1e}")
        for r in rows:
            if r["B"] == B and r["mode"] in base:
                r["speedup_vs_torchdiffeq"] = base[r["mode"]] / (r["ms"] / 1e3)
    return rows


def markdown(rows: List[dict], info: Dict[str, str]) -> str:
    lines = ["| B | mode | solver | ms | x torchdiffeq | NFE | max err |", "|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        sp = r.get("speedup_vs_torchdiffeq")
        lines.append(f"| {r['B']} | {r['mode']} | {r['solver']} | {r['ms']:.2f} | "
                     f"{'-' if sp is None else f'{sp:.1f}'} | {r['nfe']:.0f} | {r['max_err']:.1e} |")
    lines.append("")
    lines.append("Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    return "\n".join(lines)


def plot(rows: List[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    modes = sorted({r["mode"] for r in rows})
    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for name in sorted({r["solver"] for r in rows}):
            pts = sorted((r["B"], r["ms"]) for r in rows if r["mode"] == mode and r["solver"] == name)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size B")
        ax.set_ylabel("median time (ms)")
        ax.set_title(mode)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="hnode-fast bench", description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,64", help="comma-separated batch sizes (quick: 1,64)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default="bench_results", help="output folder for bench.md/.csv/.png")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    batches = tuple(int(x) for x in a.batches.split(","))
    info = machine()
    rows = run(batches=batches, repeats=a.repeats)
    os.makedirs(a.out, exist_ok=True)
    md = markdown(rows, info)
    with open(os.path.join(a.out, "bench.md"), "w") as fh:
        fh.write(md + "\n")
    with open(os.path.join(a.out, "bench.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["B", "mode", "solver", "ms", "speedup_vs_torchdiffeq", "nfe", "max_err"])
        w.writeheader()
        for r in rows:
            w.writerow(r)
    try:
        plot(rows, os.path.join(a.out, "bench.png"))
    except ImportError:
        print("matplotlib not installed: no plot")
    print(md)
    return 0
