"""The bundled simulated glucose data (simglucose, see hnode_fast/data/SOURCES.md) and its
windows for HGS; no simulator needed, no downloads."""

import numpy as np
import pytest

import hnode_fast as hf
from hnode_fast.hgs import Windows


def test_glucose_sim_loads_per_patient_and_per_day():
    recs = hf.data.load_glucose_sim()
    assert [r[0] for r in recs] == [f"adult#{i:03d}" for i in range(1, 11)]
    days = hf.data.load_glucose_sim(split_days=True)
    assert len(days) == 20 and days[0][0] == "adult#001/day0"
    sub, t, cgm, it, iv = recs[0]
    assert len(t) == 576 and np.allclose(np.diff(t), 5 / 60)  # 2 days, every 5 min, in hours
    assert cgm.shape == (576, 1) and np.all((cgm > 39) & (cgm < 600))
    # inputs kept only where they change; basal insulin always on, meals and boluses present
    assert iv.shape[1] == 2 and np.all(np.any(np.diff(iv, axis=0) != 0, axis=1))
    assert iv[:, 1].min() > 0 and iv[:, 0].max() > 1.0 and iv[:, 1].max() > 0.2
    assert len(it) < len(t) / 4


def test_glucose_windows_and_errors():
    with pytest.raises(ValueError, match="none of the patients"):
        hf.data.load_glucose_sim(patients=["child#001"])
    recs = hf.data.load_glucose_sim(patients=["adult#001"])
    w = Windows.from_series(recs, context=12, horizon=12, stride=12)
    assert w.n_obs == 1 and w.n_inputs == 2 and w.ctx.shape[1] == 12 + 11 * 2
    # the carbohydrate integrals in the context add up to grams eaten (g/min x h -> x 60)
    assert float(w.ctx[:, 12::2].sum()) * 60 > 100
