"""Nsight Compute target: one forward+backward of bench_cuda's problem (D=8, (32, 32) tanh, float32).

    ncu --kernel-name regex:"solve_kernel|adjoint_kernel|reduce_partials" --launch-count 3 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        python benchmarks/gpu/ncu_case.py [B]
"""

import sys

import torch

import hnode_fast as hf

B = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
torch.manual_seed(0)
f = hf.HybridField(nn=hf.MaskedMLP(8, 8, hidden=(32, 32), activation="tanh")).to(device="cuda", dtype=torch.float32)
y0 = ((torch.rand(B, 8, device="cuda") - 0.5) * 2).requires_grad_(True)
t = torch.linspace(0, 5.0, 20, device="cuda")
y = hf.odeint(f, y0, t, rtol=1e-5, atol=1e-7, backend="cuda")
y.pow(2).sum().backward()
torch.cuda.synchronize()
print("ncu_case done", float(y0.grad.abs().sum()))
