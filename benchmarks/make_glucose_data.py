"""Generate virtual patient-days from the UVA/Padova T1D simulator (``simglucose``, MIT).

Each virtual patient follows simglucose's random meal scenario (3 main meals + optional snacks
per day, random times and sizes) and its basal-bolus controller (basal insulin at the
patient's steady-state rate, a meal bolus from the carbohydrate ratio and correction factor);
a GuardianRT CGM reads glucose every 5 minutes with the sensor's noise model. Output CSV, one
row per 5-minute step::

    patient, day, minute, cgm, carbs, insulin

``minute`` counts from the patient's midnight of day 0; ``cgm`` (mg/dL) is the reading at that
time; ``carbs`` (g/min) and ``insulin`` (U/min) are the mean input rates over the NEXT 5
minutes (what the controller and the scenario gave from this reading to the next), so they are
piecewise constant on the 5-minute grid. The bundled ``hnode_fast/data/glucose_sim.csv`` was
made with::

    pip install "hnode_fast[glucose]"     # simglucose 0.2.11 (+ setuptools < 81 for pkg_resources)
    python benchmarks/make_glucose_data.py --patients adult#001-adult#010 --days 2 --seed 1 \
        --out hnode_fast/data/glucose_sim.csv

Larger sets for ``bench_hgs.py``: ``--patients adult#001-adult#010,adolescent#001-adolescent#010
--days 7 --out /tmp/glucose_big.csv``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
import warnings
from datetime import datetime, timedelta
from typing import List


def _expand(spec: str) -> List[str]:
    """``adult#001-adult#003,child#002`` -> the patient names."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-")
            kind, lo = a.split("#")
            kind2, hi = b.split("#")
            if kind != kind2:
                raise ValueError(f"range {part!r} mixes patient kinds")
            out += [f"{kind}#{i:03d}" for i in range(int(lo), int(hi) + 1)]
        elif part:
            out.append(part)
    return out


def simulate(patient: str, days: int, seed: int):
    """Rows ``(minute, cgm, carbs, insulin)`` of one patient over ``days`` days."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from simglucose.actuator.pump import InsulinPump
        from simglucose.controller.basal_bolus_ctrller import BBController
        from simglucose.patient.t1dpatient import T1DPatient
        from simglucose.sensor.cgm import CGMSensor
        from simglucose.simulation.env import T1DSimEnv
        from simglucose.simulation.scenario_gen import RandomScenario
    logging.getLogger("simglucose").setLevel(logging.WARNING)
    start = datetime(2018, 1, 1, 0, 0, 0)
    env = T1DSimEnv(
        T1DPatient.withName(patient),
        CGMSensor.withName("GuardianRT", seed=seed),
        InsulinPump.withName("Insulet"),
        RandomScenario(start_time=start, seed=seed),
    )
    ctrl = BBController()
    obs, reward, done, info = env.reset()
    cgm = [float(obs.CGM)]
    while env.time < start + timedelta(days=days):
        action = ctrl.policy(obs, reward, done, **info)
        obs, reward, done, info = env.step(action)
        cgm.append(float(obs.CGM))
    rows = []
    for i, (c, cho, ins) in enumerate(zip(cgm, env.CHO_hist, env.insulin_hist)):
        rows.append((5 * i, c, float(cho), float(ins)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", default="adult#001-adult#010")
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    names = _expand(a.patients)
    with open(a.out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient", "day", "minute", "cgm", "carbs", "insulin"])
        for k, name in enumerate(names):
            t0 = time.perf_counter()
            rows = simulate(name, a.days, a.seed + k)
            for m, c, cho, ins in rows:
                w.writerow([name, m // 1440, m, f"{c:.2f}", f"{cho:.4f}", f"{ins:.6f}"])
            print(f"{name}: {len(rows)} steps, {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
