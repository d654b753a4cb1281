"""Per-trajectory discontinuities: bolus doses (:class:`Events`) and piecewise-constant
exogenous inputs (:class:`Inputs`). Both restart the integrator at their times."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .checks import EAGER, CheckSink


def _as2d(x, name: str, dtype=None) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=dtype)
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (B, K), got {tuple(x.shape)}")
    return x


@dataclass
class Events:
    """Bolus doses: at ``times[b, k]`` add ``amounts[b, k]`` to state ``states[b, k]``.

    Args:
        times: ``(B, K)`` float dose times (float64 internally), or ``(K,)`` for one row shared by
            every trajectory; pad unused slots with ``+inf``. Unsorted rows are fine. NaN and
            ``-inf`` raise ``ValueError``.
        states: ``(B, K)`` integer state indices in ``[0, D)`` (checked against the field when
            solving), same shape as ``times``.
        amounts: ``(B, K)`` float amounts added to the state (finite where the time is finite);
            may require grad (``adjoint="discrete"``: gradients reach them).

    Semantics: the solver integrates to each dose time, adds the amount and restarts (a new
    initial step); doses before a trajectory's first output time ``t[b, 0]`` raise. An output
    requested exactly at a dose time reports the pre-dose state (left limit), as
    pharmacometric trough samples do.

    Example (two subjects, oral doses into state 0 at t=0 and t=12; the second subject only once)::

        doses = hf.Events(times=[[0.0, 12.0], [0.0, float("inf")]], states=[[0, 0], [0, 0]],
                          amounts=[[4.0, 4.0], [3.5, 0.0]])
        y = hf.odeint(field, y0, t, events=doses)
    """

    times: torch.Tensor
    states: torch.Tensor
    amounts: torch.Tensor

    def __post_init__(self):
        self.times = _as2d(self.times, "events.times", torch.float64)
        self.states = _as2d(self.states, "events.states")
        self.amounts = _as2d(self.amounts, "events.amounts")
        if self.states.is_floating_point():
            if not torch.equal(self.states, self.states.round()):
                raise ValueError("events.states must be integer state indices")
        self.states = self.states.long()
        if not (self.times.shape == self.states.shape == self.amounts.shape):
            raise ValueError(
                f"events.times, events.states, events.amounts must have the same shape, got "
                f"{tuple(self.times.shape)}, {tuple(self.states.shape)}, {tuple(self.amounts.shape)}"
            )
        if torch.isnan(self.times).any() or (self.times == -float("inf")).any():
            raise ValueError("events.times must not contain NaN or -inf (pad with +inf)")
        real = torch.isfinite(self.times)
        if not torch.isfinite(self.amounts.detach()[real]).all():
            raise ValueError("events.amounts must be finite")

    def validate(self, B: int, D: int, t0: torch.Tensor, sink: CheckSink = EAGER) -> "Events":
        """Broadcast to ``B`` rows and check ranges against ``D`` states and the start times ``t0
        (B,)``; the range checks report through ``sink`` (raised at once by default; recorded as
        graph checks under ``torch.compile``, see :mod:`hnode_fast.checks`)."""
        ev = self
        if ev.times.shape[0] == 1 and B > 1:
            # the constructor's checks hold for the broadcast rows: not re-run (nor traced)
            ev = object.__new__(Events)
            ev.times, ev.states, ev.amounts = self.times.expand(B, -1), self.states.expand(B, -1), self.amounts.expand(B, -1)
        if ev.times.shape[0] != B:
            raise ValueError(f"events have {ev.times.shape[0]} rows but the batch has {B} trajectories")
        real = torch.isfinite(ev.times)
        sink.need(lambda: ~(((ev.states < 0) | (ev.states >= D)) & real).any(), f"events.states must be state indices in [0, {D})")
        sink.need(
            lambda: ~((ev.times < t0.to(ev.times.device)[:, None]) & real).any(),
            "events.times must not be earlier than the trajectory's first time",
        )
        return ev


@dataclass
class Inputs:
    """Exogenous inputs ``u(t)``, piecewise constant per trajectory.

    Args:
        times: ``(B, J)`` non-decreasing switch times per row (float64 internally; pad with
            ``+inf``), or ``(J,)`` shared by every trajectory. NaN raises ``ValueError``.
        values: ``(B, J, K)`` values of the ``K`` inputs from each switch time on, or ``(J, K)``
            shared by every trajectory; finite where the time is finite. ``K`` must equal the
            field's ``n_inputs`` (checked when solving).

    Math: ``u_b(t) = values[b, j]`` for ``times[b, j] <= t < times[b, j+1]`` and 0 before
    ``times[b, 0]``. Switch times are integration breakpoints (the solver stops and restarts
    there, so steps never straddle a jump). The field sees ``u`` through ``hf.Input`` terms and,
    when its network's ``in_dim`` is ``D + K``, as extra network features.

    Example (one input: an infusion of rate 2 between t=1 and t=3, for every trajectory)::

        infusion = hf.Inputs(times=[0.0, 1.0, 3.0], values=[[0.0], [2.0], [0.0]])
        y = hf.odeint(field, y0, t, inputs=infusion)
    """

    times: torch.Tensor
    values: torch.Tensor

    def __post_init__(self):
        self.times = _as2d(self.times, "inputs.times", torch.float64)
        v = torch.as_tensor(self.values)
        if v.dim() == 2:
            v = v.unsqueeze(0)
        if v.dim() != 3 or v.shape[:2] != self.times.shape:
            raise ValueError(f"inputs.values must have shape (B, J, K) with (B, J) = {tuple(self.times.shape)}, got {tuple(v.shape)}")
        self.values = v
        if torch.isnan(self.times).any():
            raise ValueError("inputs.times must not contain NaN")
        if (self.times[:, 1:] < self.times[:, :-1]).any():
            raise ValueError("inputs.times must be non-decreasing in each row")
        if not torch.isfinite(v.detach()[torch.isfinite(self.times)]).all():
            raise ValueError("inputs.values must be finite")

    @property
    def n_inputs(self) -> int:
        return self.values.shape[2]

    def validate(self, B: int, K: int) -> "Inputs":
        """Broadcast to ``B`` rows and check the number of inputs against the field's ``K`` (shape
        checks only: the same eagerly and under ``torch.compile``)."""
        inp = self
        if inp.times.shape[0] == 1 and B > 1:
            # the constructor's checks hold for the broadcast rows: not re-run (nor traced)
            inp = object.__new__(Inputs)
            inp.times, inp.values = self.times.expand(B, -1), self.values.expand(B, -1, -1)
        if inp.times.shape[0] != B:
            raise ValueError(f"inputs have {inp.times.shape[0]} rows but the batch has {B} trajectories")
        if inp.n_inputs != K:
            raise ValueError(f"inputs.values has {inp.n_inputs} inputs but the field expects K={K}")
        return inp

    def at(self, t: torch.Tensor, left: bool = False) -> torch.Tensor:
        """``u(t)`` for float64 ``t (B,)`` -> ``(B, K)``; ``left=True`` gives ``u(t-)``."""
        tt = self.times.to(t.device)
        t = t.to(torch.float64).reshape(-1, 1)
        before = (tt < t) if left else (tt <= t)
        j = before.sum(dim=1) - 1  # last switch at or before t
        vals = self.values.to(t.device)
        out = vals[torch.arange(vals.shape[0], device=t.device), j.clamp(min=0)]
        return torch.where((j >= 0)[:, None], out, torch.zeros_like(out))


def build_stops(out_t: torch.Tensor, events: Optional[Events], inputs: Optional[Inputs]) -> Optional[torch.Tensor]:
    """Sorted float64 breakpoints ``(B, S)``: dose times and input switch times (``+inf`` pads)."""
    parts = []
    if events is not None:
        parts.append(events.times.to(out_t.device, torch.float64))
    if inputs is not None:
        parts.append(inputs.times.to(out_t.device, torch.float64))
    if not parts:
        return None
    return torch.sort(torch.cat(parts, dim=1), dim=1).values
