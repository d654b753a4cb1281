"""hf.hgs.sparsify end to end on a small synthetic truth (tests/hgs_truth.py): the true edges
survive, the spurious ones and the states they fed go; CV, summary, plot, backends agree."""

import math

import pytest
import torch
from hgs_truth import SPURIOUS_EDGES, TRUE_EDGES, prior, windows

import hnode_fast as hf


def test_sparsify_keeps_true_edges_and_drops_spurious_ones():
    train = windows(12, seed=0)
    test = windows(4, seed=1)
    res = hf.hgs.sparsify(
        prior(),
        train,
        val=test,
        lambdas=[0.02],
        epochs=300,
        lr=0.02,
        hidden=(8,),
        enc_hidden=0,
        batch_size=None,
        threshold=0.1,
        progress=False,
    )
    kept = set(res.kept_edges)
    assert TRUE_EDGES <= kept, f"lost true edges {TRUE_EDGES - kept}"
    dropped = SPURIOUS_EDGES - kept
    assert len(dropped) >= 6, f"kept spurious edges {SPURIOUS_EDGES & kept}"
    assert set(res.removed_states) == {"d", "e"}
    assert res.reduced.state_names == ("a", "b", "c")
    assert res.params_reduced["field"] < 0.7 * res.params_full["field"]
    # the reduced model predicts held-out subjects to about the noise level (0.01)
    assert res.val_metrics is not None and res.val_metrics["rmse"] < 0.05 and res.val_metrics["failed"] == 0
    assert set(res.removed_edges) | kept == set(res.relaxed.named_edges())


def test_cv_summary_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    train = windows(4, seed=0, horizon=6)
    res = hf.hgs.sparsify(prior(), train, lambdas=[0.01, 0.1], folds=2, epochs=4, hidden=(4,), batch_size=16, progress=False)
    assert sorted(res.cv_scores) == [0.01, 0.1]
    assert all(len(v) == 2 and all(math.isfinite(x) for x in v) for v in res.cv_scores.values())
    means = {k: sum(v) / 2 for k, v in res.cv_scores.items()}
    assert res.lam1 == min(means, key=means.__getitem__)
    s = res.summary()
    assert "lambda1" in s and "kept graph" in s and "d[a]/dt" in s
    fig = res.plot(path=str(tmp_path / "g.png"))
    assert (tmp_path / "g.png").stat().st_size > 0
    assert len(fig.axes) == 2


def test_training_step_same_on_cpu_and_reference():
    if "cpu" not in hf.backends.available():
        pytest.skip("cpu backend not built")
    w = windows(2, seed=0, horizon=4).subset([0, 1, 2])
    rg = prior().relax()
    scaler = hf.hgs.Scaler.fit(w)
    hist = {}
    for be in ("cpu", "reference"):
        torch.manual_seed(0)
        m = hf.hgs.MNODE(rg, w.ctx.shape[1], hidden=(4,))
        hist[be] = hf.hgs.train(m, w, scaler, lam1=0.01, epochs=2, batch_size=None, backend=be, rtol=1e-8, atol=1e-10)
        hist[be + "_w"] = m.field.nn.edge_weights.detach().clone()
    assert hist["cpu"][1]["mse"] == pytest.approx(hist["reference"][1]["mse"], rel=1e-6)
    torch.testing.assert_close(hist["cpu_w"], hist["reference_w"], rtol=1e-6, atol=1e-9)


def test_progress_is_one_line_per_stage_without_a_terminal(capsys):
    w = windows(3, seed=0, horizon=4)
    hf.hgs.sparsify(prior(), w, lambdas=[0.01], epochs=1, retrain_epochs=1, hidden=(2,), progress=None)
    err = capsys.readouterr().err.strip().splitlines()
    assert err and all(line.startswith("hgs: ") for line in err)
    assert any("full fit" in line for line in err) and any("retrain reduced" in line for line in err)
    hf.hgs.sparsify(prior(), w, lambdas=[0.01], epochs=1, retrain_epochs=1, hidden=(2,), progress=False)
    assert capsys.readouterr().err == ""
