"""The training recipes of issue 17 other than multiple shooting (tests/test_shooting.py): L0
per-weight gates, closing / freezing gates into masks, the local regularizer's schedule,
samplers and t_reg insertion, fit's progress output (tty or not) and the demo's help texts."""

import io
import math

import pytest
import torch
from test_train import decay_model, synthetic

import hnode_fast as hf
from hnode_fast import sparsity as sp
from hnode_fast._progress import Progress

f64 = torch.float64


def _l0_field(gates, seed=0):
    torch.manual_seed(seed)
    net = hf.MaskedMLP(3, 3, hidden=(6,), activation="elu", gates=gates).double()
    return hf.HybridField(nn=net)


@pytest.mark.parametrize("gates", ["l0", "l0_weight"])
def test_gate_shapes_and_solves_agree_across_backends(gates):
    f = _l0_field(gates)
    for i, layer in enumerate(f.nn.layers):
        want = (layer.in_features,) if gates == "l0" else tuple(layer.weight.shape)
        assert tuple(f.nn.log_alpha[i].shape) == want
    with torch.no_grad():
        f.nn.log_alpha[0].view(-1)[:2] = -10.0  # closed at eval
    f.eval()
    y0 = torch.randn(4, 3, dtype=f64)
    t = torch.linspace(0, 1, 5, dtype=f64)
    ys = [hf.odeint(f, y0, t, rtol=1e-9, atol=1e-11, backend=b) for b in ("reference", "cpu")]
    torch.testing.assert_close(ys[0], ys[1], rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="gates must be"):
        hf.MaskedMLP(2, 2, gates="l1")


@pytest.mark.parametrize("gates", ["l0", "l0_weight"])
def test_prune_and_freeze_gates(gates):
    """Closed gates become masks; frozen gates are exactly 1 in training mode and the network
    computes what the eval-mode gated one did; penalties no longer move them."""
    f = _l0_field(gates)
    mlp = f.nn
    with torch.no_grad():
        mlp.log_alpha[1].view(-1)[:3] = -10.0  # z_eval = 0
        mlp.log_alpha[0].view(-1)[0] = 0.5  # 0 < z_eval < 1
    x = torch.randn(7, 3, dtype=f64)
    mlp.eval()
    before = mlp(x)
    n_closed = 3 if gates == "l0_weight" else 3 * mlp.layers[1].out_features
    assert sp.prune_gates(f) == n_closed
    assert int((~mlp.masks[1]).sum()) == n_closed
    torch.testing.assert_close(mlp(x), before)
    assert sp.freeze_gates(f) == 0  # already pruned
    mlp.train()
    for _ in range(3):
        mlp.resample_gates()
        for i in range(mlp.n_layers):
            assert bool((mlp.gate_values(i) == 1).all())
        torch.testing.assert_close(mlp(x), before, rtol=1e-12, atol=1e-12)
    assert not any(la.requires_grad for la in mlp.log_alpha)
    assert sp.prune_gates(hf.HybridField(nn=hf.MaskedMLP(2, 2).double())) == 0


def test_fit_l0_gates_close_with_gate_lr_and_are_pruned():
    """hf.fit with per-weight gates, a gate learning rate and a strong L0 weight: gates close,
    and the closed ones are masked off at the end (prune_closed_gates)."""
    data = synthetic(n=4)
    torch.manual_seed(0)
    f = hf.HybridField(
        mech=hf.MechanisticGraph(1, [hf.Linear(0, None, 0.1)], param="log", dtype=f64),
        nn=hf.MaskedMLP(1, 1, hidden=(8,), gates="l0_weight").double(),
    )
    n_all = sum(m.numel() for m in f.nn.masks)
    hf.fit(f, data, epochs=60, lr=0.01, gate_lr=0.2, reg={"l0": 0.05}, progress=False, patience=10**9)
    n_live = sum(int(m.sum()) for m in f.nn.masks)
    assert n_live < n_all
    f.nn.eval()
    for i, m in enumerate(f.nn.masks):
        z = f.nn.gate_values(i)
        assert bool((z[m] > 0).all())  # every unmasked weight has an open gate


def test_local_regularizer_schedule_and_validation():
    lr = sp.LocalRegularizer(100.0, 10.0)
    assert lr.weight_at(0, 11) == pytest.approx(100.0)
    assert lr.weight_at(5, 11) == pytest.approx(100.0 * 0.1**0.5)
    assert lr.weight_at(10, 11) == pytest.approx(10.0)
    assert sp.LocalRegularizer(3.0, None).weight_at(7, 11) == 3.0
    with pytest.raises(ValueError, match="sampler"):
        sp.LocalRegularizer(sampler="random")
    with pytest.raises(ValueError, match="weight"):
        sp.LocalRegularizer(weight=-1.0)


def test_with_t_reg_inserts_and_keeps_grid_increasing():
    t = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.5, 3.0]], dtype=f64)
    t_reg = torch.tensor([1.5, 0.0], dtype=f64)  # row 1 clashes with t0
    grid, pos = sp.with_t_reg(t, t_reg)
    assert bool((grid[:, 1:] > grid[:, :-1]).all())
    torch.testing.assert_close(grid.gather(1, pos[:, :3]), t)
    assert float(grid[0, pos[0, 3]]) == 1.5 and 0.0 < float(grid[1, pos[1, 3]]) < 1e-6
    grid, pos = sp.with_t_reg(t, torch.tensor([2.0, 3.0], dtype=f64))  # clash with the last time
    assert bool((grid[:, 1:] > grid[:, :-1]).all()) and bool((grid[:, -1] == t[:, -1]).all())


@pytest.mark.parametrize("sampler,stiffness", [("uniform", False), ("steps", True)])
def test_fit_local_regularizer_lowers_the_error_estimate(sampler, stiffness):
    """A strong decayed local weight makes the trained field easier to integrate than none:
    the mean error estimate at sampled states falls (both samplers; with stiffness)."""
    data = synthetic(n=4)

    def model():
        torch.manual_seed(1)
        return hf.HybridField(
            mech=hf.MechanisticGraph(1, [hf.Linear(0, None, 0.2)], param="log", dtype=f64),
            nn=hf.MaskedMLP(1, 1, hidden=(8,), activation="tanh").double(),
        )

    f0, f1 = model(), model()
    hf.fit(f0, data, epochs=25, lr=0.02, progress=False, rtol=1e-4, atol=1e-6)
    loc = sp.LocalRegularizer(50.0, 5.0, sampler=sampler, stiffness=stiffness)
    r = hf.fit(f1, data, epochs=25, lr=0.02, progress=False, rtol=1e-4, atol=1e-6, local=loc, seed=3)
    assert all(math.isfinite(h["loss"]) for h in r.history)
    y = torch.linspace(0.1, 5.0, 16, dtype=f64)[:, None]
    t = torch.zeros(16, dtype=f64)
    with torch.no_grad():
        e0 = float(sp.local_error(f0, y, t, 1e-4, 1e-6))
        e1 = float(sp.local_error(f1, y, t, 1e-4, 1e-6))
    assert e1 < e0
    with pytest.raises(ValueError, match="either"):
        hf.fit(model(), data, epochs=1, progress=False, reg={"local": 1.0}, local=loc)


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self._tty = tty

    def isatty(self):
        return self._tty


def test_progress_one_line_per_epoch_when_not_a_tty():
    s = _Stream(tty=False)
    p = Progress(True, 3, "fit", stream=s)
    for e in range(3):
        p.update({"epoch": e, "loss": 1.0 / (e + 1), "val": 0.5, "sparsity": 0.0, "nfe": 20.0})
    p.close()
    lines = s.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in s.getvalue()
    assert lines[0].startswith("fit: epoch 1/3 loss=1 ") and lines[2].startswith("fit: epoch 3/3")
    s2 = _Stream(tty=True)
    p = Progress(True, 3, "fit", stream=s2)
    assert p.bar is not None
    p.update({"epoch": 0, "loss": 1.0, "val": 0.5, "sparsity": 0.0, "nfe": 20.0})
    p.close()
    assert "fit" in s2.getvalue() and "epoch 1/3" not in s2.getvalue()
    s3 = _Stream(tty=False)
    Progress(False, 3, "fit", stream=s3).update({"epoch": 0, "loss": 1.0, "val": 0.5, "sparsity": 0.0, "nfe": 20.0})
    assert s3.getvalue() == ""


def test_fit_progress_goes_to_stderr_as_lines(capsys):
    hf.fit(decay_model(), synthetic(n=2), epochs=3, progress=True, desc="tiny")
    err = capsys.readouterr().err  # pytest's captured stderr is not a tty
    assert [ln.split(" loss=")[0] for ln in err.splitlines() if ln.startswith("tiny")] == [f"tiny: epoch {e}/3" for e in (1, 2, 3)]


def test_demo_help_documents_every_option(capsys):
    from hnode_fast.demo import build_parser, main

    opts = {a.option_strings[-1]: a.help for a in build_parser()._actions}
    assert {"--quick", "--json", "--seed", "--folds", "--plot", "--backend", "--no-progress"} <= set(opts)
    for opt, text in opts.items():
        assert text and len(text.split()) >= 3, f"{opt} has no help text"
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "auto, reference, cpu" in out and "one line per epoch" in out


def test_fit_docstring_names_every_argument():
    import inspect

    doc = hf.fit.__doc__
    for name in inspect.signature(hf.fit).parameters:
        assert f"{name}:" in doc or f"{name}," in doc, name
    assert "REGULARIZERS" not in doc and "Returns:" in doc
