"""Training data for HGS: prediction windows with a context, piecewise-constant inputs and a
subject label (cross-validation folds are by subject).

One window ``b``:

- ``t[b]`` ``(T,)``: the times predicted, ``t[b, 0] = t0`` the window's start (the last
  context time); strictly increasing;
- ``y[b]`` ``(T, n_obs)``: the observations at those times (``NaN`` = missing); ``y[b, 0]``
  is the observable's initial value;
- ``ctx[b]`` ``(C,)``: the encoder's features (what is known at ``t0``: the context
  observations and the inputs' integrals over the context), see :meth:`Windows.from_series`;
- inputs ``u_b(t)``: piecewise constant, ``input_times[b]`` ``(J,)`` (``+inf`` pads, all
  ``>= t0``) and ``input_values[b]`` ``(J, K)``;
- ``groups[b]``: the subject it comes from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..events import Inputs

__all__ = ["Windows"]


@dataclass
class Windows:
    """A batch of prediction windows (shapes in the module docstring; all float64)."""

    t: torch.Tensor  # (B, T)
    y: torch.Tensor  # (B, T, n_obs)
    ctx: torch.Tensor  # (B, C)
    input_times: torch.Tensor  # (B, J)
    input_values: torch.Tensor  # (B, J, K)
    groups: Tuple[str, ...]

    def __post_init__(self):
        self.t = torch.as_tensor(self.t, dtype=torch.float64)
        self.y = torch.as_tensor(self.y, dtype=torch.float64)
        self.ctx = torch.as_tensor(self.ctx, dtype=torch.float64)
        self.input_times = torch.as_tensor(self.input_times, dtype=torch.float64)
        self.input_values = torch.as_tensor(self.input_values, dtype=torch.float64)
        self.groups = tuple(str(g) for g in self.groups)
        B = self.t.shape[0] if self.t.dim() == 2 else -1
        if self.t.dim() != 2 or self.t.shape[1] < 2:
            raise ValueError(f"t must have shape (B, T) with T >= 2, got {tuple(self.t.shape)}")
        if self.y.dim() != 3 or self.y.shape[:2] != self.t.shape:
            raise ValueError(f"y must have shape (B, T, n_obs) with (B, T) = {tuple(self.t.shape)}, got {tuple(self.y.shape)}")
        if self.ctx.dim() != 2 or self.ctx.shape[0] != B:
            raise ValueError(f"ctx must have shape (B, C) with B = {B}, got {tuple(self.ctx.shape)}")
        if self.input_times.dim() != 2 or self.input_times.shape[0] != B:
            raise ValueError(f"input_times must have shape (B, J), got {tuple(self.input_times.shape)}")
        if self.input_values.dim() != 3 or self.input_values.shape[:2] != self.input_times.shape:
            raise ValueError(f"input_values must have shape (B, J, K) with (B, J) = {tuple(self.input_times.shape)}")
        if len(self.groups) != B:
            raise ValueError(f"groups must name the subject of each of the {B} windows, got {len(self.groups)}")
        if not torch.isfinite(self.t).all() or (self.t[:, 1:] <= self.t[:, :-1]).any():
            raise ValueError("t must be finite and strictly increasing in every window")
        if torch.isinf(self.y).any():
            raise ValueError("y must be finite or NaN (missing)")
        if torch.isnan(self.y[:, 0]).any():
            raise ValueError("y[:, 0] (the observables at each window's start) must be observed")
        if not torch.isfinite(self.ctx).all():
            raise ValueError("ctx must be finite")
        real = torch.isfinite(self.input_times)
        if (self.input_times[real] < self.t[:, :1].expand_as(self.input_times)[real]).any():
            raise ValueError("input switch times must not be earlier than the window's start t[:, 0]")

    def __len__(self) -> int:
        return self.t.shape[0]

    @property
    def n_obs(self) -> int:
        return self.y.shape[2]

    @property
    def n_inputs(self) -> int:
        return self.input_values.shape[2]

    def inputs(self, scale: Optional[torch.Tensor] = None) -> Inputs:
        """``hf.Inputs`` for the solver; values divided by ``scale`` ``(K,)`` when given."""
        v = self.input_values if scale is None else self.input_values / scale
        return Inputs(times=self.input_times, values=v)

    def subset(self, idx) -> "Windows":
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        return Windows(
            self.t[idx], self.y[idx], self.ctx[idx], self.input_times[idx], self.input_values[idx], tuple(self.groups[i] for i in idx)
        )

    def subjects(self) -> List[str]:
        """Distinct subject labels, in order of first appearance."""
        return list(dict.fromkeys(self.groups))

    def by_subjects(self, subjects: Sequence[str]) -> "Windows":
        s = set(subjects)
        return self.subset([i for i, g in enumerate(self.groups) if g in s])

    def kfold(self, k: int, seed: int = 0) -> Iterator[Tuple["Windows", "Windows"]]:
        """``k`` (train, validation) splits by subject (a subject's windows stay together)."""
        subs = self.subjects()
        if not 2 <= k <= len(subs):
            raise ValueError(f"folds must be in [2, number of subjects = {len(subs)}], got {k}")
        order = torch.randperm(len(subs), generator=torch.Generator().manual_seed(seed)).tolist()
        for f in range(k):
            val = [subs[i] for j, i in enumerate(order) if j % k == f]
            train = [s for s in subs if s not in val]
            yield self.by_subjects(train), self.by_subjects(val)

    @staticmethod
    def from_series(
        series: Sequence[Tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
        context: int,
        horizon: int,
        stride: Optional[int] = None,
    ) -> "Windows":
        """Cut long records into windows.

        Args:
            series: per record ``(subject, times (N,), obs (N, n_obs), input_times (M,),
                input_values (M, K))``; inputs piecewise constant from each switch time on
                (0 before the first).
            context: number of observations known at the window start ``t0`` (``t0`` included,
                ``>= 1``). The encoder features are these ``context`` observations (oldest
                first, flattened) followed by, for each of the ``context - 1`` intervals between
                them, the integral of every input over it (``(context - 1) * K`` values).
            horizon: observations predicted after ``t0``.
            stride: observations between window starts (default ``horizon``).
        """
        if context < 1 or horizon < 1:
            raise ValueError(f"context and horizon must be >= 1, got {context}, {horizon}")
        stride = horizon if stride is None else int(stride)
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        rows = []
        for sub, times, obs, it, iv in series:
            times = np.asarray(times, dtype=np.float64)
            obs = np.asarray(obs, dtype=np.float64).reshape(len(times), -1)
            it = np.asarray(it, dtype=np.float64).reshape(-1)
            iv = np.asarray(iv, dtype=np.float64).reshape(len(it), -1)
            for s in range(context - 1, len(times) - horizon, stride):
                t0 = times[s]
                tw = times[s : s + horizon + 1]
                yw = obs[s : s + horizon + 1]
                if np.isnan(yw[0]).any():
                    continue
                co = obs[s - context + 1 : s + 1]
                if np.isnan(co).any():
                    continue
                ct = times[s - context + 1 : s + 1]
                integ = [_integral(it, iv, ct[j], ct[j + 1]) for j in range(context - 1)]
                ctx = np.concatenate([co.reshape(-1)] + integ) if integ else co.reshape(-1)
                # inputs from t0 on: the value in force at t0, then the later switches up to the window's end
                u0 = _value_at(it, iv, t0)
                later = (it > t0) & (it <= tw[-1])
                wt = np.concatenate([[t0], it[later]])
                wv = np.concatenate([u0[None], iv[later]])
                rows.append((sub, tw, yw, ctx, wt, wv))
        if not rows:
            raise ValueError("no complete window: records too short for context + horizon")
        J = max(len(r[4]) for r in rows)
        K = rows[0][5].shape[1]
        B = len(rows)
        inp_t = np.full((B, J), math.inf)
        inp_v = np.zeros((B, J, K))
        for b, r in enumerate(rows):
            inp_t[b, : len(r[4])] = r[4]
            inp_v[b, : len(r[4])] = r[5]
            inp_v[b, len(r[4]) :] = r[5][-1]
        return Windows(
            t=torch.as_tensor(np.stack([r[1] for r in rows])),
            y=torch.as_tensor(np.stack([r[2] for r in rows])),
            ctx=torch.as_tensor(np.stack([r[3] for r in rows])),
            input_times=torch.as_tensor(inp_t),
            input_values=torch.as_tensor(inp_v),
            groups=tuple(r[0] for r in rows),
        )


def _value_at(it: np.ndarray, iv: np.ndarray, t: float) -> np.ndarray:
    j = int(np.searchsorted(it, t, side="right")) - 1
    return iv[j] if j >= 0 else np.zeros(iv.shape[1])


def _integral(it: np.ndarray, iv: np.ndarray, a: float, b: float) -> np.ndarray:
    """``int_a^b u(t) dt`` of a piecewise-constant input (value ``iv[j]`` from ``it[j]``)."""
    pts = np.concatenate([[a], it[(it > a) & (it < b)], [b]])
    return sum((_value_at(it, iv, pts[i]) * (pts[i + 1] - pts[i]) for i in range(len(pts) - 1)), np.zeros(iv.shape[1]))
