"""Small CUDA-backend workload for compute-sanitizer (memcheck / racecheck / initcheck).

    compute-sanitizer --tool memcheck python benchmarks/gpu/sanitize_case.py [quick]

Covers every kernel path at small sizes: shared-memory staging (small P) and global-memory
weights (large P), the 1024 / 2048 local-memory buckets and the generic global workspace,
float32 / float64, CSR layers, events + inputs, the discrete adjoint with checkpoint overflow
(re-solve of the overflowed subset) and grid-stride loops (n_thr < B, forced by shrinking the
workspace budget). Run with PYTORCH_NO_CUDA_MEMORY_CACHING=1 so out-of-bounds accesses inside
torch's cached segments are visible to memcheck.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
from gpu_extra import make_field  # noqa: E402

import hnode_fast as hf  # noqa: E402
from hnode_fast.backends import cuda as hcuda  # noqa: E402

f64, f32 = torch.float64, torch.float32
QUICK = "quick" in sys.argv[1:]
hcuda._WS_BUDGET_BYTES = 1 << 16  # n_thr = 128: grid-stride loops with B > 128
hcuda._ck_budget = lambda device: 1  # checkpoint cap 8: overflow + re-solve path


def run(name, kw, B, events_inputs=False, grad=True):
    dt = kw["dtype"]
    D = kw["D"]
    f = make_field(seed=1, **kw).to("cuda")
    g = torch.Generator().manual_seed(2)
    y0 = torch.rand(B, D, generator=g, dtype=dt).cuda()
    t = torch.linspace(0, 2, 6, dtype=dt).cuda()
    ex = {}
    if events_inputs:
        K = kw.get("n_inputs", 0)
        inf = float("inf")
        et = torch.where(
            torch.rand(B, 2, generator=g) < 0.5, torch.rand(B, 2, generator=g, dtype=f64) * 2, torch.full((B, 2), inf, dtype=f64)
        )
        ex["events"] = hf.Events(
            times=et.cuda(), states=torch.randint(0, D, (B, 2), generator=g).cuda(), amounts=torch.rand(B, 2, generator=g, dtype=dt).cuda()
        )
        if K:
            it = torch.sort(torch.rand(B, 3, generator=g, dtype=f64) * 2, dim=1).values
            ex["inputs"] = hf.Inputs(times=it.cuda(), values=torch.randn(B, 3, K, generator=g, dtype=dt).cuda())
    if grad:
        y0 = y0.requires_grad_(True)
        y = hf.odeint(f, y0, t, backend="cuda", **ex)
        y.nan_to_num().pow(2).sum().backward()
    else:
        with torch.no_grad():
            y = hf.odeint(f, y0, t, backend="cuda", **ex)
    torch.cuda.synchronize()
    print(f"sanitize_case {name}: ok, finite={bool(torch.isfinite(y).all())}", flush=True)


cases = [
    ("f64_smem_b1024_events_inputs_csr", dict(D=3, hidden=(8, 8), dtype=f64, mask_density=0.5, n_inputs=2, nn_inputs=True), 150, True),
    ("f32_smem_b2048", dict(D=8, hidden=(32, 32), dtype=f32), 150, False),
    ("f64_global_generic_128x128", dict(D=8, hidden=(128, 128), dtype=f64), 140, False),
]
if QUICK:
    cases = cases[:1] + cases[2:]
for c in cases:
    run(*c)
print("sanitize_case: all done", flush=True)
