"""How many OpenMP threads a cpu-backend solve uses: chosen from its work.

Each cpu solve (and each adjoint) is ONE parallel region: every thread solves its share of the
trajectories start to finish. A second thread pays off only when each thread gets enough work
to outweigh the fork/join and, on a busy machine, the wait for a descheduled peer (a thread
that the OS parks for a time slice stalls the whole region: a B=20, D=2 training step measured
19 ms with two threads against 1 ms with one under load). So the default is::

    threads = min(torch.get_num_threads(), B, max(1, floor(B * cost / WORK_PER_THREAD)))
    cost    = stored network weights + 8 * mechanistic terms + 40 * D      (per field evaluation)

``cost`` approximates the multiply-adds of one field evaluation plus the Runge-Kutta stage
arithmetic; ``WORK_PER_THREAD`` (10,000) puts roughly a millisecond of solve on each thread for a
typical 50-step trajectory, so a B=20, D=2, 50-unit MLP (cost 280) runs on one thread and an
8-state (32, 32) MLP at B=64 (cost 1,856) on two.

Explicit control: :func:`set_cpu_threads` (or the environment variable ``HNODE_CPU_THREADS``)
fixes the count (capped by ``B``); ``torch.set_num_threads`` stays the upper bound of the
automatic choice. The thread count changes the summation order of the parameter gradients
(summed per thread, then reduced in a fixed order), not the forward solution.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

WORK_PER_THREAD = 10_000
_FIXED: Optional[int] = None  # set_cpu_threads; None: by work size


def _parse_env() -> Optional[int]:
    v = os.environ.get("HNODE_CPU_THREADS", "").strip().lower()
    if v in ("", "auto"):
        return None
    try:
        n = int(v)
    except ValueError:
        raise ValueError(f"HNODE_CPU_THREADS must be 'auto' or a positive integer, got {v!r}") from None
    if n < 1:
        raise ValueError(f"HNODE_CPU_THREADS must be 'auto' or a positive integer, got {v!r}")
    return n


def set_cpu_threads(n: Optional[int]) -> None:
    """Fix the cpu backend's thread count to ``n`` (capped by the batch), or ``None`` to choose it
    from the work (the default; see :mod:`hnode_fast.backends.threads`)."""
    global _FIXED
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"set_cpu_threads needs a positive int or None, got {n!r}")
    _FIXED = n


def get_cpu_threads() -> Optional[int]:
    """The fixed thread count, or ``None`` when it is chosen by work size."""
    return _FIXED if _FIXED is not None else _parse_env()


def eval_cost(header) -> int:
    """Work of one field evaluation plus its share of a step, from a FieldSpec header
    (``spec.ints[:12]`` as ints): ``weights + biases + 8 * terms + 40 * D``."""
    from ..fields.spec import H_CONST_OFF, H_D, H_NTERMS

    # params before const_off are the network's stored weights and biases
    return int(header[H_CONST_OFF]) + 8 * int(header[H_NTERMS]) + 40 * int(header[H_D])


def work_cap(header, B: int) -> int:
    """The most threads the work of ``B`` trajectories justifies: ``min(B, max(1, B * cost // WORK_PER_THREAD))``."""
    return max(1, min(B, (B * eval_cost(header)) // WORK_PER_THREAD))


def op_threads(header, B: int) -> int:
    """The ``n_threads`` argument of the cpu ops for ``B`` trajectories of the field with FieldSpec
    ``header``: the fixed count (capped by ``B``) when set, else ``-work_cap`` ("at most that many
    of torch's threads"), resolved when the op runs by :func:`resolve_threads`. Pure Python on the
    header, so under torch.compile it is a constant of the graph while torch's thread count is
    still read at run time."""
    fixed = get_cpu_threads()
    return max(1, min(fixed, B)) if fixed is not None else -work_cap(header, B)


def resolve_threads(n: int, available: Optional[int] = None) -> int:
    """The thread count of an op's ``n_threads``: ``n > 0`` exactly ``n``, ``0`` all of
    ``available`` (default ``torch.get_num_threads()``), ``-n`` at most ``n`` of them."""
    if n > 0:
        return int(n)
    top = torch.get_num_threads() if available is None else int(available)
    return top if n == 0 else min(top, -int(n))


def solve_threads(header, B: int, available: Optional[int] = None) -> int:
    """Threads for a solve of ``B`` trajectories of the field with FieldSpec ``header``
    (:func:`op_threads` resolved). ``available``: the upper bound (default ``torch.get_num_threads()``)."""
    return resolve_threads(op_threads(header, B), available)
