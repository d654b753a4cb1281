"""Types shared by the solver front end, the reference oracle and every backend.

``Status`` mirrors the C++ core's status codes (``csrc/include/hnode/solve.h``; tests/test_types.py
checks that they agree), ``Stats`` is what ``hf.odeint(..., return_stats=True)`` returns.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

import torch


class Status(enum.IntEnum):
    """Per-trajectory outcome of a solve (``Stats.status``)."""

    OK = 0  # finished
    MAX_STEPS = 1  # max_steps attempts (accepted + rejected) made before the end
    DT_UNDERFLOW = 2  # the step size fell below the minimum step
    NONFINITE = 3  # non-finite values (NONFINITE_STREAK attempts in a row, or f(y0))


# consecutive non-finite attempts before a trajectory gives up with Status.NONFINITE
NONFINITE_STREAK = 8


@dataclass
class Stats:
    """Per-trajectory solver statistics, each ``(B,)`` int64 (``step_times`` float64 ``(B, S)``).

    ``status``: a :class:`Status` code (0 ok, 1 max_steps reached, 2 step size underflow, 3
    non-finite values). ``step_times``: accepted step end times (NaN padded), used by the local
    regularizer's biased sampler.
    """

    n_steps: torch.Tensor
    n_rejected: torch.Tensor
    nfe: torch.Tensor
    status: torch.Tensor
    step_times: Optional[torch.Tensor] = None

    def __repr__(self) -> str:
        def s(x):
            x = x.double()
            return f"mean {x.mean().item():.1f} max {int(x.max().item())}" if x.numel() else "-"

        ok = int((self.status == Status.OK).sum()) if self.status.numel() else 0
        return (
            f"Stats(B={self.status.numel()}, steps {s(self.n_steps)}, rejected {s(self.n_rejected)}, "
            f"nfe {s(self.nfe)}, ok {ok}/{self.status.numel()})"
        )
