"""The full benchmark harness: hnode_fast backends vs torchdiffeq / torchode, with peak memory,
the machine record and report files (Markdown, CSV, JSON, plot).

It runs the loop of ``hnode-fast bench`` (:mod:`hnode_fast.bench_runner`: providers, peer
adapters, timing, modes) on the problems of :mod:`hnode_fast.problems`, with this module's memory
probe, and writes the reports. Every solver ("provider") sees the same field object, initial
states, output times, tolerances and dtype, in one process. Per (problem, batch size B, mode,
solver) a row records:

- ``ms``: median wall time of one call after a warm-up call (CUDA: synchronised).
- ``speedup_vs_torchdiffeq``: torchdiffeq's median / this solver's median (> 1: faster).
- ``nfe``, ``steps``: function evaluations and accepted steps of the *forward* solve of the
  ``B`` initial states (the same numbers on every mode's row). hnode and torchode adapt one step
  per trajectory and report the mean per trajectory; torchdiffeq steps the whole batch with one
  shared step (error norm over the batch) and reports its calls of the batched function.
- ``peak_mb``: peak memory of one call above what was allocated before it. CUDA: peak of
  ``torch.cuda.max_memory_allocated`` (tensors only). CPU (Linux): growth of the process's peak
  resident set (``VmHWM`` after ``echo 5 > /proc/self/clear_refs``) over its resident set before
  the call, after ``malloc_trim(0)`` gave freed heap pages back to the OS: it counts every
  allocator (torch, the C++ kernels, Python) at page granularity, fragmentation included; calls
  that need under a few hundred kB read ~0. NaN where it cannot be measured.
- ``max_err``: max abs error of the forward solution against a tight scipy DOP853 solution
  (rtol = atol = 1e-12, float64) on the first ``err_rows`` trajectories (NaN without scipy).

Modes: ``fwd`` solves under ``torch.no_grad()``; ``fwd+bwd`` solves with ``y0`` requiring grad
and backpropagates ``sum(y**2)`` to ``y0`` and every field parameter (hnode: its discrete adjoint;
torchdiffeq / torchode: autograd through the solver); ``epoch`` is one training epoch: Adam
(lr 1e-3) over ``epoch_batches`` minibatches of ``B`` trajectories of a synthetic dataset (states
from the problem's field, solved tightly) with an MSE loss, starting each time from the same
perturbed copy of the field.

Run:  python benchmarks/harness.py [hnode-fast bench options] [--out DIR]
        -> DIR/bench.{md,csv,json,png} (rows + settings + machine record); a missing peer or
           scipy is named in a warning, on stderr and above the table
(``benchmarks/bench_suite.py`` runs the whole matrix through :func:`main`.)
"""

from __future__ import annotations

import csv
import gc
import json
import os
import platform
import re
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == "__main__" and os.path.isfile(os.path.join(_ROOT, "hnode_fast", "__init__.py")):
    sys.path.insert(0, _ROOT)  # run from a checkout: its hnode_fast, not an older installed one

import torch  # noqa: E402

from hnode_fast import bench_runner as br  # noqa: E402
from hnode_fast._json import json_safe  # noqa: E402
from hnode_fast.problems import PROBLEMS  # noqa: E402

Row = br.Row
MODES = br.MODES
CSV_FIELDS = list(br.ROW_FIELDS)


# ----------------------------------------------------------------------------- machine record
def _version(mod: str) -> str:
    try:
        m = __import__(mod)
    except Exception:  # noqa: BLE001  (missing or broken: record, don't fail)
        return "missing"
    return str(getattr(m, "__version__", "installed"))


def machine() -> Dict[str, str]:
    """CPU model, cores, threads, GPU, OS and versions, recorded with every result."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "threads": str(torch.get_num_threads()),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
    }
    try:  # other work on the machine skews timings (a busy core stalls torch's thread pool)
        info["load_avg_1m"] = f"{os.getloadavg()[0]:.2f}"
    except OSError:
        info["load_avg_1m"] = "unknown"
    for mod in ("numpy", "scipy", "torchdiffeq", "torchode", "triton"):
        info[mod] = _version(mod)
    from hnode_fast import __version__, backends

    info["hnode_fast"] = __version__
    info["backends"] = ",".join(backends.available())
    try:
        from hnode_fast import _native

        info["cpu_isa"] = str(_native._C.cpu_isa()) if _native._C is not None else "no extension"
    except Exception:  # noqa: BLE001
        info["cpu_isa"] = "unknown"
    return info


def timeit(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time in seconds."""
    return br.measure(fn, repeats=repeats, warmup=warmup)[0]


_KB = re.compile(r"^(VmHWM|VmRSS):\s+(\d+)\s+kB", re.M)


def _rss_kb() -> Dict[str, int]:
    with open("/proc/self/status") as fh:
        return {k: int(v) for k, v in _KB.findall(fh.read())}


def _malloc_trim() -> None:
    """Give freed heap pages back to the OS (glibc), so that memory an earlier call freed but the
    allocator kept counts again when the next call touches it."""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mb(fn: Callable[[], Any], device: Any = "cpu") -> Tuple[float, float]:
    """``(peak MB, seconds)`` of one call of ``fn``: peak memory above what was in use before the
    call (see the module doc; NaN where it cannot be measured) and the call's own wall time."""
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        sec = time.perf_counter() - t0
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20, sec
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as fh:  # resets VmHWM to the current VmRSS
            fh.write("5")
        base = _rss_kb()["VmRSS"]
    except (OSError, KeyError):
        t0 = time.perf_counter()
        fn()
        return float("nan"), time.perf_counter() - t0
    t0 = time.perf_counter()
    fn()
    sec = time.perf_counter() - t0
    return max(0, _rss_kb()["VmHWM"] - base) / 1024, sec


# ----------------------------------------------------------------------------- reports
def write_csv(rows: List[Row], path: str) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in br.order_rows(rows):
            w.writerow(r)


def plot(rows: List[Row], path: str) -> None:
    """Median time vs batch size, log-log, one panel per (problem, mode), one line per solver."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = [p for p in PROBLEMS if any(r["problem"] == p for r in rows)] + sorted({r["problem"] for r in rows} - set(PROBLEMS))
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    solvers = sorted({r["solver"] for r in rows}, key=lambda s: (not s.startswith("hnode"), s))
    fig, axes = plt.subplots(
        max(1, len(probs)), max(1, len(modes)), figsize=(4.2 * max(1, len(modes)), 3.3 * max(1, len(probs))), squeeze=False
    )
    for i, p in enumerate(probs):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            for k, name in enumerate(solvers):
                pts = sorted((r["B"], r["ms"]) for r in rows if r["problem"] == p and r["mode"] == mode and r["solver"] == name)
                if pts:
                    ax.plot([q[0] for q in pts], [q[1] for q in pts], "o-", color=f"C{k}", label=name)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("batch size B")
            ax.set_ylabel("median time (ms)")
            ax.set_title(f"{p}: {mode}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_results(
    rows: List[Row],
    info: Dict[str, str],
    out: str,
    settings: Optional[Dict[str, Any]] = None,
    stem: str = "bench",
    notes: Sequence[str] = (),
) -> Dict[str, str]:
    """Write ``<stem>.md`` (settings, warnings ``notes``, table, machine), ``.csv``, ``.json`` (rows,
    machine, settings) and ``.png`` into ``out``."""
    os.makedirs(out, exist_ok=True)
    paths = {ext: os.path.join(out, f"{stem}.{ext}") for ext in ("md", "csv", "json", "png")}
    md = br.markdown(rows, notes, info, settings)
    with open(paths["md"], "w") as fh:
        fh.write(md + "\n")
    write_csv(rows, paths["csv"])
    with open(paths["json"], "w") as fh:
        doc = {"machine": info, "settings": settings or {}, "rows": br.order_rows(rows)}
        json.dump(json_safe(doc), fh, indent=1, default=str, allow_nan=False)  # NaN (e.g. no peak memory) -> null
    try:
        plot(rows, paths["png"])
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)")
        del paths["png"]
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``hnode-fast bench``'s options plus ``--out``: the run with peak memory, reports written."""
    ap = br.parser("python benchmarks/harness.py")
    ap.description = (__doc__ or "").splitlines()[0]
    ap.add_argument("--out", default="bench_results", help="output folder for bench.md/.csv/.json/.png")
    a = ap.parse_args(argv)
    info = machine()  # before the run: its load average is the machine's, not the benchmark's
    rows, settings, notes = br.execute(ap, a, probe=peak_memory_mb)
    paths = write_results(rows, info, a.out, settings, notes=notes)
    print(br.markdown(rows, notes, info, settings))
    print("wrote " + ", ".join(paths.values()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
