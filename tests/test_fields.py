"""Fields: masks, term formulas, and FieldSpec evaluation == module evaluation."""

import math

import pytest
import torch
from conftest import random_field

import hnode_fast as hf
from hnode_fast.fields.spec import FMT_CSR
from hnode_fast.reference import eval_spec

f64 = torch.float64


def test_masked_weights_get_zero_grad(seed):
    mlp = hf.MaskedMLP(5, 4, hidden=(7,), activation="silu").double()
    m0 = torch.rand(7, 5) < 0.5
    mlp.set_mask(0, m0)
    x = torch.randn(3, 5, dtype=f64)
    mlp(x).pow(2).sum().backward()
    g = mlp.layers[0].weight.grad
    assert torch.all(g[~m0] == 0)
    assert g[m0].abs().sum() > 0


def test_mask_equals_zeroed_weights(seed):
    mlp = hf.MaskedMLP(4, 3, hidden=(6, 5), activation="elu").double()
    x = torch.randn(9, 4, dtype=f64)
    masks = [torch.rand(l.weight.shape) < 0.6 for l in mlp.layers]
    for i, m in enumerate(masks):
        mlp.set_mask(i, m)
    y = mlp(x)
    with torch.no_grad():
        for l, m in zip(mlp.layers, masks):
            l.weight.mul_(m)
    mlp2 = hf.MaskedMLP(4, 3, hidden=(6, 5), activation="elu").double()
    mlp2.load_state_dict({k: v for k, v in mlp.state_dict().items() if not k.startswith("mask_")}, strict=False)
    torch.testing.assert_close(y, mlp2(x), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("act", sorted(hf.ACTIVATIONS))
def test_activations(act, seed):
    mlp = hf.MaskedMLP(3, 2, hidden=(4,), activation=act).double()
    x = torch.randn(5, 3, dtype=f64)
    h = x @ mlp.layers[0].weight.T + mlp.layers[0].bias
    ref = {
        "identity": h,
        "tanh": torch.tanh(h),
        "relu": torch.relu(h),
        "elu": torch.nn.functional.elu(h),
        "softplus": torch.log1p(torch.exp(h)),
        "silu": h * torch.sigmoid(h),
        "sigmoid": 1 / (1 + torch.exp(-h)),
    }[act]
    torch.testing.assert_close(mlp(x), ref @ mlp.layers[1].weight.T + mlp.layers[1].bias, rtol=1e-13, atol=1e-13)


def test_set_mask_validation():
    mlp = hf.MaskedMLP(3, 2, hidden=(4,))
    with pytest.raises(ValueError, match="shape"):
        mlp.set_mask(0, torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="layer index"):
        mlp.set_mask(5, torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="activation"):
        hf.MaskedMLP(3, 2, activation="gelu2")


def test_term_formulas(seed):
    z = torch.rand(6, 4, dtype=f64) + 0.1
    u = torch.rand(6, 2, dtype=f64)
    terms = [
        hf.Constant(0, 0.7),
        hf.Linear(1, 2, 0.4),
        hf.Linear(3, None, 0.2),
        hf.Linear(2, 0, 0.5, consume=False),
        hf.MassAction((0, 1), 3, 0.3),
        hf.MichaelisMenten(2, 1, 1.1, 0.6),
        hf.Hill(0, 3, 0.9, 0.5, 2.5),
        hf.Hill(1, 2, 0.8, 0.4, 1.7, repress=True),
        hf.Input(1, 0, 2.0),
    ]
    g = hf.MechanisticGraph(4, terms, n_inputs=2, dtype=f64)
    a, b, c, d = z.unbind(1)
    dz = torch.zeros_like(z)
    dz[:, 0] += 0.7
    dz[:, 1] -= 0.4 * b
    dz[:, 2] += 0.4 * b
    dz[:, 3] -= 0.2 * d
    dz[:, 0] += 0.5 * c
    f = 0.3 * a * b
    dz[:, 0] -= f
    dz[:, 1] -= f
    dz[:, 3] += f
    f = 1.1 * c / (0.6 + c)
    dz[:, 2] -= f
    dz[:, 1] += f
    r = (a / 0.5) ** 2.5
    dz[:, 3] += 0.9 * r / (1 + r)
    r = (b / 0.4) ** 1.7
    dz[:, 2] += 0.8 / (1 + r)
    dz[:, 0] += 2.0 * u[:, 1]
    torch.testing.assert_close(g(z, u), dz, rtol=1e-13, atol=1e-13)


def test_log_parametrisation_and_gates():
    g = hf.MechanisticGraph(2, [hf.Linear(0, 1, 0.5), hf.Linear(1, None, 0.25)], param="log", learn_gates=True, dtype=f64)
    torch.testing.assert_close(g.term_params(0), torch.tensor([0.5], dtype=f64))
    z = torch.tensor([[2.0, 1.0]], dtype=f64)
    with torch.no_grad():
        g.gates[1] = 0.0
    torch.testing.assert_close(g(z), torch.tensor([[-1.0, 1.0]], dtype=f64))
    with pytest.raises(ValueError, match="> 0"):
        hf.MechanisticGraph(1, [hf.Linear(0, None, -1.0)], param="log")


@pytest.mark.parametrize(
    "bad",
    [
        lambda: hf.MechanisticGraph(2, [hf.Linear(2, 0, 1.0)]),
        lambda: hf.MechanisticGraph(2, [hf.Linear(0, 5, 1.0)]),
        lambda: hf.MechanisticGraph(2, [hf.Input(0, 0, 1.0)]),
        lambda: hf.MechanisticGraph(2, [hf.Linear(0, 1, float("nan"))]),
        lambda: hf.MechanisticGraph(2, ["x"]),
        lambda: hf.HybridField(mech=hf.MechanisticGraph(2), nn=hf.MaskedMLP(3, 3)),
        lambda: hf.HybridField(mech=hf.MechanisticGraph(2), nn=hf.MaskedMLP(2, 3)),
    ],
)
def test_bad_field_construction(bad):
    with pytest.raises(ValueError):
        bad()


@pytest.mark.parametrize(
    "D,hidden,density,csr",
    [
        (1, (5,), None, 0.25),
        (3, (8, 8), 0.5, 0.25),
        (17, (13, 9), 0.15, 0.25),
        (4, (6, 6), 0.3, 1.01),
        (3, (), None, 0.25),
        (5, (7, 7, 7), 0.35, 0.5),
    ],
)
@pytest.mark.parametrize("act", ["tanh", "softplus", "relu"])
def test_spec_eval_equals_module(D, hidden, density, csr, act, seed):
    f = random_field(D=D, hidden=hidden, activation=act, mask_density=density, n_inputs=2, nn_inputs=True)
    z = torch.randn(7, D, dtype=f64)
    u = torch.randn(7, 2, dtype=f64)
    spec = f.compile(csr_threshold=csr)
    torch.testing.assert_close(eval_spec(spec, z, u), f.eval_u(z, u), rtol=1e-13, atol=1e-13)
    if csr == 1.0 and spec.n_layers:
        assert (spec.layer_rows()[:, 2] == FMT_CSR).all()


def test_spec_compaction_fully_masked_layer(seed):
    """A fully masked hidden layer makes the network a constant: only the const vector remains."""
    f = random_field(D=3, hidden=(6, 6), mech=False)
    f.nn.set_mask(1, torch.zeros(6, 6, dtype=torch.bool))
    spec = f.compile()
    assert spec.n_layers == 0
    z = torch.randn(4, 3, dtype=f64)
    torch.testing.assert_close(eval_spec(spec, z), f(0.0, z), rtol=1e-14, atol=1e-14)
    # gradient still reaches the biases that define the constant
    g = torch.autograd.grad(eval_spec(f.compile(), z).sum(), f.nn.layers[2].bias)[0]
    assert torch.all(g == 4)


def test_spec_compaction_drops_dead_units(seed):
    f = random_field(D=4, hidden=(10,), mech=False)
    m0 = torch.ones(10, 4, dtype=torch.bool)
    m0[7:] = False  # units 7..9 read nothing: constants folded into the output bias
    m0[:, 2] = False  # feature 2 read by nobody
    m1 = torch.ones(4, 10, dtype=torch.bool)
    m1[:, 5] = False  # unit 5 feeds nothing: dropped
    f.nn.set_mask(0, m0)
    f.nn.set_mask(1, m1)
    spec = f.compile()
    rows = spec.layer_rows().tolist()
    assert rows[0][:2] == [3, 6] and rows[1][:2] == [6, 4]
    assert spec.in_idx().tolist() == [0, 1, 3]
    z = torch.randn(5, 4, dtype=f64)
    torch.testing.assert_close(eval_spec(spec, z), f(0.0, z), rtol=1e-14, atol=1e-14)


# (mask density, csr_threshold, extra): every way gather_params reads a layer's weights --
# the raw weight (dense block with no masked entry, or CSR) or W * M (masked dense block, and
# always with L0 gates or HGS edge weights on layer 0)
GATHER_CASES = {
    "dense_unmasked": (None, 0.25, None),
    "dense_masked": (0.6, 0.25, None),
    "csr": (0.6, 1.0, None),
    "mixed_edges": (0.6, 0.7, "edges"),
    "gates": (0.6, 1.0, "gates"),
}


@pytest.mark.parametrize("case", list(GATHER_CASES))
def test_spec_gradients_match_module(case, seed):
    density, csr, extra = GATHER_CASES[case]
    f = random_field(D=3, hidden=(5, 4), mask_density=density)
    if extra == "edges":
        f.nn.add_edge_weights(torch.randint(0, 3, (5,)))
        with torch.no_grad():
            f.nn.edge_weights.uniform_(0.5, 1.5)
    if extra == "gates":
        f = hf.HybridField(mech=f.mech, nn=hf.MaskedMLP(3, 3, hidden=(5, 4), gates="l0").double().eval(), n_states=3)
        for i, layer in enumerate(f.nn.layers):
            f.nn.set_mask(i, torch.rand(layer.weight.shape) < 0.6)
    z = torch.randn(6, 3, dtype=f64)
    params = [p for p in f.parameters() if p.requires_grad]
    spec = f.compile(csr_threshold=csr)
    if extra is None:
        from hnode_fast.fields.spec import spec_structure

        st = spec_structure(f.mech, f.nn, 3, 0, False, csr)
        raws = [lp.raw for lp in st.layers]
        # the case exercises the path it is named for
        assert all(raws) if case != "dense_masked" else not all(raws)
    g1 = torch.autograd.grad(eval_spec(spec, z).pow(2).sum(), params, allow_unused=True)
    g2 = torch.autograd.grad(f(0.0, z).pow(2).sum(), params, allow_unused=True)
    for a, b in zip(g1, g2):
        a = torch.zeros_like(b) if a is None else a
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_l0_gates_eval_deterministic():
    mlp = hf.MaskedMLP(3, 2, hidden=(4,), gates="l0").double().eval()
    g = mlp.gate_values(0)
    la = mlp.log_alpha[0].detach()
    ref = torch.clamp(torch.sigmoid(la) * 1.2 - 0.1, 0, 1)
    torch.testing.assert_close(g, ref)
    exp = sum((1 - torch.sigmoid(2 / 3 * math.log(0.1 / 1.1) - l)).sum() for l in mlp.log_alpha)
    torch.testing.assert_close(mlp.l0_penalty(), exp)
