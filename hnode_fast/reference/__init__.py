"""Plain-PyTorch reference: DP5 primitives, the adaptive loop, spec evaluation, backsolve.

This is the oracle every kernel is tested against; it favours clarity over speed.
"""

from . import dopri5
from .engine import Stats, integrate
from .spec_eval import eval_spec

__all__ = ["dopri5", "Stats", "integrate", "eval_spec"]
