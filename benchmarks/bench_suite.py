"""The full benchmark matrix: every hnode backend present vs torchdiffeq dopri5 vs torchode Dopri5.

Problems (``hnode_fast.problems.PROBLEMS``): mlp_small (D=4, (16,)), mlp_medium (D=8, (32, 32)),
mlp_large (D=32, (128, 128)), lotka_volterra, pk_hybrid (one-compartment PK + ELU MLP) and
vdp_mu10 (Van der Pol, mu=10); modes fwd, fwd+bwd and epoch (one Adam epoch over 8 minibatches
of B trajectories, MSE loss); batch sizes 1, 64, 1024; devices: cpu, and cuda when present.
Same field, y0, t, tolerances (rtol 1e-5, atol 1e-7) and dtype (float64) for every solver.
What each figure measures is in the docstring of ``benchmarks/harness.py``.

Run:  python benchmarks/bench_suite.py [--threads 2] [--device cuda] [hnode-fast bench options]
        -> benchmarks/results/bench.{md,csv,json,png}: median ms, ratio to torchdiffeq, NFE,
           accepted steps, peak memory, max error vs scipy DOP853 (1e-12), machine record
      pytest benchmarks/bench_suite.py --benchmark-only [-k "mlp_medium and fwd"]
        (pytest-benchmark; NFE, steps, error and peak memory go to extra_info)
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, Dict, List, Tuple

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == "__main__" and os.path.isfile(os.path.join(_ROOT, "hnode_fast", "__init__.py")):
    sys.path.insert(0, _ROOT)  # run from a checkout: its hnode_fast, not an older installed one

import harness  # noqa: E402  (benchmarks/harness.py, beside this file)
import torch  # noqa: E402

from hnode_fast import backends  # noqa: E402
from hnode_fast import bench_runner as br  # noqa: E402
from hnode_fast import problems as hp  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
BATCHES = br.FULL_BATCHES
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPE = torch.float64
EPOCH_BATCHES = 8


def solver_names(device: str) -> List[str]:
    """Every hnode backend usable on ``device`` plus the two peers (skipped if not installed)."""
    dev = torch.device(device)
    return [f"hnode_{b}" for b in backends.available() if br.device_ok(b, dev)] + ["torchdiffeq", "torchode"]


@functools.lru_cache(maxsize=None)
def problem(name: str, device: str) -> Tuple[hp.BenchProblem, Dict[str, br.SolveFn]]:
    p = hp.make_problem(name, DTYPE)
    p.field.to(device)
    return p, br.providers(p.field, p.rtol, p.atol, device)


@functools.lru_cache(maxsize=None)
def epoch(name: str, device: str, B: int) -> Tuple[hp.EpochSetup, Dict[str, br.SolveFn]]:
    p, _ = problem(name, device)
    s = hp.epoch_setup(p, B, EPOCH_BATCHES, torch.device(device))
    return s, br.providers(s.model, p.rtol, p.atol, device)


def prepare(name: str, device: str, B: int, mode: str, solver: str) -> Tuple[Callable[[], None], Dict[str, Any]]:
    """The call to time and its figures (NFE, steps, error of the forward solve, peak memory)."""
    import pytest

    p, provs = problem(name, device)
    if solver not in provs:
        pytest.skip(f"{solver} is not installed")
    if solver == "hnode_reference" and B > 64:
        pytest.skip("the reference backend is the oracle, not a speed contender, at large B")
    fn = provs[solver]
    t = p.t.to(device)
    y0 = p.y0(B).to(device)
    with torch.no_grad():
        y, st = fn(y0, t)
    nfe, steps = st()
    k = min(B, 4)
    err = float((y[:, :k].double().cpu() - p.reference(4)[:, :k]).abs().max())
    if mode == "epoch":
        s, eprovs = epoch(name, device, B)
        call = s.call(eprovs[solver], t)
    else:
        call = br.mode_call(mode, fn, p.field, y0, t)
    call()
    mb, _ = harness.peak_memory_mb(call, device)
    return call, {"nfe": nfe, "steps": steps, "max_err": err, "peak_mb": mb, "device": device}


try:
    import pytest

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("B", BATCHES)
    @pytest.mark.parametrize("mode", br.MODES)
    @pytest.mark.parametrize("problem_name", list(hp.PROBLEMS))
    @pytest.mark.parametrize("solver", sorted({s for d in DEVICES for s in solver_names(d)}))
    def test_suite(benchmark: Any, solver: str, problem_name: str, mode: str, B: int, device: str) -> None:
        if solver not in solver_names(device):
            pytest.skip(f"{solver} does not run on {device}")
        torch.set_num_threads(int(os.environ.get("HNODE_BENCH_THREADS", "2")))
        call, extra = prepare(problem_name, device, B, mode, solver)
        benchmark.group = f"{problem_name} {mode} B={B} {device}"
        benchmark.extra_info.update(extra)
        sync = (lambda: torch.cuda.synchronize()) if device == "cuda" else (lambda: None)

        def timed() -> None:
            call()
            sync()

        rounds = 1 if (B >= 1024 and mode == "epoch") else 3
        benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)
except ImportError:  # pragma: no cover
    pass


def main(argv: List[str]) -> int:
    """The whole matrix through the harness (``python benchmarks/harness.py --full``), saved under results/."""
    return harness.main(["--full", "--out", RESULTS] + argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
