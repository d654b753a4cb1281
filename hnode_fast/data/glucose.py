"""Simulated type-1 diabetes CGM data (UVA/Padova simulator via ``simglucose``; see SOURCES.md).

:func:`load_glucose_sim` reads ``glucose_sim.csv`` (or another CSV written by
``benchmarks/make_glucose_data.py``) into per-patient-day records for
:meth:`hnode_fast.hgs.Windows.from_series`: times in hours, CGM glucose (mg/dL) every 5 minutes,
and two piecewise-constant inputs, carbohydrate (g/min) and insulin (U/min), kept only at the
times they change.
"""

from __future__ import annotations

import csv
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .longitudinal import read_csv

__all__ = ["load_glucose_sim"]

Record = Tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _records(cols: Dict[str, List[str]], split_days: bool) -> List[Record]:
    pat = cols["patient"]
    day = [int(x) for x in cols["day"]]
    minute = np.array([float(x) for x in cols["minute"]])
    cgm = np.array([float(x) for x in cols["cgm"]])
    u = np.stack([[float(x) for x in cols["carbs"]], [float(x) for x in cols["insulin"]]], axis=1)
    keys: Dict[str, List[int]] = {}
    for i, (p, d) in enumerate(zip(pat, day)):
        keys.setdefault(f"{p}/day{d}" if split_days else p, []).append(i)
    out = []
    for key, idx in keys.items():
        ix = np.array(idx)
        t = minute[ix] / 60.0
        if np.any(np.diff(t) <= 0):
            raise ValueError(f"glucose data: times of {key} are not increasing")
        uu = u[ix]
        change = np.concatenate([[True], np.any(uu[1:] != uu[:-1], axis=1)])
        out.append((key, t, cgm[ix][:, None], t[change], uu[change]))
    return out


def load_glucose_sim(path: Optional[str] = None, patients: Optional[Sequence[str]] = None, split_days: bool = False) -> List[Record]:
    """Records ``(id, times (N,) h, cgm (N, 1) mg/dL, input_times (M,) h, inputs (M, 2))``.

    Args:
        path: a CSV written by ``benchmarks/make_glucose_data.py`` (default: the bundled
            ``glucose_sim.csv``, 10 adult virtual patients x 2 days).
        patients: keep only these patient names (e.g. ``["adult#001"]``).
        split_days: one record per patient-day (id ``"adult#001/day0"``) instead of per patient.
            Cross-validation folds are by record id, so split days only for held-out-day tests.
    """
    if path is None:
        cols = read_csv("glucose_sim.csv")
    else:
        with open(path, newline="") as fh:
            r = csv.reader(fh)
            header = next(r)
            cols = {h: [] for h in header}
            for row in r:
                for h, v in zip(header, row):
                    cols[h].append(v)
    missing = {"patient", "day", "minute", "cgm", "carbs", "insulin"} - set(cols)
    if missing:
        raise ValueError(f"glucose data: missing columns {sorted(missing)}")
    recs = _records(cols, split_days)
    if patients is not None:
        want = set(patients)
        recs = [r for r in recs if r[0].split("/")[0] in want]
        if not recs:
            raise ValueError(f"glucose data: none of the patients {sorted(want)}")
    return recs
