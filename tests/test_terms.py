"""Mechanistic terms: self-loops of consuming terms are refused, consume=False growth / decay /
autocatalysis solves to the textbook answer, and describe() prints the equations the graph
(or hybrid field) actually computes."""

import math
import re

import pytest
import torch
from conftest import random_field

import hnode_fast as hf

f64 = torch.float64

# ---------------------------------------------------------------------------------------------
# self-loops of consuming terms

# (constructor, the flux f(z) it would add to dst, dst, sources it would consume)
CANCELLING = [
    (lambda: hf.Linear(0, 0, 1.5), lambda z: 1.5 * z[:, 0], 0, (0,)),
    (lambda: hf.Linear(2, 2, 0.3), lambda z: 0.3 * z[:, 2], 2, (2,)),
    (lambda: hf.MassAction((0, 0), 0, 1.0), lambda z: 1.0 * z[:, 0] ** 2, 0, (0, 0)),
    (lambda: hf.MassAction((1, 1), 1, 0.7), lambda z: 0.7 * z[:, 1] ** 2, 1, (1, 1)),
    (lambda: hf.MassAction((0, 1), 0, 0.5), lambda z: 0.5 * z[:, 0] * z[:, 1], 0, (0, 1)),
    (lambda: hf.MassAction((0, 1), 1, 0.5), lambda z: 0.5 * z[:, 0] * z[:, 1], 1, (0, 1)),
    (lambda: hf.MassAction((2, 0), 2, 0.4), lambda z: 0.4 * z[:, 2] * z[:, 0], 2, (2, 0)),
    (lambda: hf.MassAction([1, 2], 2, 0.4), lambda z: 0.4 * z[:, 1] * z[:, 2], 2, (1, 2)),
    (lambda: hf.MichaelisMenten(1, 1, 1.1, 0.6), lambda z: 1.1 * z[:, 1] / (0.6 + z[:, 1]), 1, (1,)),
]


@pytest.mark.parametrize("make,flux,dst,srcs", CANCELLING)
def test_consuming_self_loop_raises(make, flux, dst, srcs):
    with pytest.raises(ValueError, match="two readings") as err:
        make()
    msg = str(err.value)
    assert f"dst {dst} is also a consumed source" in msg
    assert "Pass consume=False for growth / decay / autocatalytic terms" in msg


def _suggestions(msg: str):
    """The ``hf.X(...)`` replacements an error message proposes (the first is its own repr)."""
    return re.findall(r"hf\.(?:Linear|MassAction|MichaelisMenten)\([^()]*(?:\([^()]*\)[^()]*)*\)", msg)


@pytest.mark.parametrize("make,flux,dst,srcs", CANCELLING)
def test_self_loop_message_suggestions_compute_both_readings(make, flux, dst, srcs, seed):
    """The message's consume=False fix computes dz[dst] += f (the growth reading); its
    'net effect' rewrite, where it gives one, computes what the conversion would have (+f at
    dst, -f once per source)."""
    with pytest.raises(ValueError) as err:
        make()
    msg = str(err.value)
    z = torch.rand(5, 3, dtype=f64) + 0.1
    f = flux(z)
    growth = torch.zeros_like(z)
    growth[:, dst] += f
    conversion = growth.clone()
    for s in srcs:
        conversion[:, s] -= f
    fixes = [s for s in _suggestions(msg) if "consume=False" in s]
    assert fixes, msg
    for i, code in enumerate(fixes):
        term = eval(code, {"hf": hf})
        out = hf.MechanisticGraph(3, [term], dtype=f64)(z)
        want = growth if i == 0 else conversion
        torch.testing.assert_close(out, want, rtol=1e-14, atol=1e-14)
    # Linear / MichaelisMenten: the conversion is zero, there is nothing to rewrite
    assert len(fixes) == (2 if "MassAction" in msg else 1)
    if len(fixes) == 1:
        assert torch.all(conversion == 0)
        assert "it is zero" in msg


def test_self_loop_message_text():
    with pytest.raises(ValueError) as err:
        hf.Linear(0, 0, 1.5)
    assert str(err.value) == (
        "hf.Linear(src=0, dst=0, rate=1.5): dst 0 is also a consumed source (consume=True), which has two readings. "
        "As a conversion (the flux f = 1.5*z0 is added to dz0/dt and subtracted from its source) it is zero, the reaction "
        "z0 -> z0: the term does nothing. As growth / autocatalysis (dz0/dt += f, sources not used up) it needs consume=False. "
        "Pass consume=False for growth / decay / autocatalytic terms: hf.Linear(0, 0, 1.5, consume=False) (a negative rate, "
        "param='raw', decays). Elimination (dz0/dt -= f) is hf.Linear(0, None, rate); a conversion needs a dst other than its source."
    )
    with pytest.raises(ValueError, match=r"nets dz0/dt = -f, the reaction 2 z0 -> z0: the opposite sign"):
        hf.MassAction((0, 0), 0, 1.0)
    with pytest.raises(ValueError, match=r"nets 0 at z1 and dz0/dt -= f"):
        hf.MassAction((0, 1), 1, 1.0)


def test_graph_rejects_a_self_loop_record_built_around_the_check():
    """A record that skipped __init__ (e.g. unpickled from an older version) is caught by the graph."""
    t = hf.Linear(0, 1, 0.5)
    object.__setattr__(t, "dst", 0)
    with pytest.raises(ValueError, match=r"terms\[1\]: hf.Linear\(src=0, dst=0"):
        hf.MechanisticGraph(2, [hf.Constant(0, 1.0), t])


@pytest.mark.parametrize(
    "make",
    [
        lambda: hf.Linear(0, 0, 1.5, consume=False),
        lambda: hf.Linear(0, None, 1.5),
        lambda: hf.Linear(0, 1, 1.5),
        lambda: hf.MassAction((0, 0), 0, 1.0, consume=False),
        lambda: hf.MassAction((0, 1), 1, 1.0, consume=False),
        lambda: hf.MassAction((0, 0), None, 1.0),
        lambda: hf.MassAction((0, 0), 1, 1.0),
        lambda: hf.MichaelisMenten(1, 1, 1.0, 0.5, consume=False),
        lambda: hf.Hill(0, 0, 1.0, 0.5, 2.0),  # self-regulation: Hill never consumes
        lambda: hf.Hill(1, 1, 1.0, 0.5, 2.0, repress=True),
    ],
)
def test_non_cancelling_forms_build(make):
    hf.MechanisticGraph(2, [make()], dtype=f64)


def test_library_problems_build():
    """The library's own models (demo, benchmarks) use no refused form."""
    from hnode_fast import demo, problems

    demo.one_compartment()
    for make in (problems.lotka_volterra, problems.pk_hybrid, problems.vdp):
        make()


# ---------------------------------------------------------------------------------------------
# consume=False forms solve to the textbook answer


def _solve(mech, y0, t, backend):
    with torch.no_grad():
        return hf.odeint(hf.HybridField(mech=mech), y0, t, rtol=1e-10, atol=1e-12, backend=backend)


def test_autocatalysis_y_squared(backend):
    """dy/dt = k y^2: y = y0 / (1 - k y0 t) (blows up at 1 / (k y0); solved to 80% of that)."""
    k = 1.3
    mech = hf.MechanisticGraph(1, [hf.MassAction((0, 0), 0, k, consume=False)], dtype=f64)
    y0 = torch.tensor([[0.5], [0.2], [1.0]], dtype=f64)
    t = torch.linspace(0, 0.8 / (k * 1.0), 9, dtype=f64)
    y = _solve(mech, y0, t, backend)[..., 0]
    want = y0[:, 0] / (1 - k * y0[:, 0] * t[:, None])
    torch.testing.assert_close(y, want, rtol=1e-8, atol=1e-12)
    assert bool((y[-1] > y0[:, 0]).all())  # grows: the refused consume=True form would decay


@pytest.mark.parametrize("param,rate", [("raw", 0.7), ("log", 0.7), ("raw", -0.9)])
def test_exponential_growth_and_decay(backend, param, rate):
    """dy/dt = a y (a < 0: decay): y = y0 exp(a t)."""
    mech = hf.MechanisticGraph(1, [hf.Linear(0, 0, rate, consume=False)], param=param, dtype=f64)
    y0 = torch.tensor([[1.0], [2.5]], dtype=f64)
    t = torch.linspace(0, 3, 7, dtype=f64)
    y = _solve(mech, y0, t, backend)[..., 0]
    torch.testing.assert_close(y, y0[:, 0] * torch.exp(rate * t[:, None]), rtol=1e-8, atol=1e-12)


def test_lotka_volterra_invariant(backend):
    """x' = a x - b x y, y' = d x y - g y conserves V = d x - g log x + b y - a log y."""
    a, b, d, g = 1.5, 1.0, 1.0, 3.0
    mech = hf.MechanisticGraph(
        2,
        [
            hf.Linear(0, 0, a, consume=False),
            hf.MassAction((0, 1), 0, -b, consume=False),
            hf.MassAction((0, 1), 1, d, consume=False),
            hf.Linear(1, None, g),
        ],
        dtype=f64,
    )
    y = _solve(mech, torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=f64), torch.linspace(0, 10, 30, dtype=f64), backend)
    x, p = y[..., 0], y[..., 1]
    V = d * x - g * torch.log(x) + b * p - a * torch.log(p)
    assert float((V - V[0]).abs().max()) < 1e-8
    assert float((x.max(0).values - x.min(0).values).min()) > 0.5  # it oscillates


# ---------------------------------------------------------------------------------------------
# describe()


def _lv():
    return hf.MechanisticGraph(
        2,
        [
            hf.Linear(0, 0, 1.5, consume=False),
            hf.MassAction((0, 1), 0, -1.0, consume=False),
            hf.MassAction((0, 1), 1, 1.0, consume=False),
            hf.Linear(1, None, 3.0),
        ],
        dtype=f64,
    )


def test_describe_lotka_volterra():
    assert _lv().describe() == (
        "MechanisticGraph: 2 states, 4 terms, param='raw'\n  dz0/dt = +1.5*z0 - 1.0*z0*z1\n  dz1/dt = +1.0*z0*z1 - 3.0*z1"
    )


def _all_kinds(param="raw", dtype=f64):
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
        hf.MassAction((2, 2), None, 0.25),
        hf.MichaelisMenten(3, 3, 0.35, 0.45, consume=False),
    ]
    return hf.MechanisticGraph(4, terms, n_inputs=2, param=param, learn_gates=True, dtype=dtype)


def test_describe_every_term_kind_gates_masks_and_log_values():
    g = _all_kinds(param="log", dtype=torch.float32)  # values shown are exp(stored), rounded to 6 digits
    with torch.no_grad():
        g.gates[1] = 0.5
    g.set_term_mask([True] * 9 + [False, True])
    assert g.describe() == "\n".join(
        [
            "MechanisticGraph: 4 states, 11 terms, 2 inputs, param='log' (values: exp of the stored logs)",
            "  dz0/dt = +0.7 + 0.5*z2 - 0.3*z0*z1 + 2.0*u1(t)",
            "  dz1/dt = -0.2*z1 - 0.3*z0*z1 + 1.1*z2/(0.6 + z2)",
            "  dz2/dt = +0.2*z1 - 1.1*z2/(0.6 + z2) + 0.8/(1 + (z1/0.4)^1.7)",
            "  dz3/dt = -0.2*z3 + 0.3*z0*z1 + 0.9*(z0/0.5)^2.5/(1 + (z0/0.5)^2.5) + 0.35*z3/(0.45 + z3)",
            "  masked out (term_mask False, not computed): terms[9] MassAction(z2 + z2 -> out, rate=0.25)",
            "  learnable gates (multiplied into each term's first parameter, included above): terms[1] 0.5",
            "  Hill terms read max(z, 0) for their regulator",
        ]
    )


def test_describe_signs_of_raw_rates_and_double_consumption():
    g = hf.MechanisticGraph(
        2,
        [hf.Linear(0, 0, -3.0, consume=False), hf.Linear(0, 1, -2.0), hf.MassAction((1, 1), None, 0.25)],
        state_names=["a", "b"],
        dtype=f64,
    )
    assert g.describe().splitlines()[1:] == ["  da/dt = -3.0*a + 2.0*a", "  db/dt = -2.0*a - 0.5*b^2"]


def test_describe_shows_current_values_and_digits():
    g = hf.MechanisticGraph(1, [hf.Linear(0, None, 0.25)], param="log", dtype=f64)
    with torch.no_grad():
        g.params.fill_(math.log(1.0 / 3.0))
    assert g.describe().splitlines()[1] == "  dz0/dt = -0.333333*z0"
    assert g.describe(digits=3).splitlines()[1] == "  dz0/dt = -0.333*z0"
    g.set_term_mask([False])
    assert g.describe().splitlines()[1] == "  dz0/dt = 0"


def _eval_describe(text: str, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Evaluate the equations of a describe() text at states ``z`` (B, D) and inputs ``u`` (B, K)."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^  dz(\d+)/dt\s+= (.*)$", line)
        if m:
            rows[int(m.group(1))] = m.group(2).replace("^", "**")
    names = {f"z{i}": z[:, i] for i in range(z.shape[1])}
    names.update({f"u{k}": (lambda v: lambda t: v)(u[:, k]) for k in range(u.shape[1])})
    names["t"] = None
    out = torch.zeros_like(z)
    for i, expr in rows.items():
        out[:, i] = eval(expr, {"__builtins__": {}}, names)
    return out


@pytest.mark.parametrize("param", ["raw", "log"])
def test_describe_equations_evaluate_to_forward(param, seed):
    """The printed equations, evaluated as Python, give the graph's own forward (to the printed
    precision): random gates, a random term mask, every kind."""
    g = _all_kinds(param=param)
    with torch.no_grad():
        g.gates.uniform_(0.2, 1.5)
    g.set_term_mask(torch.rand(g.n_terms) < 0.7)
    z = torch.rand(6, 4, dtype=f64) + 0.05
    u = torch.rand(6, 2, dtype=f64)
    got = _eval_describe(g.describe(digits=17), z, u)
    torch.testing.assert_close(got, g(z, u), rtol=1e-12, atol=1e-12)


def test_describe_random_fields_evaluate_to_forward(seed):
    f = random_field(D=5, n_inputs=2, nn=False)
    z = torch.rand(4, 5, dtype=f64) + 0.05
    u = torch.rand(4, 2, dtype=f64)
    torch.testing.assert_close(_eval_describe(f.mech.describe(digits=17), z, u), f.mech(z, u), rtol=1e-12, atol=1e-12)


def test_repr_shows_equations():
    r = repr(_lv())
    assert "n_states=2, n_inputs=0, n_terms=4, param='raw'" in r
    assert "dz0/dt = +1.5*z0 - 1.0*z0*z1" in r and "dz1/dt = +1.0*z0*z1 - 3.0*z1" in r


def _pk():
    terms = [hf.Linear(0, 1, 1.5), hf.Linear(1, None, 0.08)]
    return hf.MechanisticGraph(2, terms, param="log", state_names=["depot", "central"], dtype=f64)


def test_hybrid_describe_masks_reads_feeds_and_constants():
    net = hf.MaskedMLP(2, 2, hidden=(8,)).double()
    field = hf.HybridField(mech=_pk(), nn=net)
    assert field.describe().splitlines()[1:3] == [
        "  ddepot/dt   = -1.5*depot + nn[0](depot, central)",
        "  dcentral/dt = +1.5*depot - 0.08*central + nn[1](depot, central)",
    ]
    net.set_mask(0, torch.tensor([[False, True]] * 8))
    net.set_mask(1, torch.tensor([[False] * 8, [True] * 8]))
    with torch.no_grad():
        net.layers[1].bias[0] = 0.25
    text = field.describe()
    assert text.splitlines()[1:3] == [
        "  ddepot/dt   = -1.5*depot + nn[0]()",
        "  dcentral/dt = +1.5*depot - 0.08*central + nn[1](central)",
    ]
    assert "16 of 32 weights unmasked; reads [central], feeds [depot, central]" in text
    assert "nn[0]() = 0.25" in text
    with torch.no_grad():
        net.layers[1].bias[0] = 0.0
    text = field.describe()
    assert "  ddepot/dt   = -1.5*depot\n" in text and "feeds [central]" in text and "nn[0]()" not in text
    assert "nn reads [central] and feeds [central] (by its masks)" in repr(field)
    assert "dcentral/dt = +1.5*depot - 0.08*central" in repr(field)  # the mech's own repr


def test_hybrid_describe_reads_match_the_jacobian(seed):
    """nn[i](...) lists exactly the features output i depends on (random masks, random weights:
    a path of unmasked weights gives a non-zero derivative)."""
    D, K = 4, 2
    net = hf.MaskedMLP(D + K, D, hidden=(5, 6), activation="tanh").double()
    for i, layer in enumerate(net.layers):
        net.set_mask(i, torch.rand(layer.weight.shape) < 0.35)
    mech = hf.MechanisticGraph(D, [hf.Input(0, 0, 1.0)], n_inputs=K, dtype=f64)
    field = hf.HybridField(mech=mech, nn=net)
    x = torch.randn(D + K, dtype=f64)
    J = torch.autograd.functional.jacobian(lambda v: net(v[None])[0], x)
    feats = [f"z{i}" for i in range(D)] + [f"u{k}(t)" for k in range(K)]
    lines = field.describe().splitlines()[1 : 1 + D]
    for i, line in enumerate(lines):
        head = f"nn[{i}]("
        args = line.split(head, 1)[1][:-1] if head in line else ""  # the network's piece ends the line
        listed = set(args.split(", ")) - {""}
        want = {feats[j] for j in range(D + K) if J[i, j] != 0}
        assert listed == want, (line, want)


def test_hybrid_describe_without_mech_and_without_nn():
    f = hf.HybridField(nn=hf.MaskedMLP(3, 2, hidden=(4,)), n_inputs=1, n_states=2)
    text = f.describe()
    assert text.splitlines()[0] == "HybridField: 2 states, 1 input, dz/dt = nn([z, u])"
    assert "  dz0/dt = +nn[0](z0, z1, u0(t))" in text
    net = hf.MaskedMLP(2, 2, hidden=(4,))
    net.set_mask(1, torch.zeros(2, 4, dtype=torch.bool))  # nothing reaches an output...
    with torch.no_grad():
        net.layers[1].bias.zero_()  # ...and the outputs' biases are 0: the network adds nothing
    text = hf.HybridField(nn=net).describe()
    assert text.splitlines()[1:3] == ["  dz0/dt = 0", "  dz1/dt = 0"] and "reads nothing, feeds nothing" in text
    g = hf.HybridField(mech=_lv())
    assert g.describe().splitlines()[:3] == [
        "HybridField: 2 states, dz/dt = mech(z)",
        "  dz0/dt = +1.5*z0 - 1.0*z0*z1",
        "  dz1/dt = +1.0*z0*z1 - 3.0*z1",
    ]


def test_mass_action_needs_two_sources_and_singular_headers():
    with pytest.raises(ValueError, match="two source states"):
        hf.MechanisticGraph(2, [hf.MassAction((0,), 1, 1.0)])
    g = hf.MechanisticGraph(1, [hf.MassAction((0, 0), 0, 2.0, consume=False)], n_inputs=1, dtype=f64)
    assert g.describe() == "MechanisticGraph: 1 state, 1 term, 1 input, param='raw'\n  dz0/dt = +2.0*z0^2"
