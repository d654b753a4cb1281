"""hf.fit on tiny problems: recovers a known rate, masks NaN observations, deterministic,
checkpoints, K-fold selection, local regularizer, bad input."""

import math

import numpy as np
import pytest
import torch

import hnode_fast as hf
from hnode_fast.data import LongitudinalDataset, Subject

f64 = torch.float64


def synthetic(k=0.3, n=5, nan_at=None, seed=0):
    rng = np.random.default_rng(seed)
    subs = []
    for i in range(n):
        times = np.sort(rng.uniform(0.2, 8.0, 6))
        dose = 1.0 + i
        obs = dose * np.exp(-k * times)[:, None]
        if nan_at is not None and i == 0:
            obs[nan_at, 0] = np.nan
        subs.append(Subject(id=str(i), times=times, obs=obs, dose_times=[0.0], dose_amounts=[dose], dose_states=[0]))
    return LongitudinalDataset(subs, ["x"], ["x"])


def decay_model(k0=0.1):
    return hf.HybridField(mech=hf.MechanisticGraph(1, [hf.Linear(0, None, k0)], param="log", dtype=f64))


def test_fit_recovers_rate_with_nan_observations():
    data = synthetic(k=0.3, nan_at=2)
    f = decay_model()
    r = hf.fit(f, data, epochs=300, lr=0.02, patience=300, progress=False)
    assert f.mech.term_params(0).item() == pytest.approx(0.3, rel=2e-3)
    assert r.history[-1]["mse"] < 1e-5 and math.isfinite(r.best_val)
    assert hf.evaluate(f, data, r.observe)["rmse"] < 3e-3


def test_fit_deterministic_and_checkpoint(tmp_path):
    data = synthetic()
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        f = hf.HybridField(
            mech=hf.MechanisticGraph(1, [hf.Linear(0, None, 0.1)], param="log", dtype=f64),
            nn=hf.MaskedMLP(1, 1, hidden=(4,), gates="l0").double(),
        )
        ck = tmp_path / "best.pt"
        r = hf.fit(f, data, epochs=20, lr=0.01, reg={"l1": 1e-3, "l0": 1e-3, "path": 1e-3}, seed=7, progress=False, checkpoint=str(ck))
        outs.append([h["loss"] for h in r.history])
        saved = torch.load(ck)
        assert saved["epoch"] == r.best_epoch and "field" in saved
    assert outs[0] == outs[1]


def test_fit_with_validation_and_local_regularizer():
    data = synthetic(n=6)
    train, val = data.split(n_test=2, seed=0)
    f = hf.HybridField(
        mech=hf.MechanisticGraph(1, [hf.Linear(0, None, 0.2)], param="log", dtype=f64), nn=hf.MaskedMLP(1, 1, hidden=(4,)).double()
    )
    r = hf.fit(f, train, val=val, epochs=10, lr=0.01, reg={"local": 1.0, "l1": 1e-3}, progress=False)
    assert len(r.history) == 10 and all(math.isfinite(h["loss"]) for h in r.history)


def test_select_regularization_kfold():
    data = synthetic(n=6)

    def make():
        torch.manual_seed(0)
        f = hf.HybridField(
            mech=hf.MechanisticGraph(1, [hf.Linear(0, None, 0.2)], param="log", dtype=f64), nn=hf.MaskedMLP(1, 1, hidden=(4,)).double()
        )
        return f, None

    best, scores = hf.select_regularization(make, data, "l1", [1e-4, 1.0], k=2, epochs=5, lr=0.01)
    assert set(scores) == {1e-4, 1.0}
    assert best == min(scores, key=scores.__getitem__)
    # each score is the mean over the k folds (by subject) of fit's best validation loss
    for lam in (1e-4, 1.0):
        vals = []
        for train, val in data.kfold(2, seed=0):
            field, observe = make()
            vals.append(hf.fit(field, train, observe=observe, val=val, reg={"l1": lam}, seed=0, progress=False, epochs=5, lr=0.01).best_val)
        assert math.isfinite(scores[lam]) and scores[lam] == pytest.approx(sum(vals) / 2, rel=1e-12)


def test_prune_retrain_reaches_fractions():
    data = synthetic(n=4)
    torch.manual_seed(0)
    f = hf.HybridField(
        mech=hf.MechanisticGraph(1, [hf.Linear(0, None, 0.2)], param="log", dtype=f64), nn=hf.MaskedMLP(1, 1, hidden=(8,)).double()
    )
    hf.prune_retrain(f, data, fractions=(0.5, 0.75), epochs=3, progress=False)
    assert hf.sparsity.weight_sparsity(f) == pytest.approx(0.75, abs=0.07)


def test_fit_bad_input():
    data = synthetic()
    with pytest.raises(ValueError, match="unknown regularizer"):
        hf.fit(decay_model(), data, reg={"l3": 1.0}, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        hf.fit(decay_model(), data, epochs=0, progress=False)
    with pytest.raises(ValueError):
        LongitudinalDataset([Subject(id="a", times=[1.0], obs=[[1.0]])], ["x"], ["y"])  # unknown state name
    with pytest.raises(ValueError):
        Subject(id="empty", times=[], obs=np.zeros((0, 1)))


def test_cli_info_and_help(capsys):
    from hnode_fast.cli import main

    assert main(["--help"]) == 0
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backends" in out
    assert main(["nope"]) == 2


def test_demo_pipeline_smoke(tmp_path, capsys):
    """The demo end to end on a tiny schedule: cross-validated table, verdict, JSON keys, plot."""
    pytest.importorskip("matplotlib")
    from hnode_fast.demo import run, sign_test

    out = run(quick=True, plot=str(tmp_path / "demo.png"), progress=False, epochs={"mech": 2, "bb": 2, "hyb": 2, "retrain": 2})
    assert set(out["table"]) == {"mechanistic", "blackbox", "hybrid"}
    for r in out["table"].values():
        assert math.isfinite(r["test_rmse"]) and r["nonzero_params"] > 0
        assert len(r["test_rmse_folds"]) == 3 and len(r["subject_rmse"]) == 6
        assert r["test_rmse"] == pytest.approx(sum(r["test_rmse_folds"]) / 3)
    assert 0.65 <= out["table"]["hybrid"]["sparsity"] <= 0.75
    assert (tmp_path / "demo.png").stat().st_size > 1000
    held = [i for f in out["folds"] for i in f]
    assert sorted(held) == sorted(set(held)) and len(held) == 6  # every subject held out once
    assert out["verdict"].startswith("winner: ") and "sign test p=" in out["verdict"]
    c = out["comparisons"]["mechanistic"]
    assert c["n"] == 6 and c["p"] == pytest.approx(sign_test(c["wins"], 6))
    assert sign_test(6, 6) == pytest.approx(2 / 64) and sign_test(3, 6) == 1.0
    eq = out["equations"]
    assert eq["mechanistic"].splitlines()[1].startswith("  dcentral/dt") and "nn[" not in eq["mechanistic"]
    assert "nn: MaskedMLP 2 -> 16 -> 2, elu;" in eq["hybrid"]
    assert len(out["dependencies"]) == 2 and len(out["dependencies"][0]) == 2


def test_demo_json_is_strict(capsys, monkeypatch):
    """``hnode-fast demo --json`` prints strict JSON: the mechanistic model's NaN sparsity becomes
    null (a short schedule: the numbers are not the point here)."""
    import json

    from hnode_fast import demo

    run = demo.run
    monkeypatch.setattr(demo, "run", lambda **kw: run(epochs={"mech": 20, "bb": 5, "hyb": 10, "retrain": 5}, **kw))
    assert demo.main(["--quick", "--json", "--plot", "", "--no-progress"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]

    def no_constants(name):
        raise ValueError(f"non-JSON constant {name}")

    js = json.loads(last, parse_constant=no_constants)
    assert js["table"]["mechanistic"]["sparsity"] is None
    assert 0.0 < js["sparsity"] < 1.0 and js["hybrid_test_rmse"] > 0
    assert js["verdict"].startswith("winner: ") and set(js["comparisons"]) == {"mechanistic", "blackbox"}
