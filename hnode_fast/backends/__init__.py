"""Backends: each takes a validated :class:`~hnode_fast.solve.Problem` and returns ``(y, Stats)``.

``backend="auto"`` picks the fastest backend that is built and supports the problem; asking
for one that is not built raises instead of falling back silently.
"""

from __future__ import annotations

from . import reference as _reference
from .caps import CAPS

_BUILT = {"reference": _reference.solve}


def available() -> list:
    """Names of the backends built into this install (``"triton"``: Triton is importable; its
    kernels run on CUDA tensors, and on CPU tensors only under ``TRITON_INTERPRET=1``)."""
    return sorted(_BUILT)


from . import cpu as _cpu  # noqa: E402

if _cpu.is_available():
    _BUILT["cpu"] = _cpu.solve


from . import cuda as _cuda  # noqa: E402

if _cuda.is_available():
    _BUILT["cuda"] = _cuda.solve


from . import triton as _triton  # noqa: E402  (imports triton lazily, on first use)

if _triton.has_triton():
    _BUILT["triton"] = _triton.solve  # never picked by "auto"


def supports(backend: str, adjoint: str = "discrete") -> bool:
    """Whether ``backend`` is built and implements ``adjoint``."""
    return backend in _BUILT and adjoint in CAPS[backend].adjoints


def resolve(prob, backend: str) -> str:
    """The backend that solves ``prob`` for ``backend`` (``"auto"``: cuda for CUDA tensors when it
    supports the problem, else cpu when it does, else reference); raises if it is not built."""
    if backend == "auto":
        if "cuda" in _BUILT and _cuda.supports(prob):
            backend = "cuda"
        else:
            backend = "cpu" if ("cpu" in _BUILT and _cpu.supports(prob)) else "reference"
    if backend == "cuda" and backend not in _BUILT:
        raise NotImplementedError(_cuda.unavailable_reason())
    if backend not in _BUILT:
        raise NotImplementedError(f"backend={backend!r} is not available in this build (available: {available()}); see hf.build_info()")
    CAPS[backend].require(prob)
    return backend


def run(prob, backend: str):
    """Solve ``prob`` on the resolved ``backend``: ``(y (T, B, N), Stats)``."""
    if prob.checks and not CAPS[backend].deferred_checks:
        prob.run_checks()  # backends whose op takes no deferred (torch.compile) checks branch here
    return _BUILT[backend](prob)


def dispatch(prob, backend: str):
    return run(prob, resolve(prob, backend))


_SLOPES = {"reference": _reference.output_slopes}
if "cpu" in _BUILT:
    _SLOPES["cpu"] = _cpu.output_slopes


def supports_time_grad(backend: str) -> bool:
    """Whether ``backend`` gives gradients with respect to the output times ``t``."""
    return CAPS[backend].time_grad and backend in _SLOPES


def output_slopes(prob, backend: str):
    """``(T, B, N)``: the time derivative of ``backend``'s dense-output interpolant at each
    output time of ``prob`` (row 0 zeros, NaN after a failure), from a forward solve without
    gradients (same steps as the solve)."""
    return _SLOPES[backend](prob)
