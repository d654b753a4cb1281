"""The random hybrid fields of the test suite (one generator, imported by tests/conftest.py and
tests/triton/tt_helpers.py; a plain module because the two conftest.py files cannot import each
other)."""

import torch

import hnode_fast as hf

# Hill exponents of random_field's two Hill terms. SMOOTH_HILL (the default) keeps the Jacobian
# Lipschitz; ROUGH_HILL's 1.5 makes d2f/dz2 ~ z**-0.5 where a state crosses 0.
SMOOTH_HILL = (2.0, 3.0)
ROUGH_HILL = (2.0, 1.5)


def random_field(
    D=3,
    hidden=(8, 8),
    activation="tanh",
    n_inputs=0,
    mech=True,
    nn=True,
    dtype=torch.float64,
    mask_density=None,
    nn_inputs=False,
    scale=0.5,
    hill_n=SMOOTH_HILL,
    full_terms=True,
):
    """A random hybrid field exercising every term kind (non-stiff, bounded for t <= ~5).

    The Hill terms use ``max(z, 0) ** n``. With ``hill_n=ROUGH_HILL`` (exponent 1.5) the
    Jacobian is not Lipschitz where a state crosses 0 (d2f/dz2 ~ z**-0.5), which the network can
    make happen: there, rounding differences between two correct implementations grow to ~1e-12
    in the solution and ~1e-8 in gradients (CI seed 1177352614). The default, SMOOTH_HILL,
    keeps comparisons at 1e-10 and the continuous adjoint measuring the solver; tests of the
    non-smooth case pass ROUGH_HILL and say what tolerance it needs."""
    terms = []
    if mech:
        for i in range(D):
            terms.append(hf.Linear(i, (i + 1) % D if D > 1 else None, 0.3 + 0.2 * float(torch.rand(()))))
        terms.append(hf.Constant(0, 0.1))
        if full_terms:
            terms.append(hf.MichaelisMenten(D - 1, None, 0.5, 0.7))
            terms.append(hf.Hill(0, D - 1, 0.4, 0.8, hill_n[0]))
            terms.append(hf.Hill(D - 1, 0, 0.3, 0.6, hill_n[1], repress=True))
            terms.append(hf.MassAction((0, D - 1), None, 0.05))
        for k in range(n_inputs):
            terms.append(hf.Input(k, k % D, 0.7))
    m = hf.MechanisticGraph(D, terms, n_inputs=n_inputs, dtype=dtype) if mech else None
    net = None
    if nn:
        net = hf.MaskedMLP(D + (n_inputs if nn_inputs else 0), D, hidden=hidden, activation=activation)
        with torch.no_grad():
            for layer in net.layers:
                layer.weight.mul_(scale)
        if mask_density is not None:
            for i, layer in enumerate(net.layers):
                net.set_mask(i, torch.rand(layer.weight.shape) < mask_density)
    f = hf.HybridField(mech=m, nn=net, n_states=D, n_inputs=n_inputs if (n_inputs and not mech) else None)
    return f.to(dtype)
