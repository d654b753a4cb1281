"""Speed comparison harness: hnode_fast backends vs torchdiffeq / torchode on the same problems.

Every solver ("provider") sees the same field object, initial states, output times, tolerances
and dtype, in one process. Per (problem, batch size B, mode, solver) a row records:

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
  (rtol = atol = 1e-12, float64) on the first ``err_rows`` trajectories.

Modes: ``fwd`` solves under ``torch.no_grad()``; ``fwd+bwd`` solves with ``y0`` requiring grad
and backpropagates ``sum(y**2)`` to ``y0`` and every field parameter (hnode: its discrete adjoint;
torchdiffeq / torchode: autograd through the solver); ``epoch`` is one training epoch: Adam
(lr 1e-3) over ``epoch_batches`` minibatches of ``B`` trajectories of a synthetic dataset (states
from the problem's field, solved tightly) with an MSE loss, starting each time from the same
perturbed copy of the field.

Problems (:data:`PROBLEMS`), all ``hf.HybridField`` so every hnode backend runs them:
``mlp_small`` (D=4, hidden (16,)), ``mlp_medium`` (D=8, (32, 32)), ``mlp_large`` (D=32,
(128, 128)) random tanh MLPs; ``lotka_volterra`` (mass-action graph); ``pk_hybrid`` (the demo's
one-compartment PK model plus a small ELU network); ``vdp_mu10`` (Van der Pol, mu=10, written as
a mass-action graph on ``(x, y, w = x**2)``: ``x' = y, y' = mu*y - mu*w*y - x, w' = 2*x*y``).

``hnode-fast bench`` runs a quick subset and writes ``bench.md``, ``bench.csv``, ``bench.json``
(rows + machine record) and ``bench.png`` (time vs batch size, log-log, one line per solver).
"""

from __future__ import annotations

import argparse
import copy
import csv
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from ._json import json_safe
from .fields import HybridField, Linear, MaskedMLP, MassAction, MechanisticGraph
from .solve import odeint

Row = Dict[str, Any]
StatsFn = Callable[[], Tuple[float, float]]
SolveFn = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, StatsFn]]

MODES = ("fwd", "fwd+bwd", "epoch")
QUICK_PROBLEMS = ("mlp_medium", "pk_hybrid")
QUICK_BATCHES = (1, 64)
QUICK_MODES = ("fwd", "fwd+bwd")
FULL_BATCHES = (1, 64, 1024)
CSV_FIELDS = [
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
]


# ----------------------------------------------------------------------------- problems
def mlp_field(
    D: int = 8,
    hidden: Sequence[int] = (32, 32),
    activation: str = "tanh",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    sparsity: float = 0.0,
) -> HybridField:
    """The benchmark MLP field: a random (optionally pruned) masked MLP, weights ~ N(0, 1/fan_in)."""
    g = torch.Generator().manual_seed(seed)
    net = MaskedMLP(D, D, hidden=hidden, activation=activation)
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) / layer.in_features**0.5)
            layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=g))
        if sparsity > 0:
            for i, layer in enumerate(net.layers):
                net.set_mask(i, torch.rand(layer.weight.shape, generator=g) >= sparsity)
    return HybridField(nn=net).to(dtype)


@dataclass
class BenchProblem:
    """One benchmark problem: a field, output times, tolerances and an initial-state sampler.

    ``y0(B)`` is deterministic and its first rows do not depend on ``B`` (one scipy reference
    serves every batch size)."""

    name: str
    field: HybridField
    t: torch.Tensor
    sample: Callable[[torch.Generator, int], torch.Tensor]
    rtol: float = 1e-5
    atol: float = 1e-7
    note: str = ""
    seed: int = 1
    _ref: Dict[int, torch.Tensor] = dc_field(default_factory=dict, repr=False)

    @property
    def D(self) -> int:
        return int(self.field.n_states)

    @property
    def dtype(self) -> torch.dtype:
        return self.t.dtype

    def y0(self, B: int, seed: Optional[int] = None) -> torch.Tensor:
        """``(B, D)`` initial states; drawn in blocks of 64 rows so that the first rows are the
        same for every ``B`` (torch's samplers change algorithm with the tensor size)."""
        g = torch.Generator().manual_seed(self.seed if seed is None else seed)
        blocks = [self.sample(g, 64) for _ in range(-(-B // 64))]
        return torch.cat(blocks)[:B].to(self.dtype)

    def reference(self, rows: int) -> torch.Tensor:
        """Tight scipy solution ``(T, rows, D)`` float64 from ``y0(rows)`` (cached)."""
        if rows not in self._ref:
            self._ref[rows] = reference_solution(self.field, self.y0(rows), self.t)
        return self._ref[rows]


def _mlp_problem(name: str, D: int, hidden: Tuple[int, ...], dtype: torch.dtype) -> BenchProblem:
    return BenchProblem(
        name,
        mlp_field(D, hidden, dtype=dtype),
        torch.linspace(0, 5, 20, dtype=dtype),
        lambda g, B: 0.5 * torch.randn(B, D, generator=g, dtype=torch.float64),
        note=f"random tanh MLP, D={D}, hidden {hidden}, t in [0, 5], 20 outputs",
    )


def lotka_volterra(dtype: torch.dtype = torch.float64, a: float = 1.5, b: float = 1.0, d: float = 1.0, g: float = 3.0) -> BenchProblem:
    """``x' = a x - b x y``, ``y' = d x y - g y`` as a mass-action graph (raw signed rates)."""
    mech = MechanisticGraph(
        2,
        [
            Linear(0, 0, a, consume=False),
            MassAction((0, 1), 0, -b, consume=False),
            MassAction((0, 1), 1, d, consume=False),
            Linear(1, None, g),
        ],
        dtype=torch.float64,
        state_names=["prey", "predator"],
    )
    return BenchProblem(
        "lotka_volterra",
        HybridField(mech=mech).to(dtype),
        torch.linspace(0, 10, 20, dtype=dtype),
        lambda gen, B: 1.0 + torch.rand(B, 2, generator=gen, dtype=torch.float64),
        note=f"Lotka-Volterra a={a} b={b} d={d} g={g}, y0 in [1, 2]^2, t in [0, 10]",
    )


def pk_hybrid(dtype: torch.dtype = torch.float64, ka: float = 1.5, ke: float = 0.08) -> BenchProblem:
    """The demo's one-compartment model (depot -ka-> central -ke->) plus a small ELU MLP."""
    mech = MechanisticGraph(2, [Linear(0, 1, ka), Linear(1, None, ke)], param="log", dtype=torch.float64, state_names=["depot", "central"])
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    net = MaskedMLP(2, 2, hidden=(32,), activation="elu").double()
    torch.random.set_rng_state(torch_state)
    with torch.no_grad():  # a perturbation of the mechanism, not a replacement
        net.layers[-1].weight.mul_(0.1)
        net.layers[-1].bias.mul_(0.1)
    return BenchProblem(
        "pk_hybrid",
        HybridField(mech=mech, nn=net).to(dtype),
        torch.linspace(0, 24, 20, dtype=dtype),
        lambda gen, B: torch.cat([4 + 2 * torch.rand(B, 1, generator=gen, dtype=torch.float64), torch.zeros(B, 1, dtype=torch.float64)], 1),
        note=f"one-compartment PK (ka={ka}, ke={ke}) + ELU MLP (32,), dose in [4, 6], t in [0, 24] h",
    )


def vdp(dtype: torch.dtype = torch.float64, mu: float = 10.0, t_end: float = 10.0) -> BenchProblem:
    """Van der Pol on ``(x, y, w = x**2)`` (mass-action terms are at most quadratic):
    ``x' = y``, ``y' = mu*y - mu*w*y - x``, ``w' = 2*x*y``; ``w(0) = x(0)**2`` keeps ``w = x**2``."""
    mech = MechanisticGraph(
        3,
        [
            Linear(1, 0, 1.0, consume=False),
            Linear(1, 1, mu, consume=False),
            MassAction((2, 1), 1, -mu, consume=False),
            Linear(0, 1, -1.0, consume=False),
            MassAction((0, 1), 2, 2.0, consume=False),
        ],
        dtype=torch.float64,
        state_names=["x", "y", "x2"],
    )

    def sample(gen: torch.Generator, B: int) -> torch.Tensor:
        x = (1.0 + 1.5 * torch.rand(B, generator=gen, dtype=torch.float64)) * torch.where(
            torch.rand(B, generator=gen, dtype=torch.float64) < 0.5, -1.0, 1.0
        )
        y = 0.5 * torch.randn(B, generator=gen, dtype=torch.float64)
        return torch.stack([x, y, x * x], 1)

    return BenchProblem(
        f"vdp_mu{mu:g}",
        HybridField(mech=mech).to(dtype),
        torch.linspace(0, t_end, 20, dtype=dtype),
        sample,
        note=f"Van der Pol mu={mu:g} (3-state mass-action form), |x0| in [1, 2.5], t in [0, {t_end:g}]",
    )


PROBLEMS: Dict[str, Callable[[torch.dtype], BenchProblem]] = {
    "mlp_small": lambda dt: _mlp_problem("mlp_small", 4, (16,), dt),
    "mlp_medium": lambda dt: _mlp_problem("mlp_medium", 8, (32, 32), dt),
    "mlp_large": lambda dt: _mlp_problem("mlp_large", 32, (128, 128), dt),
    "lotka_volterra": lambda dt: lotka_volterra(dt),
    "pk_hybrid": lambda dt: pk_hybrid(dt),
    "vdp_mu10": lambda dt: vdp(dt, mu=10.0),
}


def make_problem(name: str, dtype: torch.dtype = torch.float64) -> BenchProblem:
    """Build a registered problem (see :data:`PROBLEMS`)."""
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; choose from {sorted(PROBLEMS)}")
    return PROBLEMS[name](dtype)


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
    from . import __version__, backends

    info["hnode_fast"] = __version__
    info["backends"] = ",".join(backends.available())
    try:
        from . import _native

        info["cpu_isa"] = str(_native._C.cpu_isa()) if _native._C is not None else "no extension"
    except Exception:  # noqa: BLE001
        info["cpu_isa"] = "unknown"
    return info


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


def timeit(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time in seconds."""
    return measure(fn, repeats=repeats, warmup=warmup)[0]


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


def reference_solution(field: HybridField, y0: torch.Tensor, t: torch.Tensor, rtol: float = 1e-12, atol: float = 1e-12) -> torch.Tensor:
    """Tight scipy DOP853 solution (float64, CPU), ``(T, B, D)``; all rows in one system."""
    import numpy as np
    from scipy.integrate import solve_ivp

    f64 = copy.deepcopy(field).to(device="cpu", dtype=torch.float64)
    y0 = y0.detach().to("cpu", torch.float64)
    B, D = y0.shape
    tt = t.detach().to("cpu", torch.float64)

    def fun(s: float, z: Any) -> Any:
        with torch.no_grad():
            return f64(s, torch.from_numpy(np.ascontiguousarray(z)).view(B, D)).reshape(-1).numpy()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny evaluations: a thread pool only adds overhead
    try:
        sol = solve_ivp(
            fun, (float(tt[0]), float(tt[-1])), y0.reshape(-1).numpy(), method="DOP853", t_eval=tt.numpy(), rtol=rtol, atol=atol
        )
    finally:
        torch.set_num_threads(threads)
    if not sol.success:
        raise RuntimeError(f"scipy reference failed: {sol.message}")
    return torch.from_numpy(sol.y.T.reshape(len(tt), B, D).copy())


# ----------------------------------------------------------------------------- modes
def _trainable(m: torch.nn.Module) -> List[torch.nn.Parameter]:
    return [p for p in m.parameters() if p.requires_grad]


def mode_call(mode: str, fn: SolveFn, field: HybridField, y0: torch.Tensor, t: torch.Tensor) -> Callable[[], None]:
    """The call that ``fwd`` / ``fwd+bwd`` time (``epoch``: :meth:`EpochSetup.call`)."""
    if mode == "fwd":

        def call() -> None:
            with torch.no_grad():
                fn(y0, t)

        return call
    if mode == "fwd+bwd":
        params = _trainable(field)

        def call_b() -> None:
            y0g = y0.clone().requires_grad_(True)
            y, _ = fn(y0g, t)
            torch.autograd.grad(y.square().sum(), [y0g, *params])

        return call_b
    raise ValueError(f"unknown mode {mode!r}")


@dataclass
class EpochSetup:
    """A perturbed copy of a problem's field and a synthetic dataset for the ``epoch`` mode."""

    model: HybridField
    init: Dict[str, torch.Tensor]
    y0: torch.Tensor  # (N, D)
    target: torch.Tensor  # (T, N, D)
    B: int
    n_batches: int
    lr: float = 1e-3

    def call(self, fn: SolveFn, t: torch.Tensor) -> Callable[[], None]:
        params = _trainable(self.model)

        def epoch() -> None:
            self.model.load_state_dict(self.init)
            opt = torch.optim.Adam(params, lr=self.lr)
            for i in range(self.n_batches):
                sl = slice(i * self.B, (i + 1) * self.B)
                opt.zero_grad(set_to_none=True)
                y, _ = fn(self.y0[sl], t)
                loss = (y - self.target[:, sl]).square().mean()
                loss.backward()
                opt.step()

        return epoch


def epoch_setup(prob: BenchProblem, B: int, n_batches: int, device: torch.device, seed: int = 123) -> EpochSetup:
    """Dataset: ``n_batches * B`` initial states (seed ``seed``) and the true field's tight solution;
    model: the field with every trainable parameter scaled by ``1 + 0.05 * N(0, 1)``."""
    N = n_batches * B
    y0 = prob.y0(N, seed=seed).to(device)
    t = prob.t.to(device)
    with torch.no_grad():
        target = odeint(prob.field, y0, t, rtol=prob.rtol * 1e-3, atol=prob.atol * 1e-3)
        model = copy.deepcopy(prob.field)
        g = torch.Generator().manual_seed(seed)
        for p in _trainable(model):
            p.mul_(1 + 0.05 * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p))
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return EpochSetup(model, init, y0, target, B, n_batches)


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
) -> List[Row]:
    """Benchmark every provider on every (problem, B, mode); returns one row per measurement.

    A provider that fails is reported through ``progress`` and left out; the others go on.
    Each measurement: a warm-up call, a call measuring peak memory, then up to ``repeats`` timed
    calls, fewer (at least one) when they would take more than ``max_seconds`` in all, judged from
    the first two calls; ``repeats`` in the row says how many.
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
        ref = prob.reference(err_rows)
        say(f"   scipy DOP853 reference ({err_rows} trajectories): {time.perf_counter() - t_ref:.1f} s")
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
                    err = float((y[:, :k].detach().double().cpu() - ref[:, :k]).abs().max())
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
                        mb, msec = peak_memory_mb(call, dev)
                        sec, n = measure(
                            call, repeats=repeats, warmup=0, max_seconds=max_seconds, sync=lambda: _sync(dev), estimate=min(warm, msec)
                        )
                    except Exception as e:  # a peer failing must not hide the others
                        say(f"{pname} B={B} {mode} {name}: failed ({type(e).__name__}: {e})")
                        continue
                    nfe, steps, err = stats[name]
                    if name == "torchdiffeq":
                        base = sec
                    row: Row = {
                        "problem": pname,
                        "B": B,
                        "mode": mode,
                        "solver": name,
                        "ms": sec * 1e3,
                        "speedup_vs_torchdiffeq": None,
                        "nfe": nfe,
                        "steps": steps,
                        "peak_mb": mb,
                        "max_err": err,
                        "repeats": n,
                        "device": str(dev),
                        "dtype": str(dtype).replace("torch.", ""),
                    }
                    mode_rows.append(row)
                    say(
                        f"{pname:<15} B={B:<5} {mode:<8} {name:<16} {sec * 1e3:11.2f} ms  nfe {nfe:7.1f}  steps "
                        f"{steps:6.1f}  mem {mb:7.1f} MB  err {err:.1e}  (n={n})"
                    )
                for r in mode_rows:
                    if base is not None:
                        r["speedup_vs_torchdiffeq"] = base / (r["ms"] / 1e3)
                rows.extend(mode_rows)
    return rows


# ----------------------------------------------------------------------------- reports
def _order(rows: List[Row]) -> List[Row]:
    pidx = {p: i for i, p in enumerate(PROBLEMS)}
    midx = {m: i for i, m in enumerate(MODES)}
    sidx = {s: i for i, s in enumerate(sorted({r["solver"] for r in rows}, key=lambda s: (not s.startswith("hnode"), s)))}
    return sorted(rows, key=lambda r: (pidx.get(r["problem"], 99), midx.get(r["mode"], 9), r["B"], sidx[r["solver"]]))


def _f(x: Any, fmt: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, fmt)


def markdown(rows: List[Row], info: Dict[str, str]) -> str:
    """The results table (grouped by problem, mode, B) and the machine record."""
    lines = [
        "| problem | mode | B | solver | ms (median) | x torchdiffeq | NFE | steps | peak MB | max err |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in _order(rows):
        lines.append(
            f"| {r['problem']} | {r['mode']} | {r['B']} | {r['solver']} | {_f(r['ms'], '.2f')} | "
            f"{_f(r.get('speedup_vs_torchdiffeq'), '.2f')} | {_f(r['nfe'], '.0f')} | {_f(r['steps'], '.0f')} | "
            f"{_f(r['peak_mb'], '.1f')} | {_f(r['max_err'], '.1e')} |"
        )
    lines += [
        "",
        "x torchdiffeq: torchdiffeq's median time / this solver's (> 1 is faster). NFE, steps: forward "
        "solve, mean per trajectory (torchdiffeq: whole batch, one shared step). peak MB: CPU resident-set "
        "growth during one call (CUDA: allocated tensors). max err: vs scipy DOP853 rtol=atol=1e-12 on the "
        "first trajectories.",
        "",
        "Machine:",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    return "\n".join(lines)


def write_csv(rows: List[Row], path: str) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in _order(rows):
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
    rows: List[Row], info: Dict[str, str], out: str, settings: Optional[Dict[str, Any]] = None, stem: str = "bench"
) -> Dict[str, str]:
    """Write ``<stem>.md``, ``.csv``, ``.json`` (rows, machine, settings) and ``.png`` into ``out``."""
    os.makedirs(out, exist_ok=True)
    paths = {ext: os.path.join(out, f"{stem}.{ext}") for ext in ("md", "csv", "json", "png")}
    md = markdown(rows, info)
    if settings:
        md = "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()) + "\n\n" + md
    with open(paths["md"], "w") as fh:
        fh.write(md + "\n")
    write_csv(rows, paths["csv"])
    with open(paths["json"], "w") as fh:
        doc = {"machine": info, "settings": settings or {}, "rows": _order(rows)}
        json.dump(json_safe(doc), fh, indent=1, default=str, allow_nan=False)  # NaN (e.g. no peak memory) -> null
    try:
        plot(rows, paths["png"])
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)")
        del paths["png"]
    return paths


def _csv_list(s: str) -> List[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="hnode-fast bench",
        description=(__doc__ or "").splitlines()[0],
        epilog=f"problems: {', '.join(PROBLEMS)}; modes: {', '.join(MODES)}",
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
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--skip", default="", help="comma-separated solvers to leave out (e.g. hnode_reference,torchode)")
    ap.add_argument("--epoch-batches", type=int, default=8, help="minibatches per training epoch")
    ap.add_argument("--out", default="bench_results", help="output folder for bench.md/.csv/.json/.png")
    ap.add_argument("--quiet", action="store_true", help="no line per measurement")
    a = ap.parse_args(argv)
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
    dtype = getattr(torch, a.dtype)
    info = machine()
    settings = {
        "problems": ",".join(problems),
        "batches": ",".join(map(str, batches)),
        "modes": ",".join(modes),
        "repeats": a.repeats,
        "max_seconds": a.max_seconds,
        "device": a.device,
        "dtype": a.dtype,
        "epoch_batches": a.epoch_batches,
    }
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
    rows = run(
        problems,
        batches,
        modes,
        repeats=a.repeats,
        skip=_csv_list(a.skip),
        device=a.device,
        dtype=dtype,
        max_seconds=a.max_seconds,
        epoch_batches=a.epoch_batches,
        progress=None if a.quiet else (lambda s: print(s, flush=True)),
    )
    settings["wall_s"] = round(time.perf_counter() - t0, 1)
    paths = write_results(rows, info, a.out, settings)
    print(markdown(rows, info))
    print("wrote " + ", ".join(paths.values()), file=sys.stderr)
    return 0
