"""backend="triton" on a plain nn.Sequential field (parameters shared with the user's module):
solution and gradients into the Sequential's parameters equal the reference's."""

import pytest
import torch
from torch import nn

import hnode_fast as hf

f64 = torch.float64


@pytest.mark.parametrize("act", [nn.Tanh, nn.Sigmoid])
def test_sequential_field_matches_reference(act, device, tseed):
    seq = nn.Sequential(nn.Linear(3, 8), act(), nn.Linear(8, 8), act(), nn.Linear(8, 3)).double().to(device)
    field = hf.HybridField(nn=seq)
    y0 = torch.randn(5, 3, dtype=f64, device=device)
    t = torch.linspace(0, 1.0, 4, dtype=f64, device=device)
    out = {}
    for be in ("reference", "triton"):
        seq.zero_grad()
        y, st = hf.odeint(field, y0, t, rtol=1e-6, atol=1e-8, backend=be, return_stats=True)
        y.sin().sum().backward()
        out[be] = (y.detach(), st.nfe, [p.grad.clone() for p in seq.parameters()])
    (yr, nr, gr), (yt, nt, gt) = out["reference"], out["triton"]
    torch.testing.assert_close(yt, yr, rtol=1e-10, atol=1e-12)
    assert torch.equal(nt, nr)
    for a, b in zip(gt, gr):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
        assert a.abs().sum() > 0
