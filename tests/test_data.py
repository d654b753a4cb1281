"""Longitudinal datasets and the bundled pharmacokinetic data (no downloads)."""

import numpy as np
import pytest
import torch

from hnode_fast.data import LongitudinalDataset, Subject, load_indometh, load_phenobarb, load_theoph


def _toy(n=5):
    subs = [
        Subject(
            id=f"s{i}",
            times=[0.5, 1.0 + i, 3.0 + i],
            obs=[[1.0], [2.0], [0.5]],
            dose_times=[0.0],
            dose_amounts=[10.0],
            dose_states=["depot"],
        )
        for i in range(n)
    ]
    return LongitudinalDataset(subs, ["depot", "central"], ["central"])


# ----------------------------------------------------------------------------- bundled data


def test_theoph_loads():
    ds = load_theoph()
    assert len(ds) == 12
    assert ds.state_names == ["depot", "central"] and ds.observed == ["central"] and ds.observed_idx == [1]
    for s in ds:
        assert s.times.shape == (11,) and s.obs.shape == (11, 1)
        assert s.times[0] == 0.0  # pre-dose sample kept
        assert s.dose_times.tolist() == [0.0] and s.dose_states.tolist() == [0]
        assert s.dose_amounts[0] == s.covariates["Dose"]  # units="per_kg"
    s1 = ds[0]
    assert s1.id == "1" and s1.covariates == {"Wt": 79.6, "Dose": 4.02}
    assert s1.obs[0, 0] == 0.74 and s1.times[-1] == 24.37
    assert sum(s.times.size for s in ds) == 132


def test_theoph_mg_units():
    ds = load_theoph(units="mg")
    s1 = ds[0]
    assert s1.dose_amounts[0] == pytest.approx(4.02 * 79.6)
    with pytest.raises(ValueError, match="units"):
        load_theoph(units="g")


def test_theoph_batch_shapes():
    ds = load_theoph()
    b = ds.batch()
    assert b["t"].shape == (12, 11) and b["t"].dtype == torch.float64
    assert b["y"].shape == (12, 11, 1) and b["obs_mask"].shape == (12, 11, 1)
    assert b["obs_mask"].dtype == torch.bool and bool(b["obs_mask"].all())
    assert torch.equal(b["y0_time"], torch.zeros(12, dtype=torch.float64))
    assert b["event_times"].shape == (12, 1) and b["event_states"].dtype == torch.int64
    assert torch.equal(b["event_amounts"][:, 0], torch.tensor([s.covariates["Dose"] for s in ds], dtype=torch.float64))
    assert b["ids"] == [str(i) for i in range(1, 13)]
    b32 = ds.batch([0, 3], dtype=torch.float32)
    assert b32["t"].dtype == torch.float32 and b32["y"].shape == (2, 11, 1)


def test_indometh_loads():
    ds = load_indometh()
    assert len(ds) == 6
    assert ds.state_names == ["central", "peripheral"] and ds.observed_idx == [0]
    for s in ds:
        assert s.obs.shape == (11, 1) and s.times[0] == 0.25
        assert s.dose_amounts.tolist() == [25.0] and s.dose_states.tolist() == [0]
    assert sum(s.times.size for s in ds) == 66
    assert load_indometh(dose_mg=50.0)[0].dose_amounts.tolist() == [50.0]
    # no time-0 observation: batch prepends the start time with a masked observation
    b = ds.batch()
    assert b["t"].shape == (6, 12)
    assert torch.all(b["t"][:, 0] == 0) and not bool(b["obs_mask"][:, 0].any())
    assert bool(b["obs_mask"][:, 1:].all()) and torch.all(b["y"][:, 0] == 0)
    assert torch.equal(b["valid"], torch.ones(6, 12, dtype=torch.bool))


def test_phenobarb_loads():
    ds = load_phenobarb()
    assert len(ds) == 59
    assert ds.state_names == ["central"]
    assert sum(s.times.size for s in ds) == 155
    assert sum(s.dose_times.size for s in ds) == 589
    assert max(s.dose_times.size for s in ds) > 1  # repeated dosing
    assert sum(s.dose_times.size > 1 for s in ds) > 50
    s1 = ds[0]
    assert s1.id == "1" and s1.dose_times[0] == 0.0 and s1.dose_amounts[0] == 25.0
    assert s1.times[0] == 2.0 and s1.obs[0, 0] == 17.3
    assert s1.covariates == {"Wt": 1.4, "Apgar": 7, "ApgarInd": ">= 5"}
    b = ds.batch()
    K = max(s.dose_times.size for s in ds)
    assert b["event_times"].shape == (59, K)
    n_real = torch.isfinite(b["event_times"]).sum(1)
    assert n_real.tolist() == [s.dose_times.size for s in ds]
    assert torch.all(b["event_amounts"][~torch.isfinite(b["event_times"])] == 0)
    et = b["event_times"]
    assert bool((et[:, 1:] >= et[:, :-1]).all())  # sorted per subject
    assert int(b["obs_mask"].sum()) == 155


# ----------------------------------------------------------------------------- padding and masks


def test_padding_strictly_increasing_and_masked():
    subs = [
        Subject("a", [0.0, 1.0, 2.0, 5.0], [1.0, 2.0, 3.0, 4.0]),
        Subject("b", [1.0], [7.0], dose_times=[0.5], dose_amounts=[2.0], dose_states=[1]),
    ]
    ds = LongitudinalDataset(subs, ["x", "y"], ["x"])
    b = ds.batch()
    t = b["t"]
    assert t.shape == (2, 4)
    assert bool((t[:, 1:] > t[:, :-1]).all())
    # subject b: start 0 prepended, one real obs, two pads after t=1
    assert t[1].tolist() == pytest.approx([0.0, 1.0, 1.001, 1.002])
    assert b["obs_mask"][1, :, 0].tolist() == [False, True, False, False]
    assert b["valid"][1].tolist() == [True, True, False, False]
    assert b["y"][1, :, 0].tolist() == [0.0, 7.0, 0.0, 0.0]
    assert b["event_times"].shape == (2, 1)
    assert b["event_times"][0, 0] == float("inf") and b["event_amounts"][0, 0] == 0
    assert b["event_states"][1, 0] == 1
    assert torch.equal(b["y0_time"], t[:, 0])


def test_start_time_is_earliest_of_zero_dose_obs():
    s = Subject("n", [-1.0, 2.0], [0.0, 1.0], dose_times=[-3.0], dose_amounts=[1.0], dose_states=[0])
    assert s.start_time == -3.0
    b = LongitudinalDataset([s], ["c"], ["c"]).batch()
    assert b["t"][0].tolist() == [-3.0, -1.0, 2.0]


def test_nan_observation_masked():
    s = Subject("a", [0.0, 1.0, 2.0], [[1.0, np.nan], [np.nan, 2.0], [3.0, 4.0]])
    ds = LongitudinalDataset([s], ["x", "y", "z"], ["x", "z"])
    b = ds.batch()
    assert b["obs_mask"][0].tolist() == [[True, False], [False, True], [True, True]]
    assert b["y"][0].tolist() == [[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]
    assert ds.observed_idx == [0, 2]


def test_sorting_and_duplicate_times_keep_first():
    s = Subject("a", [2.0, 1.0, 2.0, 0.0], [20.0, 10.0, 21.0, 0.0], dose_times=[3.0, 1.0], dose_amounts=[30.0, 10.0], dose_states=[0, 0])
    assert s.times.tolist() == [0.0, 1.0, 2.0]
    assert s.obs[:, 0].tolist() == [0.0, 10.0, 20.0]
    assert s.dose_times.tolist() == [1.0, 3.0] and s.dose_amounts.tolist() == [10.0, 30.0]


def test_float32_padding_too_fine_raises():
    ds = LongitudinalDataset([Subject("a", [0.0, 1e5], [1.0, 2.0]), Subject("b", [0.0, 1e5, 2e5], [1.0, 2, 3])], ["x"], ["x"])
    with pytest.raises(ValueError, match="strictly increasing"):
        ds.batch(dtype=torch.float32, pad_step=1e-6)
    assert ds.batch(dtype=torch.float32, pad_step=1.0)["t"].dtype == torch.float32


# ----------------------------------------------------------------------------- validation


def test_unknown_state_name_raises():
    s = Subject("a", [0.0], [1.0])
    with pytest.raises(ValueError, match="'blood'"):
        LongitudinalDataset([s], ["depot", "central"], ["blood"])
    d = Subject("b", [1.0], [1.0], dose_times=[0.0], dose_amounts=[1.0], dose_states=["gut"])
    with pytest.raises(ValueError, match="'gut'"):
        LongitudinalDataset([d], ["depot", "central"], ["central"])
    d = Subject("c", [1.0], [1.0], dose_times=[0.0], dose_amounts=[1.0], dose_states=[2])
    with pytest.raises(ValueError, match="dose_states"):
        LongitudinalDataset([d], ["depot", "central"], ["central"])


def test_empty_subject_raises():
    with pytest.raises(ValueError, match="'empty'"):
        Subject("empty", [], [])
    with pytest.raises(ValueError, match="'all_nan'.*no observations"):
        Subject("all_nan", [0.0, 1.0], [np.nan, np.nan])


def test_bad_subject_shapes_raise():
    with pytest.raises(ValueError, match="obs"):
        Subject("a", [0.0, 1.0], [[1.0], [2.0], [3.0]])
    with pytest.raises(ValueError, match="same length"):
        Subject("a", [0.0], [1.0], dose_times=[0.0, 1.0], dose_amounts=[1.0], dose_states=[0])
    with pytest.raises(ValueError, match="finite"):
        Subject("a", [0.0, np.inf], [1.0, 2.0])
    with pytest.raises(ValueError, match="columns"):
        LongitudinalDataset([Subject("a", [0.0], [[1.0, 2.0]])], ["x"], ["x"])
    with pytest.raises(ValueError, match="duplicate"):
        LongitudinalDataset([Subject("a", [0.0], [1.0]), Subject("a", [1.0], [1.0])], ["x"], ["x"])


# ----------------------------------------------------------------------------- splits


def test_split_by_subject_disjoint_and_covering():
    ds = load_theoph()
    train, test = ds.split(0.25, seed=3)
    assert len(test) == 3 and len(train) == 9
    assert set(train.ids).isdisjoint(test.ids)
    assert set(train.ids) | set(test.ids) == set(ds.ids)
    _, te2 = ds.split(n_test=4, seed=3)
    assert len(te2) == 4
    assert ds.split(0.25, seed=3)[1].ids == test.ids  # deterministic
    with pytest.raises(ValueError):
        ds.split(n_test=12)
    with pytest.raises(ValueError):
        ds.split(1.5)


def test_kfold_by_subject():
    ds = _toy(7)
    folds = list(ds.kfold(3, seed=1))
    assert len(folds) == 3
    seen = []
    for train, val in folds:
        assert set(train.ids).isdisjoint(val.ids)
        assert set(train.ids) | set(val.ids) == set(ds.ids)
        seen += val.ids
    assert sorted(seen) == sorted(ds.ids)  # validation folds partition the subjects
    assert sorted(len(v) for _, v in folds) == [2, 2, 3]
    with pytest.raises(ValueError):
        list(ds.kfold(1))


def test_getitem_and_subset():
    ds = _toy(5)
    assert ds[1].id == "s1"
    sub = ds[1:3]
    assert isinstance(sub, LongitudinalDataset) and sub.ids == ["s1", "s2"]
    assert ds[[4, 0]].ids == ["s4", "s0"]
    assert ds[0].dose_states.tolist() == [0]  # name resolved to index
    b = ds.batch([2])
    assert b["ids"] == ["s2"] and b["t"].shape == (1, 4)  # start 0 prepended
