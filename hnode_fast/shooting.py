"""Multiple shooting: fit trajectories piecewise, from learnable per-segment initial states.

Each trajectory's output grid ``t[b, 0..T-1]`` is cut at the columns ``a_0 = 0 < a_1 < ... <
a_{K-1} < T - 1`` (``a_k = k * seg_len``); segment ``k`` runs from ``t[b, a_k]`` to
``t[b, a_{k+1}]`` (the last one to ``t[b, T-1]``) starting from a state ``s_k (B, D)``:
``s_0`` is the trajectory's known initial state (learnable with ``learn_first``) and
``s_1 .. s_{K-1}`` are parameters. All ``K * B`` segments are solved in ONE
:func:`hf.odeint` call with per-row grids, so every backend, events and inputs work unchanged.

Assembled prediction: column ``j`` of trajectory ``b`` comes from the segment that contains it
(``a_k <= j < a_{k+1}``; the last column from the last segment). Continuity defects
``g_k = y_k(t[a_{k+1}]) - s_{k+1}``, shape ``(K - 1, B, D)``; the penalty is
``weight * mean(g^2)``. With ``seg_len >= T - 1`` there is one segment: single shooting.

Doses (``hf.Events``) at ``t`` in ``[t[a_k], t[a_{k+1}])`` belong to segment ``k`` (the last
segment takes every later dose). An output at a dose time is the pre-dose state (the solver's
convention), so a segment's end and the next segment's start both mean the pre-dose state and
a dose exactly at a segment start is applied at the start of that segment.

:func:`grow` lengthens the segments during training (continuation): the new states are the
current assembled prediction at the new cut columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import nn

from .events import Events, Inputs
from .solve import odeint
from .types import Stats


def segment_starts(T: int, seg_len: int) -> List[int]:
    """Cut columns ``[0, seg_len, 2 seg_len, ...]`` strictly before the last column ``T - 1``."""
    if T < 2:
        raise ValueError(f"multiple shooting needs at least 2 output times, got T={T}")
    if int(seg_len) < 1:
        raise ValueError(f"seg_len must be >= 1 output interval, got {seg_len}")
    return list(range(0, T - 1, int(seg_len)))


class MultipleShooting(nn.Module):
    """Per-segment initial states of a multiple-shooting fit (an ``nn.Module``: train its
    ``states`` with the model's parameters).

    Args:
        t: output times ``(T,)`` shared or ``(B, T)`` per trajectory, strictly increasing.
        seg_len: output intervals per segment (``>= 1``).
        init: ``(T, B, D)`` a guess of the state at every output column (observations where
            the whole state is observed, or a forward solve of the untrained model); the
            segment states start at ``init[a_k]``.
        learn_first: also learn ``s_0`` (otherwise the ``y0`` given to :meth:`forward` is used).

    Attributes: ``starts`` (list of K cut columns), ``states`` parameter ``(K - 1, B, D)`` (or
    ``(K, B, D)`` with ``learn_first``).
    """

    t: torch.Tensor  # float64 buffer (B, T)

    def __init__(self, t: torch.Tensor, seg_len: int, init: torch.Tensor, learn_first: bool = False) -> None:
        super().__init__()
        if init.dim() != 3:
            raise ValueError(f"init must have shape (T, B, D), got {tuple(init.shape)}")
        T, B, D = init.shape
        tt = torch.as_tensor(t, dtype=torch.float64)
        tt = tt.reshape(1, -1).expand(B, -1) if tt.dim() == 1 else tt
        if tt.shape != (B, T):
            raise ValueError(f"t must have shape ({T},) or ({B}, {T}) to match init (T, B, D) = {tuple(init.shape)}, got {tuple(tt.shape)}")
        if not torch.isfinite(tt).all() or bool((tt[:, 1:] <= tt[:, :-1]).any()):
            raise ValueError("t must be finite and strictly increasing in every row")
        if not torch.isfinite(init.detach()).all():
            raise ValueError("init must be finite (fill unobserved entries, e.g. from a forward solve)")
        self.starts = segment_starts(T, seg_len)
        self.seg_len = int(seg_len)
        self.learn_first = bool(learn_first)
        self.register_buffer("t", tt.clone())
        first = 0 if learn_first else 1
        self.states = nn.Parameter(init.detach()[self.starts[first:]].clone())

    @property
    def n_segments(self) -> int:
        return len(self.starts)

    def _grids(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-segment grids ``(K * B, L)`` (``L = seg_len + 1``; a short last segment padded by
        tiny increasing steps) and the number of real columns per segment ``(K,)``."""
        t = self.t
        B, T = t.shape
        K, L = self.n_segments, self.seg_len + 1
        rows, lens = [], []
        for k, a in enumerate(self.starts):
            b = self.starts[k + 1] if k + 1 < K else T - 1
            g = t[:, a : b + 1]
            n = g.shape[1]
            if n < L:
                span = (t[:, -1] - t[:, 0]).clamp(min=1e-300)
                pad = g[:, -1:] + 1e-9 * span[:, None] * torch.arange(1, L - n + 1, dtype=t.dtype, device=t.device)
                g = torch.cat([g, pad], dim=1)
            rows.append(g)
            lens.append(n)
        return torch.cat(rows, dim=0), torch.tensor(lens)

    def _events(self, events: Optional[Events]) -> Optional[Events]:
        """Each segment row keeps its trajectory's doses in ``[t[a_k], t[a_{k+1}])``."""
        if events is None:
            return None
        B = self.t.shape[0]
        ev_t = events.times.to(self.t.device).expand(B, -1)
        ev_s = events.states.to(self.t.device).expand(B, -1)
        ev_a = events.amounts.expand(B, -1)
        K = self.n_segments
        ts, ss, am = [], [], []
        for k, a in enumerate(self.starts):
            lo = self.t[:, a : a + 1]
            keep = ev_t >= lo
            if k + 1 < K:
                keep = keep & (ev_t < self.t[:, self.starts[k + 1]][:, None])
            tk = torch.where(keep, ev_t, torch.full_like(ev_t, float("inf")))
            tk, order = torch.sort(tk, dim=1)
            ts.append(tk)
            ss.append(torch.gather(ev_s, 1, order))
            zero = torch.zeros((), dtype=ev_a.dtype, device=ev_a.device)
            am.append(torch.where(torch.isfinite(tk).to(ev_a.device), torch.gather(ev_a, 1, order.to(ev_a.device)), zero))
        return Events(times=torch.cat(ts), states=torch.cat(ss), amounts=torch.cat(am))

    def forward(
        self,
        field,
        y0: torch.Tensor,
        *,
        events: Optional[Events] = None,
        inputs: Optional[Inputs] = None,
        rtol: float = 1e-5,
        atol: float = 1e-7,
        backend: str = "auto",
        **odeint_kw,
    ) -> Tuple[torch.Tensor, torch.Tensor, Stats]:
        """Solve every segment.

        Args:
            field: a :class:`hf.HybridField` (``(B, D) -> (B, D)``).
            y0: ``(B, D)`` initial states (ignored with ``learn_first``).
            events, inputs: the trajectories' own (``B`` rows); split / repeated per segment.
            rtol, atol, backend, odeint_kw: passed to :func:`hf.odeint`.

        Returns ``(y (T, B, D), gaps (K - 1, B, D), stats)``: the assembled prediction, the
        continuity defects ``y_k(end) - s_{k+1}`` and the solver's stats of the ``K * B`` rows
        (row ``k * B + b`` is segment ``k`` of trajectory ``b``).
        """
        B, T = self.t.shape
        D = self.states.shape[-1]
        if y0.shape != (B, D):
            raise ValueError(f"y0 must have shape ({B}, {D}), got {tuple(y0.shape)}")
        K, L = self.n_segments, self.seg_len + 1
        s = self.states if self.learn_first else torch.cat([y0[None].to(self.states.dtype), self.states], dim=0)
        grid, lens = self._grids()
        inp = None
        if inputs is not None:
            it = inputs.times.expand(B, -1).repeat(K, 1)
            iv = inputs.values.expand(B, -1, -1).repeat(K, 1, 1)
            inp = Inputs(times=it, values=iv)
        ev = self._events(events)
        kw = dict(rtol=rtol, atol=atol, backend=backend, events=ev, inputs=inp, return_stats=True, **odeint_kw)
        y, st = odeint(field, s.reshape(K * B, D), grid, **kw)
        y = y.reshape(L, K, B, D)
        parts = [y[: self.seg_len, k] for k in range(K - 1)]
        parts.append(y[: int(lens[-1]), K - 1])
        pred = torch.cat(parts, dim=0)
        gaps = y[self.seg_len, : K - 1] - s[1:] if K > 1 else y.new_zeros(0, B, D)
        return pred, gaps, st


def continuity_penalty(gaps: torch.Tensor) -> torch.Tensor:
    """``mean(g^2)`` over all defects (0 for a single segment)."""
    if gaps.numel() == 0:
        return gaps.new_zeros(())
    g = gaps.nan_to_num(nan=0.0)
    return (g**2).mean()


@torch.no_grad()
def grow(ms: MultipleShooting, pred: torch.Tensor, seg_len: int) -> MultipleShooting:
    """A new :class:`MultipleShooting` with longer segments ``seg_len``, its states taken from
    ``pred (T, B, D)`` (the current assembled prediction) at the new cut columns."""
    if int(seg_len) < ms.seg_len:
        raise ValueError(f"grow() lengthens segments: seg_len {seg_len} < current {ms.seg_len}")
    init = pred.detach().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).clone()
    if ms.learn_first:
        init[0] = ms.states[0]
    out = MultipleShooting(ms.t, seg_len, init, learn_first=ms.learn_first)
    return out.to(device=ms.states.device, dtype=ms.states.dtype)


@dataclass
class Shooting:
    """Multiple-shooting options for :func:`hf.fit`.

    Args:
        seg_len: output intervals per segment (``>= 1``).
        weight: continuity penalty weight ``w`` (loss ``+= w * mean(g^2)``).
        grow_every: every this many epochs multiply ``seg_len`` by ``grow_factor`` (0: never);
            once a segment spans the whole grid training is single shooting.
        grow_factor: integer factor (``>= 2``).
        learn_first: also learn the first state of each trajectory.
        states_lr: learning rate of the segment states (default: ``fit``'s ``lr``).
    """

    seg_len: int = 4
    weight: float = 1.0
    grow_every: int = 0
    grow_factor: int = 2
    learn_first: bool = False
    states_lr: Optional[float] = None

    def __post_init__(self) -> None:
        if int(self.seg_len) < 1:
            raise ValueError(f"Shooting.seg_len must be >= 1, got {self.seg_len}")
        if not (self.weight >= 0 and math.isfinite(self.weight)):
            raise ValueError(f"Shooting.weight must be finite and >= 0, got {self.weight}")
        if int(self.grow_every) < 0 or int(self.grow_factor) < 2:
            raise ValueError(f"Shooting.grow_every must be >= 0 and grow_factor >= 2, got {self.grow_every}, {self.grow_factor}")


@torch.no_grad()
def initial_guess(field, y0: torch.Tensor, t: torch.Tensor, events=None, observe=None, y_obs=None, obs_mask=None, **kw) -> torch.Tensor:
    """``(T, B, D)`` starting values for the segment states: a forward solve of ``field`` from
    ``y0`` (NaN -> 0), with observed entries replaced by ``y_obs / scale`` where ``observe`` is
    an :class:`hf.Observe` (``y_obs``, ``obs_mask``: ``(B, T, n_obs)``)."""
    guess = odeint(field, y0, t, events=events, **kw).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
    idx = getattr(observe, "idx", None)
    if idx is not None and y_obs is not None and obs_mask is not None:
        scale = torch.exp(observe.log_scale.detach()).to(guess.dtype)
        vals = (y_obs.permute(1, 0, 2) / scale).to(guess.dtype)
        m = obs_mask.permute(1, 0, 2)
        cur = guess[..., idx]
        guess[..., idx] = torch.where(m, vals, cur)
    return guess


__all__ = ["MultipleShooting", "Shooting", "segment_starts", "continuity_penalty", "grow", "initial_guess"]
