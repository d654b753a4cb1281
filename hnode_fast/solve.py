"""``hf.odeint``: adaptive Dormand–Prince solves with per-trajectory steps, events and inputs.

See DESIGN.md's numerical contract. ``odeint`` validates everything, then hands the problem
to a backend (``hnode_fast.backends``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import List, Optional, Tuple

import torch

from . import _hostcheck
from .events import Events, Inputs
from .fields.hybrid import HybridField
from .reference.engine import Stats

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
ADJOINTS = ("discrete", "backsolve")
STEP_MODES = ("per_sample", "shared")
METHODS = ("dopri5",)


@dataclass
class Problem:
    """A validated solve, as backends receive it. ``y0 (B, D)``; ``out_t`` float64 ``(B, T)``."""

    func: object
    field_like: bool
    y0: torch.Tensor
    out_t: torch.Tensor
    squeeze: bool
    rtol: float
    atol: float
    step_mode: str
    adjoint: str
    max_steps: int
    events: Optional[Events]
    inputs: Optional[Inputs]
    # Under torch.compile: the data-dependent checks of ``_validate`` as ``(0-dim bool tensor,
    # ValueError message)`` pairs, computed in the graph instead of branched on while tracing.
    # The cpu backend hands them to its op (which raises); other backends call ``run_checks()``.
    checks: List[Tuple[torch.Tensor, str]] = dc_field(default_factory=list)
    # Eager, for an nn.Module func: its (parameters, buffers) as listed by _validate
    # (``_hostcheck.module_tensors``), so a backend does not walk the modules again.
    module_tensors: Optional[Tuple[List[torch.Tensor], List[torch.Tensor]]] = None

    def run_checks(self) -> None:
        """Raise ``ValueError`` for the first failed deferred check (graph-breaks under compile)."""
        checks, self.checks = self.checks, []
        for ok, msg in checks:
            if not bool(ok):
                raise ValueError(msg)


def _check_finite_params(func, deferred: Optional[list] = None, params: Optional[List[torch.Tensor]] = None) -> None:
    """ValueError naming the first parameter of ``func`` holding NaN or inf.

    Eager: one pass over all parameters in one call (``_hostcheck.first_nonfinite``; ``params``:
    ``func``'s parameters if already listed); the names are only looked up to name the culprit.
    It runs on every call: a cache keyed on tensor versions would miss writes through ``p.data``,
    which do not bump ``p._version``. Under torch.compile: one deferred graph check per parameter.
    """
    if not isinstance(func, torch.nn.Module):
        return
    if deferred is not None:
        for name, p in func.named_parameters():
            deferred.append((torch.isfinite(p.detach()).all(), f"parameter {name!r} of func contains NaN or inf"))
        return
    if params is None:
        params = _hostcheck.module_tensors(func)[0]
    i = _hostcheck.first_nonfinite(params)
    if i >= 0:
        name = next((n for n, p in func.named_parameters() if p is params[i]), "?")
        raise ValueError(f"parameter {name!r} of func contains NaN or inf")


def _traced_inputs(inputs: Inputs, B: int, K: int) -> Inputs:
    """``Inputs.validate`` under torch.compile: the same checks (shapes only), and the broadcast
    copy made without re-running the constructor's (data-dependent, already passed) checks."""
    if inputs.times.shape[0] == 1 and B > 1:
        new = object.__new__(Inputs)
        new.times = inputs.times.expand(B, -1)
        new.values = inputs.values.expand(B, -1, -1)
        inputs = new
    if inputs.times.shape[0] != B:
        raise ValueError(f"inputs have {inputs.times.shape[0]} rows but the batch has {B} trajectories")
    if inputs.values.shape[2] != K:
        raise ValueError(f"inputs.values has {inputs.values.shape[2]} inputs but the field expects K={K}")
    return inputs


def _traced_events(events: Events, B: int, D: int, t0: torch.Tensor, deferred: list) -> Events:
    """``Events.validate`` under torch.compile: the range checks become deferred graph checks."""
    if events.times.shape[0] == 1 and B > 1:
        new = object.__new__(Events)
        new.times = events.times.expand(B, -1)
        new.states = events.states.expand(B, -1)
        new.amounts = events.amounts.expand(B, -1)
        events = new
    if events.times.shape[0] != B:
        raise ValueError(f"events have {events.times.shape[0]} rows but the batch has {B} trajectories")
    real = torch.isfinite(events.times)
    deferred.append((~(((events.states < 0) | (events.states >= D)) & real).any(), f"events.states must be state indices in [0, {D})"))
    deferred.append(
        (
            ~((events.times < t0.to(events.times.device)[:, None]) & real).any(),
            "events.times must not be earlier than the trajectory's first time",
        )
    )
    return events


def _run_checks_once(deferred: list) -> None:
    """Evaluate ``(0-dim bool tensor, message)`` checks with one read-back (one device sync);
    ``ValueError`` with the first failed check's message."""
    if not deferred:
        return
    oks = torch.stack([ok.reshape(()).to(deferred[0][0].device) for ok, _ in deferred]).cpu().tolist()
    for ok, (_, msg) in zip(oks, deferred):
        if not ok:
            raise ValueError(msg)


def _validate(func, y0, t, rtol, atol, method, backend, adjoint, step_mode, events, inputs, max_steps) -> Problem:
    if not callable(func):
        raise ValueError("func must be callable as func(t, y)")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if adjoint not in ADJOINTS:
        raise ValueError(f"adjoint must be one of {ADJOINTS}, got {adjoint!r}")
    if step_mode not in STEP_MODES:
        raise ValueError(f"step_mode must be one of {STEP_MODES}, got {step_mode!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if isinstance(tol, torch.Tensor):
            if tol.numel() != 1:
                raise ValueError(f"{name} must be a scalar")
            tol = float(tol)
        if not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {tol!r}")
    rtol, atol = float(rtol), float(atol)
    if rtol == 0 and atol == 0:
        raise ValueError("rtol and atol cannot both be 0")
    if not isinstance(y0, torch.Tensor):
        raise ValueError(f"y0 must be a torch.Tensor, got {type(y0).__name__}")
    if y0.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"y0 must be float32 or float64, got {y0.dtype}")
    if y0.dim() not in (1, 2) or y0.shape[-1] == 0:
        raise ValueError(f"y0 must have shape (B, D) or (D,), got {tuple(y0.shape)}")
    # Data-dependent checks: raised here when eager; under torch.compile they become graph
    # computations (``deferred``) that the backend evaluates at run time, so nothing is branched
    # on while tracing and the solve stays one graph. Eager on a GPU they are computed the same way
    # and read back together at the end (one device synchronisation instead of one per check).
    compiling = torch.compiler.is_compiling()
    on_device = not compiling and y0.device.type != "cpu"
    deferred: Optional[list] = [] if (compiling or on_device) else None
    if deferred is not None:
        deferred.append((torch.isfinite(y0.detach()).all(), "y0 contains NaN or inf"))
    elif not _hostcheck.all_finite(y0):
        raise ValueError("y0 contains NaN or inf")
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if t.dim() not in (1, 2) or t.shape[-1] == 0:
        raise ValueError(f"t must have shape (T,) or (B, T), got {tuple(t.shape)}")
    if t.device != y0.device:
        raise ValueError(f"t is on {t.device} but y0 is on {y0.device}")
    tt = t.detach().to(torch.float64)
    msg_inc = "t must be strictly increasing (backward-in-time solves are not supported)"
    if deferred is not None:
        deferred.append((torch.isfinite(tt).all(), "t contains NaN or inf"))
        if tt.shape[-1] > 1:
            deferred.append(((tt[..., 1:] > tt[..., :-1]).all(), msg_inc))
    else:
        if not _hostcheck.all_finite(tt):
            raise ValueError("t contains NaN or inf")
        if tt.shape[-1] > 1 and not _hostcheck.rows_increasing(tt):
            raise ValueError(msg_inc)
    squeeze = y0.dim() == 1 and tt.dim() == 1
    D = y0.shape[-1]
    B = y0.shape[0] if y0.dim() == 2 else (tt.shape[0] if tt.dim() == 2 else 1)
    y = y0.reshape(1, D).expand(B, D) if y0.dim() == 1 else y0
    if tt.dim() == 2:
        if tt.shape[0] != B:
            raise ValueError(f"t has {tt.shape[0]} rows but y0 has batch {B}")
        out_t = tt.contiguous()
    else:
        out_t = tt.reshape(1, -1).expand(B, -1).contiguous()
    if step_mode == "shared":
        msg_sh = "step_mode='shared' needs one time grid t shared by all trajectories"
        if deferred is not None:
            deferred.append(((out_t == out_t[:1]).all(), msg_sh))
        elif not bool((out_t == out_t[:1]).all()):
            raise ValueError(msg_sh)
    field_like = isinstance(func, HybridField)
    # eager: the parameters listed once, for the finite check and the dtype/device checks
    mt = _hostcheck.module_tensors(func) if not compiling and isinstance(func, torch.nn.Module) else None
    params = mt[0] if mt is not None else None
    _check_finite_params(func, deferred, params)
    if field_like:
        if D != func.n_states:
            raise ValueError(f"y0 has {D} states but the field has D={func.n_states}")
        p = params[0] if params else next(iter(func.parameters()), None)  # (params: None when tracing)
        if p is not None and p.dtype != y0.dtype:
            raise ValueError(
                f"y0 dtype {y0.dtype} differs from the field's parameters ({p.dtype}); convert one of them (e.g. field.to({y0.dtype}))"
            )
        if p is not None and p.device != y0.device:
            raise ValueError(f"y0 is on {y0.device} but the field's parameters are on {p.device}")
        if inputs is None:
            inputs = func.inputs
        if func.n_inputs > 0 and inputs is None:
            raise ValueError(f"the field has {func.n_inputs} exogenous inputs: pass inputs=hf.Inputs(...)")
    if inputs is not None:
        if not isinstance(inputs, Inputs):
            raise ValueError("inputs must be an hf.Inputs")
        if not field_like:
            raise ValueError("inputs are only supported for hf.HybridField funcs")
        inputs = inputs.validate(B, func.n_inputs) if deferred is None else _traced_inputs(inputs, B, func.n_inputs)
    if events is not None:
        if not isinstance(events, Events):
            raise ValueError("events must be an hf.Events")
        if deferred is None:
            events = events.validate(B, D, out_t[:, 0])
        else:
            events = _traced_events(events, B, D, out_t[:, 0], deferred)
    if on_device and deferred is not None:
        _run_checks_once(deferred)
        deferred = None
    return Problem(
        func=func,
        field_like=field_like,
        y0=y,
        out_t=out_t,
        squeeze=squeeze,
        rtol=rtol,
        atol=atol,
        step_mode=step_mode,
        adjoint=adjoint,
        max_steps=max_steps,
        events=events,
        inputs=inputs,
        checks=deferred if deferred is not None else [],
        module_tensors=mt,
    )


def odeint(
    func,
    y0,
    t,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    method: str = "dopri5",
    backend: str = "auto",
    adjoint: str = "discrete",
    step_mode: str = "per_sample",
    events: Optional[Events] = None,
    max_steps: int = 10_000,
    return_stats: bool = False,
    inputs: Optional[Inputs] = None,
):
    """Solve ``dy/dt = func(t, y)`` with adaptive Dormand–Prince 5(4) (scipy ``RK45`` rules).

    Args:
        func: an :class:`hf.HybridField` (every backend) or any callable ``func(t, y)``
            (reference backend; drop-in for ``torchdiffeq.odeint``).
        y0: ``(B, D)`` or ``(D,)`` initial state, float32/float64.
        t: ``(T,)`` shared or ``(B, T)`` per-trajectory output times, strictly increasing;
            ``t[..., 0]`` is the initial time.
        rtol, atol: tolerances of the error norm
            ``RMS_i(err_i / (atol + rtol * max(|y_n,i|, |y_n+1,i|)))`` (per trajectory).
        backend: ``"auto"`` | ``"reference"`` | ``"cpu"`` | ``"cuda"`` | ``"triton"``.
        adjoint: ``"discrete"`` (exact gradient of the computed solution) or ``"backsolve"``
            (continuous adjoint solved backwards: O(1) memory, approximate gradient).
        step_mode: ``"per_sample"`` (each trajectory adapts its own step, like torchode) or
            ``"shared"`` (one step for the batch, error RMS over the whole batch, like torchdiffeq).
        events: :class:`hf.Events` bolus doses (``+inf``-padded ``(B, K)``).
        max_steps: attempted steps (accepted + rejected) per trajectory before status 1.
        return_stats: also return :class:`Stats` (per-trajectory steps, rejections, NFE, status).
        inputs: :class:`hf.Inputs` exogenous piecewise-constant inputs for ``hf.Input`` terms.

    Returns:
        ``y`` of shape ``(T, B, D)`` (``(T, D)`` for ``(D,)`` y0 and ``(T,)`` t), or ``(y, stats)``.
        A trajectory that fails (status != 0) has NaN outputs after its failure.

    Under ``torch.compile`` with ``backend="cpu"`` (or ``"auto"`` resolving to it) the whole call
    traces into one graph; the checks on data (NaN/inf, increasing ``t``, event ranges) then run
    inside the graph and the op raises the same ``ValueError``. See docs/compile.md.
    """
    from .backends import dispatch

    prob = _validate(func, y0, t, rtol, atol, method, backend, adjoint, step_mode, events, inputs, max_steps)
    y, stats = dispatch(prob, backend)
    if prob.squeeze:
        y = y[:, 0]
    return (y, stats) if return_stats else y


__all__ = ["odeint", "Events", "Inputs", "Stats", "Problem"]
