"""Speed comparison of the hnode_fast backends with torchdiffeq and torchode: hnode-fast bench.

Every solver ("provider") gets the same field, initial states, output times, tolerances and dtype,
in one process; per (problem, B, mode, solver) a row holds the median time (``ms``), the ratio to
torchdiffeq, NFE and accepted steps of the forward solve, and the max error against a tight scipy
DOP853 solution. Modes: ``fwd`` (no grad), ``fwd+bwd`` (gradients of ``sum(y**2)`` w.r.t. ``y0``
and the parameters), ``epoch`` (one Adam epoch over minibatches of a synthetic dataset). Problems:
:mod:`hnode_fast.problems`. The command prints the Markdown table. A missing peer (or scipy, for
the errors) is named in a warning, on stderr and above the table, with the install command
(``pip install "hnode_fast[bench]"``). The full harness, ``benchmarks/harness.py`` (what each
figure measures, peak memory, machine record, CSV/JSON/plot files; run by
``benchmarks/bench_suite.py``), builds on :func:`run`, :func:`parser` and :func:`execute`.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from .fields import HybridField
from .problems import PROBLEMS, epoch_setup, make_problem, trainable
from .solve import odeint

Row = Dict[str, Any]
StatsFn = Callable[[], Tuple[float, float]]
SolveFn = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, StatsFn]]
Probe = Callable[[Callable[[], Any], torch.device], Tuple[float, float]]  # (peak MB, seconds) of one call

MODES = ("fwd", "fwd+bwd", "epoch")
QUICK_PROBLEMS = ("mlp_medium", "pk_hybrid")
QUICK_BATCHES = (1, 64)
QUICK_MODES = ("fwd", "fwd+bwd")
FULL_BATCHES = (1, 64, 1024)
INSTALL = 'pip install "hnode_fast[bench]"'
# module -> what the comparison lacks without it (the peers and the reference solution's scipy)
OPTIONAL = {"torchdiffeq": "no torchdiffeq rows, no 'x torchdiffeq' column", "torchode": "no torchode rows", "scipy": "no 'max err' column"}
# the fields of a row, in the order of the CSV columns
ROW_FIELDS = (
    "problem",
    "B",
    "mode",
    "solver",
    "ms",
    "speedup_vs_torchdiffeq",
    "nfe",
    "steps",
    "peak_mb",
    "max_err",
    "repeats",
    "device",
    "dtype",
)


# ----------------------------------------------------------------------------- measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[], Any],
    repeats: int = 5,
    warmup: int = 1,
    max_seconds: Optional[float] = None,
    sync: Callable[[], None] = lambda: None,
    estimate: float = 0.0,
) -> Tuple[float, int]:
    """``(median seconds, runs timed)``. With ``max_seconds`` the number of timed runs drops (to at
    least one) so that they take about that long, judged from the last warm-up (or ``estimate``
    seconds per call without warm-up)."""
    last = estimate
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        sync()
        last = time.perf_counter() - t0
    n = repeats
    if max_seconds is not None and last > 0:
        n = max(1, min(repeats, int(max_seconds / last)))
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), n


# ----------------------------------------------------------------------------- solvers
def _mean(x: torch.Tensor) -> float:
    return float(x.double().mean())


def device_ok(backend: str, device: torch.device) -> bool:
    """Whether hnode backend ``backend`` runs on tensors of ``device``."""
    if backend in ("cuda", "triton"):
        return device.type == "cuda"
    if backend == "cpu":
        return device.type == "cpu"
    return True


def providers(
    field: HybridField, rtol: float, atol: float, device: Any = "cpu", skip: Optional[Iterable[str]] = None
) -> Dict[str, SolveFn]:
    """name -> ``solve(y0, t) -> (y (T, B, D), stats())`` with ``stats() -> (nfe, accepted steps)``.

    hnode backends usable on ``device`` (``hnode_<backend>``), torchdiffeq ``dopri5`` and
    torchode ``Dopri5`` + ``IntegralController`` (``AutoDiffAdjoint``), all with the same tolerances."""
    from . import backends

    device = torch.device(device)
    skip = set(skip or ())
    out: Dict[str, SolveFn] = {}
    for b in backends.available():
        if not device_ok(b, device) or f"hnode_{b}" in skip:
            continue

        def run_h(y0: torch.Tensor, t: torch.Tensor, b: str = b) -> Tuple[torch.Tensor, StatsFn]:
            y, st = odeint(field, y0, t, rtol=rtol, atol=atol, backend=b, return_stats=True)
            return y, lambda: (_mean(st.nfe), _mean(st.n_steps))

        out[f"hnode_{b}"] = run_h
    if "torchdiffeq" not in skip:
        try:
            import torchdiffeq
        except ImportError:
            pass
        else:

            class Counted(torch.nn.Module):
                def __init__(self) -> None:
                    super().__init__()
                    self.f, self.n, self.acc = field, 0, 0

                def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                    self.n += 1
                    return self.f(t, y)

                def callback_accept_step(self, t0: Any, y0: Any, dt: Any) -> None:  # torchdiffeq callback
                    self.acc += 1

            cf = Counted()

            def run_td(y0: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, StatsFn]:
                cf.n = cf.acc = 0
                y = torchdiffeq.odeint(cf, y0, t, rtol=rtol, atol=atol, method="dopri5")
                n, acc = cf.n, cf.acc
                return y, lambda: (float(n), float(acc))

            out["torchdiffeq"] = run_td
    if "torchode" not in skip:
        try:
            import torchode as to
        except ImportError:
            pass
        else:
            term = to.ODETerm(lambda t, y: field(t, y))
            solver = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=atol, rtol=rtol, term=term))

            def run_to(y0: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, StatsFn]:
                sol = solver.solve(to.InitialValueProblem(y0=y0, t_eval=t.expand(y0.shape[0], -1)))
                st = sol.stats
                return sol.ys.transpose(0, 1), lambda: (_mean(st["n_f_evals"]), _mean(st["n_accepted"]))

            out["torchode"] = run_to
    return out


# ----------------------------------------------------------------------------- modes
def mode_call(mode: str, fn: SolveFn, field: HybridField, y0: torch.Tensor, t: torch.Tensor) -> Callable[[], None]:
    """The call that ``fwd`` / ``fwd+bwd`` time (``epoch``: :meth:`~hnode_fast.problems.EpochSetup.call`)."""
    if mode == "fwd":

        def call() -> None:
            with torch.no_grad():
                fn(y0, t)

        return call
    if mode == "fwd+bwd":
        params = trainable(field)

        def call_b() -> None:
            y0g = y0.clone().requires_grad_(True)
            y, _ = fn(y0g, t)
            torch.autograd.grad(y.square().sum(), [y0g, *params])

        return call_b
    raise ValueError(f"unknown mode {mode!r}")


# ----------------------------------------------------------------------------- the run
def run(
    problems: Sequence[str] = QUICK_PROBLEMS,
    batches: Sequence[int] = QUICK_BATCHES,
    modes: Sequence[str] = QUICK_MODES,
    repeats: int = 5,
    skip: Optional[Iterable[str]] = None,
    err_rows: int = 4,
    progress: Optional[Callable[[str], None]] = print,
    device: Any = "cpu",
    dtype: torch.dtype = torch.float64,
    max_seconds: Optional[float] = 3.0,
    epoch_batches: int = 8,
    reference_max_batch: int = 64,
    probe: Optional[Probe] = None,
) -> List[Row]:
    """Benchmark every provider on every (problem, B, mode); returns one row per measurement.

    A provider that fails is reported through ``progress`` and left out; the others go on.
    Each measurement: a warm-up call, with ``probe`` a call measuring peak memory (``peak_mb``,
    NaN without), then up to ``repeats`` timed calls, fewer (at least one) when they would take
    more than ``max_seconds`` in all, judged from the calls before; ``repeats`` in the row says how
    many. Without scipy ``max_err`` is NaN.
    ``hnode_reference`` (the oracle, plain PyTorch) runs only up to ``reference_max_batch``."""
    dev = torch.device(device)
    say: Callable[[str], None] = progress or (lambda s: None)
    for m in modes:
        if m not in MODES:
            raise ValueError(f"unknown mode {m!r}; choose from {MODES}")
    rows: List[Row] = []
    for pname in problems:
        prob = make_problem(pname, dtype)
        field = prob.field.to(dev)
        t = prob.t.to(dev)
        say(f"== {pname}: {prob.note}; rtol {prob.rtol:g} atol {prob.atol:g}, {dtype}, {dev}")
        t_ref = time.perf_counter()
        ref: Optional[torch.Tensor] = None
        try:
            ref = prob.reference(err_rows)
            say(f"   scipy DOP853 reference ({err_rows} trajectories): {time.perf_counter() - t_ref:.1f} s")
        except ImportError as e:
            say(f"   no reference solution ({e}): no max err ({INSTALL})")
        provs = providers(field, prob.rtol, prob.atol, dev, skip)
        for B in batches:
            y0 = prob.y0(B).to(dev)
            here = {k: v for k, v in provs.items() if not (k == "hnode_reference" and B > reference_max_batch)}
            stats: Dict[str, Tuple[float, float, float]] = {}
            for name, fn in here.items():  # forward statistics and error, once per (problem, B, solver)
                try:
                    with torch.no_grad():
                        y, st = fn(y0, t)
                    nfe, steps = st()
                    k = min(B, err_rows)
                    err = float("nan") if ref is None else float((y[:, :k].detach().double().cpu() - ref[:, :k]).abs().max())
                    stats[name] = (nfe, steps, err)
                except Exception as e:  # a peer failing must not hide the others
                    say(f"{pname} B={B} {name}: failed ({type(e).__name__}: {e})")
            setup = None
            for mode in modes:
                base: Optional[float] = None
                mode_rows: List[Row] = []
                if mode == "epoch":
                    try:
                        setup = setup or epoch_setup(prob, B, epoch_batches, dev)
                    except Exception as e:  # noqa: BLE001
                        say(f"{pname} B={B} epoch: dataset failed ({type(e).__name__}: {e})")
                        continue
                    eprovs = providers(setup.model, prob.rtol, prob.atol, dev, skip)
                for name, fn in here.items():
                    if name not in stats:
                        continue
                    try:
                        call = setup.call(eprovs[name], t) if mode == "epoch" and setup else mode_call(mode, fn, field, y0, t)
                        t0 = time.perf_counter()
                        call()  # warm-up (first-call costs stay out of the memory figure too)
                        _sync(dev)
                        warm = time.perf_counter() - t0
                        mb, msec = probe(call, dev) if probe else (float("nan"), warm)
                        sec, n = measure(
                            call, repeats=repeats, warmup=0, max_seconds=max_seconds, sync=lambda: _sync(dev), estimate=min(warm, msec)
                        )
                    except Exception as e:  # a peer failing must not hide the others
                        say(f"{pname} B={B} {mode} {name}: failed ({type(e).__name__}: {e})")
                        continue
                    nfe, steps, err = stats[name]
                    if name == "torchdiffeq":
                        base = sec
                    vals = (pname, B, mode, name, sec * 1e3, None, nfe, steps, mb, err, n, str(dev), str(dtype).replace("torch.", ""))
                    row: Row = dict(zip(ROW_FIELDS, vals))
                    mode_rows.append(row)
                    mem = f"  mem {mb:7.1f} MB" if probe else ""
                    say(
                        f"{pname:<15} B={B:<5} {mode:<8} {name:<16} {sec * 1e3:11.2f} ms  nfe {nfe:7.1f}  steps "
                        f"{steps:6.1f}{mem}  err {err:.1e}  (n={n})"
                    )
                for r in mode_rows:
                    if base is not None:
                        r["speedup_vs_torchdiffeq"] = base / (r["ms"] / 1e3)
                rows.extend(mode_rows)
    return rows


# ----------------------------------------------------------------------------- reports
def order_rows(rows: List[Row]) -> List[Row]:
    """``rows`` by problem, mode, B, then solver (hnode backends first)."""
    pidx = {p: i for i, p in enumerate(PROBLEMS)}
    midx = {m: i for i, m in enumerate(MODES)}
    sidx = {s: i for i, s in enumerate(sorted({r["solver"] for r in rows}, key=lambda s: (not s.startswith("hnode"), s)))}
    return sorted(rows, key=lambda r: (pidx.get(r["problem"], 99), midx.get(r["mode"], 9), r["B"], sidx[r["solver"]]))


def _f(x: Any, fmt: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, fmt)


def markdown(
    rows: List[Row], notes: Sequence[str] = (), info: Optional[Dict[str, str]] = None, settings: Optional[Dict[str, Any]] = None
) -> str:
    """The ``settings`` line, the warnings ``notes``, the results table (grouped by problem, mode,
    B) and the machine record ``info``. The peak MB column only where a row has it (the full
    harness measures it)."""
    mem = any(_f(r.get("peak_mb"), ".1f") != "-" for r in rows)
    head = ["problem", "mode", "B", "solver", "ms (median)", "x torchdiffeq", "NFE", "steps"] + ["peak MB"] * mem + ["max err"]
    lines = ["Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()), ""] if settings else []
    lines += [f"> **warning**: {n}" for n in notes] + [""] * bool(notes)
    lines += ["| " + " | ".join(head) + " |", "|---|---|---:|---|" + "---:|" * (len(head) - 4)]
    for r in order_rows(rows):
        cells = [r["problem"], r["mode"], r["B"], r["solver"], _f(r["ms"], ".2f"), _f(r.get("speedup_vs_torchdiffeq"), ".2f")]
        cells += [_f(r["nfe"], ".0f"), _f(r["steps"], ".0f")] + [_f(r.get("peak_mb"), ".1f")] * mem + [_f(r["max_err"], ".1e")]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    peak = " peak MB: CPU resident-set growth during one call (CUDA: allocated tensors)." if mem else ""
    lines += [
        "",
        "x torchdiffeq: torchdiffeq's median time / this solver's (> 1 is faster). NFE, steps: forward "
        f"solve, mean per trajectory (torchdiffeq: whole batch, one shared step).{peak} max err: vs scipy "
        "DOP853 rtol=atol=1e-12 on the first trajectories.",
    ]
    if info:
        lines += ["", "Machine:", ""] + [f"- {k}: {v}" for k, v in info.items()]
    return "\n".join(lines)


def not_installed(skip: Iterable[str] = ()) -> Dict[str, str]:
    """module -> warning, for each peer (or scipy, for the errors) that is not skipped and cannot be
    imported: the comparison runs without it, and says so."""
    out = {}
    for mod, lost in OPTIONAL.items():
        if mod in set(skip):
            continue
        try:
            importlib.import_module(mod)
        except ImportError:
            what = "scipy" if mod == "scipy" else f"peer solver {mod}"
            out[mod] = f"{what} is not installed: {lost}; install it with: {INSTALL}"
    return out


def _csv_list(s: str) -> List[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def parser(prog: str = "hnode-fast bench") -> argparse.ArgumentParser:
    """The options of ``hnode-fast bench`` (the full harness adds ``--out``)."""
    ap = argparse.ArgumentParser(
        prog=prog, description=(__doc__ or "").splitlines()[0], epilog=f"problems: {', '.join(PROBLEMS)}; modes: {', '.join(MODES)}"
    )
    ap.add_argument("--problems", default=None, help=f"comma-separated, or 'all' (quick: {','.join(QUICK_PROBLEMS)})")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (quick: 1,64; --full: 1,64,1024)")
    ap.add_argument("--modes", default=None, help="comma-separated of fwd,fwd+bwd,epoch (quick: fwd,fwd+bwd)")
    ap.add_argument(
        "--full", action="store_true", help="every problem and mode, batches 1,64,1024 (explicit --problems/--batches/--modes still win)"
    )
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    ap.add_argument("--max-seconds", type=float, default=3.0, help="fewer repeats when a measurement would exceed this")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (hnode backends that run there)")
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"], help="dtype of the fields and states")
    ap.add_argument("--skip", default="", help="comma-separated solvers to leave out (e.g. hnode_reference,torchode)")
    ap.add_argument("--epoch-batches", type=int, default=8, help="minibatches per training epoch")
    ap.add_argument("--quiet", action="store_true", help="no line per measurement")
    if prog == "hnode-fast bench":
        from .bench_loop import add_arguments

        add_arguments(ap)
    return ap


def execute(
    ap: argparse.ArgumentParser, a: argparse.Namespace, probe: Optional[Probe] = None
) -> Tuple[List[Row], Dict[str, Any], List[str]]:
    """Run what the parsed options ``a`` ask for: ``(rows, settings, notes)``, ``notes`` being the
    warnings (missing peers, scipy) also printed to stderr before the run."""
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.problems:  # explicit choices win over --full's
        problems = list(PROBLEMS) if a.problems == "all" else _csv_list(a.problems)
    else:
        problems = list(PROBLEMS if a.full else QUICK_PROBLEMS)
    batches = [int(x) for x in _csv_list(a.batches)] if a.batches else list(FULL_BATCHES if a.full else QUICK_BATCHES)
    modes = _csv_list(a.modes) if a.modes else list(MODES if a.full else QUICK_MODES)
    for p in problems:
        if p not in PROBLEMS:
            ap.error(f"unknown problem {p!r}; choose from {', '.join(PROBLEMS)}")
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    missing = not_installed(_csv_list(a.skip))
    settings: Dict[str, Any] = {
        "problems": ",".join(problems),
        "batches": ",".join(map(str, batches)),
        "modes": ",".join(modes),
        "repeats": a.repeats,
        "max_seconds": a.max_seconds,
        "device": a.device,
        "dtype": a.dtype,
        "epoch_batches": a.epoch_batches,
        "not_installed": ",".join(missing) or "none",
    }
    for note in missing.values():  # loudly, before the run (and above the table)
        print(f"warning: {note}", file=sys.stderr)
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    if load > (os.cpu_count() or 1) - 0.5:
        print(
            f"warning: load average {load:.1f} on {os.cpu_count()} cores: timings will be noisy, and a torch "
            "thread pool stalls when a core is busy (try --threads 1, or a quiet machine)",
            file=sys.stderr,
        )
    t0 = time.perf_counter()
    progress = None if a.quiet else (lambda s: print(s, flush=True))
    rows = run(
        problems,
        batches,
        modes,
        a.repeats,
        _csv_list(a.skip),
        progress=progress,
        device=a.device,
        dtype=getattr(torch, a.dtype),
        max_seconds=a.max_seconds,
        epoch_batches=a.epoch_batches,
        probe=probe,
    )
    settings["wall_s"] = round(time.perf_counter() - t0, 1)
    return rows, settings, list(missing.values())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``hnode-fast bench``: prints the Markdown table (warnings on top); writes no file."""
    ap = parser()
    a = ap.parse_args(argv)
    if a.loop:
        from .bench_loop import main as loop_main

        if a.threads:
            torch.set_num_threads(a.threads)
        return loop_main(a)
    rows, settings, notes = execute(ap, a)
    print(markdown(rows, notes, settings=settings))
    return 0
