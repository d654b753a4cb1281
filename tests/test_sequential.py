"""Plain ``nn.Sequential`` networks as hybrid fields: parameters shared (not copied), the same
solution and gradients on every compiled backend as on the reference, clear errors for layers
that cannot be compiled. (Triton: tests/triton/test_triton_sequential.py; CUDA: below.)"""

import copy

import pytest
import torch
from torch import nn

import hnode_fast as hf
from hnode_fast import backends

f64 = torch.float64
COMPILED = [b for b in backends.available() if b == "cpu"]
HAS_CUDA_BACKEND = "cuda" in backends.available() and torch.cuda.is_available()


def demo_net(D=2, width=50, act=nn.Tanh):
    """ode_demo's network (Linear, Tanh, Linear), in float64."""
    return nn.Sequential(nn.Linear(D, width), act(), nn.Linear(width, D)).double()


def test_shares_parameters_and_matches_forward(seed):
    seq = nn.Sequential(
        nn.Linear(3, 7), nn.SiLU(), nn.Identity(), nn.Sequential(nn.Linear(7, 5), nn.Sigmoid()), nn.Linear(5, 3, bias=False)
    ).double()
    mlp = hf.MaskedMLP.from_sequential(seq)
    assert mlp.layers[0] is seq[0] and mlp.layers[1] is seq[3][0] and mlp.layers[2] is seq[4]
    assert {id(p) for p in mlp.parameters()} == {id(p) for p in seq.parameters()}
    assert mlp.activations == ("silu", "sigmoid") and mlp.hidden == (7, 5)
    x = torch.randn(11, 3, dtype=f64)
    torch.testing.assert_close(mlp(x), seq(x), rtol=1e-14, atol=1e-14)
    with torch.no_grad():  # an update through the user's module is seen by the field: no copy
        seq[0].weight.add_(0.5)
    torch.testing.assert_close(mlp(x), seq(x), rtol=1e-14, atol=1e-14)


def test_linear_linear_and_single_linear(seed):
    seq = nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 2)).double()
    mlp = hf.MaskedMLP.from_sequential(seq)
    assert mlp.activations == ("identity",)
    x = torch.randn(5, 2, dtype=f64)
    torch.testing.assert_close(mlp(x), seq(x), rtol=1e-14, atol=1e-14)
    lin = nn.Linear(2, 2).double()
    f = hf.HybridField(nn=lin)
    assert f.nn.layers[0] is lin and f.nn.hidden == ()


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU, nn.ELU, nn.Softplus, nn.SiLU, nn.Sigmoid])
def test_solve_and_gradients_match_reference(backend, act, seed):
    seq = nn.Sequential(nn.Linear(3, 9), act(), nn.Linear(9, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    field = hf.HybridField(nn=seq)
    y0 = torch.randn(5, 3, dtype=f64)
    t = torch.linspace(0, 1.5, 6, dtype=f64)
    out = {}
    for be in ("reference", backend):
        seq.zero_grad()
        y, st = hf.odeint(field, y0, t, rtol=1e-7, atol=1e-9, backend=be, return_stats=True)
        (y.sin().sum()).backward()
        out[be] = (y.detach(), st, [p.grad.clone() for p in seq.parameters()])
    (yr, sr, gr), (yc, sc, gc) = out["reference"], out[backend]
    torch.testing.assert_close(yc, yr, rtol=1e-11, atol=1e-12)
    assert torch.equal(sr.nfe, sc.nfe)
    for a, b in zip(gc, gr):  # gradients reach the Sequential's own parameters
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
        assert a.abs().sum() > 0


@pytest.mark.parametrize("backend", COMPILED)
def test_parameter_gradient_against_finite_differences(backend, seed):
    """d(sum y)/dW of the Sequential's last weight, against central differences (float64)."""
    seq = nn.Sequential(nn.Linear(2, 4), nn.Softplus(), nn.Linear(4, 2)).double()
    field = hf.HybridField(nn=seq)
    y0 = torch.randn(3, 2, dtype=f64)
    t = torch.tensor([0.0, 0.4, 0.9], dtype=f64)
    w = seq[2].weight
    (g,) = torch.autograd.grad(hf.odeint(field, y0, t, rtol=1e-11, atol=1e-13, backend=backend).sum(), w)
    eps = 1e-6
    for idx in [(0, 0), (1, 3), (0, 2)]:
        vals = []
        for sgn in (1, -1):
            with torch.no_grad():
                w[idx] += sgn * eps
                vals.append(hf.odeint(field, y0, t, rtol=1e-11, atol=1e-13, backend=backend).sum().item())
                w[idx] -= sgn * eps
        fd = (vals[0] - vals[1]) / (2 * eps)
        assert abs(fd - g[idx].item()) < 1e-6 * max(1.0, abs(fd)), (idx, fd, g[idx].item())


@pytest.mark.parametrize("backend", COMPILED)
def test_optimizer_on_users_module_trains_the_solve(backend, seed):
    """The torchdiffeq habit: an optimizer over the user's network. Training through the compiled
    backend follows the reference's trajectory of losses and parameters step by step."""
    true_A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=f64)
    t = torch.linspace(0, 2, 20, dtype=f64)
    y0 = torch.tensor([[2.0, 0.0], [0.5, 1.0]], dtype=f64)
    with torch.no_grad():
        target = hf.odeint(lambda tt, y: (y**3) @ true_A, y0, t, backend="reference")
    init = demo_net()
    runs = {}
    for be in ("reference", backend):
        seq = copy.deepcopy(init)
        field = hf.HybridField(nn=seq)
        opt = torch.optim.Adam(seq.parameters(), lr=1e-2)
        losses = []
        for _ in range(15):
            opt.zero_grad()
            loss = (hf.odeint(field, y0, t, backend=be) - target).pow(2).mean()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        runs[be] = (losses, [p.detach().clone() for p in seq.parameters()])
    (lr_, pr), (lc, pc) = runs["reference"], runs[backend]
    assert lc[-1] < lc[0]
    torch.testing.assert_close(torch.tensor(lc), torch.tensor(lr_), rtol=1e-8, atol=0)
    for a, b in zip(pc, pr):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    moved = [not torch.equal(a, p0) for a, p0 in zip(pc, init.parameters())]
    assert all(moved)


def test_describe_names_the_source(seed):
    field = hf.HybridField(nn=demo_net())
    text = field.describe()
    assert "nn.Sequential" in text and "2 -> 50 -> 2" in text


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: nn.Sequential(nn.Linear(2, 4), nn.LeakyReLU(), nn.Linear(4, 2)), r"LeakyReLU.*not supported"),
        (lambda: nn.Sequential(nn.Linear(2, 4), nn.Dropout(0.1), nn.Linear(4, 2)), r"Dropout.*not supported"),
        (lambda: nn.Sequential(nn.Linear(2, 4), nn.ELU(alpha=0.5), nn.Linear(4, 2)), r"only alpha=1"),
        (lambda: nn.Sequential(nn.Linear(2, 4), nn.Softplus(beta=2.0), nn.Linear(4, 2)), r"only beta=1"),
        (lambda: nn.Sequential(nn.Tanh(), nn.Linear(2, 2)), r"before the first nn.Linear"),
        (lambda: nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.ReLU(), nn.Linear(4, 2)), r"two activations in a row"),
        (lambda: nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2), nn.Tanh()), r"ends with an activation"),
        (lambda: nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(5, 2)), r"takes 5 features"),
        (lambda: nn.Sequential(nn.Identity()), r"no nn.Linear"),
        (lambda: nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 3)), r"disagrees with the parts"),
    ],
)
def test_unsupported_layers_raise_clearly(make, match):
    with pytest.raises(ValueError, match=match):
        hf.HybridField(nn=make(), n_states=2)


def test_subclass_and_custom_module_rejected():
    class MyLinear(nn.Linear):
        pass

    with pytest.raises(ValueError, match="subclass of nn.Linear"):
        hf.MaskedMLP.from_sequential(nn.Sequential(MyLinear(2, 2)))

    class Net(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ValueError, match="MaskedMLP or a torch.nn.Sequential"):
        hf.HybridField(nn=Net())


def test_mixed_activation_masked_mlp_matches_reference_spec(seed):
    """Per-layer activations (what a Sequential with different activations becomes) in the
    FieldSpec: the reference spec evaluation equals the module."""
    from hnode_fast.reference.spec_eval import eval_spec

    mlp = hf.MaskedMLP(4, 4, hidden=(6, 5, 3), activation=("relu", "sigmoid", "identity")).double()
    field = hf.HybridField(nn=mlp)
    z = torch.randn(7, 4, dtype=f64)
    torch.testing.assert_close(eval_spec(field.compile(), z, None), mlp(z), rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="one name per hidden layer"):
        hf.MaskedMLP(2, 2, hidden=(3, 3), activation=("tanh",))
    with pytest.raises(ValueError, match="activation must be one of"):
        hf.MaskedMLP(2, 2, hidden=(3,), activation=("gelu",))


@pytest.mark.skipif(not HAS_CUDA_BACKEND, reason="needs a CUDA GPU and the cuda backend (the cpu paths above run the same core)")
def test_cuda_matches_reference():
    seq = nn.Sequential(nn.Linear(3, 9), nn.Sigmoid(), nn.Linear(9, 3)).double()
    field = hf.HybridField(nn=seq)
    y0 = torch.randn(5, 3, dtype=f64)
    t = torch.linspace(0, 1.0, 5, dtype=f64)
    yr = hf.odeint(field, y0, t, backend="reference")
    seq.zero_grad()
    yr.sum().backward()
    gr = [p.grad.clone() for p in seq.parameters()]
    field.cuda()
    seq.zero_grad()
    yc = hf.odeint(field, y0.cuda(), t.cuda(), backend="cuda")
    yc.sum().backward()
    torch.testing.assert_close(yc.cpu(), yr.detach(), rtol=1e-10, atol=1e-12)
    for p, g in zip(seq.parameters(), gr):
        torch.testing.assert_close(p.grad.cpu(), g, rtol=1e-8, atol=1e-10)
