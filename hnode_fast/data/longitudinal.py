"""Longitudinal (per-subject) datasets: observation times, observations, bolus doses.

A :class:`Subject` holds one individual's irregular observation times, an ``(T, n_obs)``
observation array (``NaN`` = not observed) and bolus doses ``(time, amount, state)``.
A :class:`LongitudinalDataset` is a list of subjects plus the model's state names and the
names of the observed states; :meth:`LongitudinalDataset.batch` pads subjects into the
tensors that :func:`hnode_fast.odeint` takes (per-trajectory time grids ``(B, T)`` and
``hf.Events``).

Bundled real data (R ``datasets``/``nlme``, see ``SOURCES.md``): :func:`load_theoph`
(oral theophylline, 12 subjects), :func:`load_indometh` (IV indometacin, 6 subjects),
:func:`load_phenobarb` (phenobarbital in 59 neonates, repeated doses).

Typical use::

    import hnode_fast as hf
    from hnode_fast.data import load_theoph
    ds = load_theoph()
    b = ds.batch()
    y0 = torch.zeros(len(ds), ds.n_states, dtype=torch.float64)
    ev = hf.Events(b["event_times"], b["event_states"], b["event_amounts"])
    z = hf.odeint(field, y0, b["t"], events=ev)               # (T, B, n_states)
    pred = z.permute(1, 0, 2)[..., ds.observed_idx] / V        # (B, T, n_obs)
    loss = ((pred - b["y"])[b["obs_mask"]] ** 2).mean()
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, TypedDict

import numpy as np
import torch

__all__ = ["Subject", "LongitudinalDataset", "load_theoph", "load_indometh", "load_phenobarb", "read_csv"]


class Batch(TypedDict):
    """What :meth:`LongitudinalDataset.batch` returns (a plain ``dict`` at runtime)."""

    t: torch.Tensor
    y: torch.Tensor
    obs_mask: torch.Tensor
    valid: torch.Tensor
    y0_time: torch.Tensor
    event_times: torch.Tensor
    event_states: torch.Tensor
    event_amounts: torch.Tensor
    ids: List[str]


@dataclass
class Subject:
    """One individual's longitudinal record.

    Attributes:
        id: subject identifier (converted to ``str``).
        times: ``(T,)`` float64 observation times.
        obs: ``(T, n_obs)`` float64 observations; ``NaN`` marks a missing value (a 1-d array
            is taken as one observed quantity).
        dose_times: ``(K,)`` float64 bolus dose times.
        dose_amounts: ``(K,)`` float64 amounts added to the receiving state.
        dose_states: ``(K,)`` int64 index of the state receiving each bolus. State *names*
            (str) are accepted too; :class:`LongitudinalDataset` resolves them.
        covariates: free-form dict (weight, dose level, ...).

    On construction observations are sorted by time (stable) and, where several share a
    time, only the FIRST (in the given order) is kept, so ``times`` is strictly increasing.
    Doses are sorted by time (stable); several doses at one time are all kept. Raises
    ``ValueError`` for non-finite times or amounts, ``+-inf`` observations, mismatched
    lengths, or a subject without any (non-NaN) observation.
    """

    id: str
    times: np.ndarray
    obs: np.ndarray
    dose_times: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dose_amounts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dose_states: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    covariates: Dict[str, object] = field(default_factory=dict)

    def __post_init__(self):
        self.id = str(self.id)
        who = f"subject {self.id!r}"
        times = np.asarray(self.times, dtype=np.float64).reshape(-1)
        obs = np.asarray(self.obs, dtype=np.float64)
        if obs.ndim == 1:
            obs = obs[:, None]
        if obs.ndim != 2 or obs.shape[0] != times.shape[0]:
            raise ValueError(f"{who}: obs must have shape (T, n_obs) with T = len(times) = {times.shape[0]}, got {tuple(obs.shape)}")
        if not np.isfinite(times).all():
            raise ValueError(f"{who}: observation times must be finite")
        if np.isinf(obs).any():
            raise ValueError(f"{who}: observations must be finite or NaN (missing), found inf")
        order = np.argsort(times, kind="stable")
        times, obs = times[order], obs[order]
        if times.size:
            first = np.concatenate([[True], times[1:] != times[:-1]])  # first of each run of equal times
            times, obs = times[first], obs[first]
        if times.size == 0 or np.isnan(obs).all():
            raise ValueError(f"{who} has no observations")
        self.times, self.obs = times, obs

        dt = np.asarray(self.dose_times, dtype=np.float64).reshape(-1)
        da = np.asarray(self.dose_amounts, dtype=np.float64).reshape(-1)
        ds = np.asarray(self.dose_states).reshape(-1)
        if not (dt.shape == da.shape == ds.shape):
            raise ValueError(
                f"{who}: dose_times, dose_amounts, dose_states must have the same length, got {dt.shape[0]}, {da.shape[0]}, {ds.shape[0]}"
            )
        if not (np.isfinite(dt).all() and np.isfinite(da).all()):
            raise ValueError(f"{who}: dose times and amounts must be finite")
        if ds.size == 0:
            ds = ds.astype(np.int64)
        elif ds.dtype.kind in "iu":
            ds = ds.astype(np.int64)
        elif ds.dtype.kind == "f":
            if not np.array_equal(ds, np.round(ds)):
                raise ValueError(f"{who}: dose_states must be integer state indices or state names")
            ds = ds.astype(np.int64)
        else:
            ds = ds.astype(object)
        order = np.argsort(dt, kind="stable")
        self.dose_times, self.dose_amounts, self.dose_states = dt[order], da[order], ds[order]
        self.covariates = dict(self.covariates)

    @property
    def n_obs(self) -> int:
        return self.obs.shape[1]

    @property
    def start_time(self) -> float:
        """``min(0, first dose time, first observation time)``: where a solve of this subject starts."""
        t = min(0.0, float(self.times[0]))
        if self.dose_times.size:
            t = min(t, float(self.dose_times[0]))
        return t


class LongitudinalDataset:
    """Subjects plus the model's state names and which states are observed.

    Args:
        subjects: sequence of :class:`Subject`; ids must be unique and every subject must have
            ``len(observed)`` observation columns.
        state_names: names of the ODE states (order = state index).
        observed: names of the observed states; column ``j`` of ``Subject.obs`` observes state
            ``observed_idx[j]``.
        obs_scale: free-text note relating observations to states (e.g. ``"conc = central / V"``).
        name: dataset name.

    Unknown state names (in ``observed`` or string ``dose_states``) raise ``ValueError``
    naming them.
    """

    def __init__(
        self, subjects: Sequence[Subject], state_names: Sequence[str], observed: Sequence[str], obs_scale: str = "", name: str = ""
    ):
        self.state_names = [str(s) for s in state_names]
        if not self.state_names:
            raise ValueError("state_names must not be empty")
        if len(set(self.state_names)) != len(self.state_names):
            raise ValueError(f"state_names must be unique, got {self.state_names}")
        if isinstance(observed, str):
            observed = [observed]
        self.observed = [str(s) for s in observed]
        if not self.observed:
            raise ValueError("observed must name at least one state")
        unknown = [s for s in self.observed if s not in self.state_names]
        if unknown:
            raise ValueError(f"observed: unknown state name(s) {unknown}; states are {self.state_names}")
        self.obs_scale = str(obs_scale)
        self.name = str(name)
        index = {s: i for i, s in enumerate(self.state_names)}
        subs: List[Subject] = []
        seen = set()
        for s in subjects:
            if not isinstance(s, Subject):
                raise ValueError(f"subjects must be Subject instances, got {type(s).__name__}")
            if s.id in seen:
                raise ValueError(f"duplicate subject id {s.id!r}")
            seen.add(s.id)
            if s.n_obs != len(self.observed):
                raise ValueError(
                    f"subject {s.id!r}: obs has {s.n_obs} columns but observed lists {len(self.observed)} states {self.observed}"
                )
            ds = s.dose_states
            if ds.dtype == object:
                bad = sorted({str(x) for x in ds if str(x) not in index})
                if bad:
                    raise ValueError(f"subject {s.id!r}: unknown state name(s) {bad} in dose_states; states are {self.state_names}")
                s = dataclasses.replace(s, dose_states=np.array([index[str(x)] for x in ds], dtype=np.int64))
            elif ds.size and (ds.min() < 0 or ds.max() >= len(self.state_names)):
                raise ValueError(f"subject {s.id!r}: dose_states must be in [0, {len(self.state_names)}), got {ds.tolist()}")
            subs.append(s)
        if not subs:
            raise ValueError("a LongitudinalDataset needs at least one subject")
        self.subjects: List[Subject] = subs

    # ------------------------------------------------------------------ container protocol
    def __len__(self) -> int:
        return len(self.subjects)

    def __iter__(self) -> Iterator[Subject]:
        return iter(self.subjects)

    def __getitem__(self, i):
        """``ds[i]`` -> :class:`Subject`; ``ds[slice]`` or ``ds[[i, j, ...]]`` -> sub-dataset."""
        if isinstance(i, slice):
            return self.subset(range(len(self))[i])
        if hasattr(i, "__index__"):
            return self.subjects[i]
        return self.subset(i)

    def __repr__(self) -> str:
        return f"LongitudinalDataset({self.name!r}, {len(self)} subjects, states={self.state_names}, observed={self.observed})"

    @property
    def n_states(self) -> int:
        return len(self.state_names)

    @property
    def n_obs(self) -> int:
        return len(self.observed)

    @property
    def observed_idx(self) -> List[int]:
        """State index of each observation column."""
        return [self.state_names.index(s) for s in self.observed]

    @property
    def ids(self) -> List[str]:
        return [s.id for s in self.subjects]

    def subset(self, indices) -> "LongitudinalDataset":
        """Dataset of the subjects at ``indices`` (in that order)."""
        idx = [int(i) for i in indices]
        for i in idx:
            if not -len(self) <= i < len(self):
                raise ValueError(f"subject index {i} out of range for {len(self)} subjects")
        return LongitudinalDataset([self.subjects[i] for i in idx], self.state_names, self.observed, self.obs_scale, self.name)

    # ------------------------------------------------------------------ splits
    def split(
        self, test_fraction: Optional[float] = None, *, n_test: Optional[int] = None, seed: int = 0
    ) -> Tuple["LongitudinalDataset", "LongitudinalDataset"]:
        """Random split by subject into ``(train, test)``.

        Give ``test_fraction`` in ``(0, 1)`` (rounded, at least 1 subject) or ``n_test``;
        default ``test_fraction=0.25``. Both parts are non-empty and keep the dataset order.
        """
        N = len(self)
        if test_fraction is not None and n_test is not None:
            raise ValueError("give test_fraction or n_test, not both")
        if n_test is None:
            f = 0.25 if test_fraction is None else float(test_fraction)
            if not 0.0 < f < 1.0:
                raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
            n_test = max(1, int(round(f * N)))
        n_test = int(n_test)
        if not 1 <= n_test <= N - 1:
            raise ValueError(f"n_test must be in [1, {N - 1}] for {N} subjects, got {n_test}")
        perm = np.random.default_rng(seed).permutation(N)
        test = np.sort(perm[:n_test])
        train = np.sort(perm[n_test:])
        return self.subset(train), self.subset(test)

    def kfold(self, k: int, seed: int = 0) -> Iterator[Tuple["LongitudinalDataset", "LongitudinalDataset"]]:
        """Yield ``k`` ``(train, val)`` pairs; the validation folds partition the subjects
        (sizes differ by at most one)."""
        N = len(self)
        k = int(k)
        if not 2 <= k <= N:
            raise ValueError(f"k must be in [2, {N}] for {N} subjects, got {k}")
        perm = np.random.default_rng(seed).permutation(N)
        folds = np.array_split(perm, k)
        for j in range(k):
            val = np.sort(folds[j])
            train = np.sort(np.concatenate([folds[i] for i in range(k) if i != j]))
            yield self.subset(train), self.subset(val)

    # ------------------------------------------------------------------ batching
    def batch(self, subject_indices=None, dtype: torch.dtype = torch.float64, device=None, pad_step: float = 1e-3) -> Batch:
        """Pad subjects into solver-ready tensors.

        Per subject ``b`` the time grid is its observation times, preceded by its start time
        ``min(0, first dose, first observation)`` when there is no observation there (with a
        masked observation), then padded at the end to the common length ``T`` with strictly
        increasing times ``last + pad_step * (k + 1)``, ``k = 0, 1, ...`` (masked). So every
        row of ``t`` is strictly increasing and ``t[:, 0] == y0_time``.

        Returns a dict:
            ``t`` ``(B, T)`` dtype: per-subject time grids.
            ``y`` ``(B, T, n_obs)`` dtype: observations, 0 where masked.
            ``obs_mask`` ``(B, T, n_obs)`` bool: True at real, non-NaN observations.
            ``valid`` ``(B, T)`` bool: False at padding times.
            ``y0_time`` ``(B,)`` dtype: start times (``== t[:, 0]``).
            ``event_times`` ``(B, K)`` dtype, ``+inf`` padded; ``event_states`` ``(B, K)``
            int64 (0 at pads); ``event_amounts`` ``(B, K)`` dtype (0 at pads). ``K >= 1``.
            ``ids``: list of subject ids.

        An observation at the same time as a dose is the pre-dose value under the solver's
        event convention (``hf.Events``: output at a dose time is the left limit). Doses after
        a subject's last grid time have no effect on the solve.
        """
        if subject_indices is None:
            subs = list(self.subjects)
        else:
            if hasattr(subject_indices, "__index__"):
                subject_indices = [subject_indices]
            subs = [self.subjects[int(i)] for i in subject_indices]
        if not subs:
            raise ValueError("subject_indices selects no subject")
        if not (pad_step > 0 and math.isfinite(pad_step)):
            raise ValueError(f"pad_step must be positive, got {pad_step}")
        B, n_obs = len(subs), self.n_obs
        grids, obs_rows = [], []
        for s in subs:
            t0 = s.start_time
            if s.times[0] > t0:
                grids.append(np.concatenate([[t0], s.times]))
                obs_rows.append(np.concatenate([np.full((1, n_obs), np.nan), s.obs]))
            else:
                grids.append(s.times)
                obs_rows.append(s.obs)
        T = max(g.size for g in grids)
        K = max(1, max(s.dose_times.size for s in subs))
        t = np.empty((B, T))
        y = np.full((B, T, n_obs), np.nan)
        valid = np.zeros((B, T), dtype=bool)
        et = np.full((B, K), np.inf)
        es = np.zeros((B, K), dtype=np.int64)
        ea = np.zeros((B, K))
        for b, (g, o, s) in enumerate(zip(grids, obs_rows, subs)):
            n = g.size
            t[b, :n] = g
            t[b, n:] = g[-1] + pad_step * np.arange(1, T - n + 1)
            y[b, :n] = o
            valid[b, :n] = True
            k = s.dose_times.size
            et[b, :k] = s.dose_times
            es[b, :k] = s.dose_states
            ea[b, :k] = s.dose_amounts
        mask = ~np.isnan(y)
        y = np.where(mask, y, 0.0)
        tt = torch.as_tensor(t, dtype=dtype, device=device)
        if T > 1 and not bool((tt[:, 1:] > tt[:, :-1]).all()):
            raise ValueError(f"time grids are not strictly increasing in {dtype}; use float64 or a larger pad_step")
        return {
            "t": tt,
            "y": torch.as_tensor(y, dtype=dtype, device=device),
            "obs_mask": torch.as_tensor(mask, device=device),
            "valid": torch.as_tensor(valid, device=device),
            "y0_time": tt[:, 0].clone(),
            "event_times": torch.as_tensor(et, dtype=dtype, device=device),
            "event_states": torch.as_tensor(es, device=device),
            "event_amounts": torch.as_tensor(ea, dtype=dtype, device=device),
            "ids": [s.id for s in subs],
        }


# ---------------------------------------------------------------------- bundled data


def _float(x: str) -> float:
    x = x.strip()
    return math.nan if x in ("", "NA", "NaN", "nan") else float(x)


def read_csv(name: str) -> Dict[str, List[str]]:
    """Columns (as lists of strings) of a CSV bundled in ``hnode_fast/data``."""
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    cols: Dict[str, List[str]] = {h: [] for h in header}
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(f"{name}: row {row} does not match header {header}")
        for h, v in zip(header, row):
            cols[h].append(v)
    return cols


def _group(ids: List[str]) -> Dict[str, List[int]]:
    """Row indices per subject, subjects in order of first appearance."""
    out: Dict[str, List[int]] = {}
    for i, s in enumerate(ids):
        out.setdefault(s, []).append(i)
    return out


def load_theoph(units: str = "per_kg") -> LongitudinalDataset:
    """R ``datasets::Theoph``: oral theophylline, 12 subjects x 11 samples over ~25 h.

    States ``["depot", "central"]`` (gut depot, central compartment), observed ``["central"]``.
    One bolus per subject into ``depot`` at time 0 (an oral dose). Observations are serum
    concentrations ``conc`` (mg/L) at ``Time`` (h). Covariates: ``Wt`` (kg), ``Dose`` (mg/kg).

    Units (``units``):
        ``"per_kg"`` (default): states are drug amounts per kg body weight (mg/kg); the dose
        amount is ``Dose`` (mg/kg). Then ``conc ≈ central / V`` with ``V`` in L/kg.
        ``"mg"``: states are drug amounts (mg); the dose amount is ``Dose * Wt`` (mg).
        Then ``conc ≈ central / V`` with ``V`` in L.

    The observation at time 0 is PRE-dose and is kept; it is non-zero for three subjects
    (carry-over, 0.74, 0.15 and 0.24 mg/L), so do not assume ``central(0) = 0`` exactly.
    """
    if units not in ("per_kg", "mg"):
        raise ValueError(f"units must be 'per_kg' or 'mg', got {units!r}")
    c = read_csv("theoph.csv")
    subjects = []
    for sid, rows in _group(c["Subject"]).items():
        wt = _float(c["Wt"][rows[0]])
        dose = _float(c["Dose"][rows[0]])
        amount = dose if units == "per_kg" else dose * wt
        subjects.append(
            Subject(
                id=sid,
                times=np.array([_float(c["Time"][r]) for r in rows]),
                obs=np.array([[_float(c["conc"][r])] for r in rows]),
                dose_times=np.array([0.0]),
                dose_amounts=np.array([amount]),
                dose_states=np.array([0]),
                covariates={"Wt": wt, "Dose": dose},
            )
        )
    scale = (
        "conc (mg/L) = central / V; states in mg/kg body weight, V in L/kg"
        if units == "per_kg"
        else "conc (mg/L) = central / V; states in mg, V in L"
    )
    return LongitudinalDataset(subjects, ["depot", "central"], ["central"], obs_scale=scale, name=f"theoph ({units})")


def load_indometh(dose_mg: float = 25.0) -> LongitudinalDataset:
    """R ``datasets::Indometh``: IV bolus indometacin, 6 subjects x 11 samples over 8 h.

    States ``["central", "peripheral"]``, observed ``["central"]``. Each subject received one
    intravenous bolus of indometacin at time 0, modelled as ``dose_mg`` (default 25 mg) into
    ``central``. Observations are plasma concentrations ``conc`` (mcg/mL = mg/L) at ``time``
    (h); ``conc ≈ central / V`` with states in mg and ``V`` in L. There is no observation at
    time 0; :meth:`LongitudinalDataset.batch` prepends a masked grid point.

    The dose is not part of the R data. 25 mg is the usual reading of Kwan et al. (1976) and
    gives plasma clearances of 6.5-11 L/h (about 1.5-2.6 mL/min/kg at 70 kg), in the range
    reported for indometacin; one secondary description of the study says 50 mg. The dose
    only rescales the fitted volume (and clearance), so pass ``dose_mg`` to change it.
    """
    dose_mg = float(dose_mg)
    if not (math.isfinite(dose_mg) and dose_mg > 0):
        raise ValueError(f"dose_mg must be positive, got {dose_mg}")
    c = read_csv("indometh.csv")
    subjects = [
        Subject(
            id=sid,
            times=np.array([_float(c["time"][r]) for r in rows]),
            obs=np.array([[_float(c["conc"][r])] for r in rows]),
            dose_times=np.array([0.0]),
            dose_amounts=np.array([dose_mg]),
            dose_states=np.array([0]),
        )
        for sid, rows in _group(c["Subject"]).items()
    ]
    return LongitudinalDataset(
        subjects,
        ["central", "peripheral"],
        ["central"],
        obs_scale="conc (mcg/mL = mg/L) = central / V; states in mg, V in L",
        name="indometh",
    )


def load_phenobarb() -> LongitudinalDataset:
    """R ``nlme::Phenobarb``: phenobarbital in 59 neonates, repeated IV doses over days.

    States ``["central"]``, observed ``["central"]``. Rows with a ``dose`` are IV boluses into
    ``central`` (amount = ``dose`` per kg body weight); rows with ``conc`` are observations
    (155 in all, 1-6 per infant). Time in hours. Covariates: ``Wt`` (birth weight, kg),
    ``Apgar`` (int), ``ApgarInd`` (``"< 5"`` / ``">= 5"``).

    Units: the nlme documentation gives dose in ug/kg and conc in ug/L (other sources give
    mg/kg and ug/mL = mg/L); both readings have the same mass unit per kg and per L, so
    ``conc ≈ central / V`` with states in amount per kg and ``V`` in L/kg (about 1 L/kg).
    No observation coincides with a dose time in this data.
    """
    c = read_csv("phenobarb.csv")
    subjects = []
    for sid, rows in _group(c["Subject"]).items():
        dose_rows = [r for r in rows if not math.isnan(_float(c["dose"][r]))]
        obs_rows = [r for r in rows if not math.isnan(_float(c["conc"][r]))]
        subjects.append(
            Subject(
                id=sid,
                times=np.array([_float(c["time"][r]) for r in obs_rows]),
                obs=np.array([_float(c["conc"][r]) for r in obs_rows]).reshape(-1, 1),
                dose_times=np.array([_float(c["time"][r]) for r in dose_rows]),
                dose_amounts=np.array([_float(c["dose"][r]) for r in dose_rows]),
                dose_states=np.array([0] * len(dose_rows)),
                covariates={"Wt": _float(c["Wt"][rows[0]]), "Apgar": int(c["Apgar"][rows[0]]), "ApgarInd": c["ApgarInd"][rows[0]]},
            )
        )
    return LongitudinalDataset(
        subjects, ["central"], ["central"], obs_scale="conc = central / V; states in dose units per kg, V in L/kg", name="phenobarb"
    )
