"""``hf.odeint``: adaptive Dormand–Prince solves with per-trajectory steps, events and inputs.

See docs/design.md (the numerical contract, how a call travels to the kernels). ``odeint``
validates everything, then hands the problem to a backend (``hnode_fast.backends``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import List, Optional, Tuple

import torch

from . import _hostcheck
from .checks import CheckSink, run_checks_once
from .events import Events, Inputs
from .fields.hybrid import HybridField
from .types import Stats

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
ADJOINTS = ("discrete", "backsolve")
STEP_MODES = ("per_sample", "shared")
METHODS = ("dopri5",)
# torchdiffeq's other method names: a clear NotImplementedError instead of "unknown method"
_OTHER_METHODS = (
    "dopri8",
    "bosh3",
    "fehlberg2",
    "adaptive_heun",
    "tsit5",
    "euler",
    "midpoint",
    "heun2",
    "heun3",
    "rk4",
    "explicit_adams",
    "implicit_adams",
    "fixed_adams",
    "scipy_solver",
)
# torchdiffeq ``options`` keys and what they mean here
_OPTIONS = ("first_step", "max_num_steps")


@dataclass(frozen=True)
class Problem:
    """A validated solve, as backends receive it. ``y0 (B, D)``; ``out_t`` float64 ``(B, T)``."""

    func: object
    field_like: bool
    y0: torch.Tensor
    out_t: torch.Tensor
    # shape of one output row as returned to the user: y is (T, *out_shape)
    out_shape: Tuple[int, ...]
    # a plain callable solved as ONE state of this shape (torchdiffeq's semantics, B = 1, y0 and
    # the engine see it flattened to (1, N)); None for per-trajectory problems
    state_shape: Optional[Tuple[int, ...]]
    rtol: float
    atol: float
    step_mode: str
    adjoint: str
    max_steps: int
    events: Optional[Events]
    inputs: Optional[Inputs]
    # torchdiffeq's options["first_step"]: the first step's size (reference backend)
    first_step: Optional[float] = None
    # Under torch.compile: the data-dependent checks of ``_validate`` as ``(0-dim bool tensor,
    # ValueError message)`` pairs (hnode_fast/checks.py), computed in the graph instead of branched
    # on while tracing. Backends whose op takes them (``Caps.deferred_checks``: cpu, cuda) hand them
    # to it (the op raises); for the others ``backends.run`` calls ``run_checks()`` first.
    checks: List[Tuple[torch.Tensor, str]] = dc_field(default_factory=list)
    # Eager, for an nn.Module func: its (parameters, buffers) as listed by _validate
    # (``_hostcheck.module_tensors``), so a backend does not walk the modules again.
    module_tensors: Optional[Tuple[List[torch.Tensor], List[torch.Tensor]]] = None

    def run_checks(self) -> None:
        """Raise ``ValueError`` for the first failed deferred check (graph-breaks under compile)."""
        run_checks_once(self.checks)


def _all_finite(x: torch.Tensor):
    return lambda: torch.isfinite(x.detach()).all()


def _check_finite_params(func, sink: CheckSink, params: Optional[List[torch.Tensor]] = None) -> None:
    """ValueError naming the first parameter of ``func`` holding NaN or inf.

    Eager: one pass over all parameters in one call (``_hostcheck.first_nonfinite``; ``params``:
    ``func``'s parameters if already listed); the names are only looked up to name the culprit.
    It runs on every call: a cache keyed on tensor versions would miss writes through ``p.data``,
    which do not bump ``p._version``. Recording (torch.compile, GPU): one check per parameter.
    """
    if not isinstance(func, torch.nn.Module):
        return
    if sink.recording:
        for name, p in func.named_parameters():
            sink.need(_all_finite(p), f"parameter {name!r} of func contains NaN or inf")
        return
    if params is None:
        params = _hostcheck.module_tensors(func)[0]
    i = _hostcheck.first_nonfinite(params)
    if i >= 0:
        name = next((n for n, p in func.named_parameters() if p is params[i]), "?")
        raise ValueError(f"parameter {name!r} of func contains NaN or inf")


def _method_and_options(method, options, max_steps):
    """``(max_steps, first_step)`` from torchdiffeq's ``method`` / ``options``; errors name what is
    supported."""
    if method is None:
        method = "dopri5"
    if method not in METHODS:
        if method in _OTHER_METHODS:
            raise NotImplementedError(f"method={method!r} is not implemented in hnode_fast; supported: {', '.join(METHODS)}")
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    first_step = None
    if options is not None:
        if not isinstance(options, dict):
            raise ValueError(f"options must be a dict, got {type(options).__name__}")
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ValueError(
                f"options {unknown} are not supported by hnode_fast (supported: {list(_OPTIONS)}; "
                "the error norm is the RMS of scipy's RK45, grid points are not taken)"
            )
        if options.get("max_num_steps") is not None:
            max_steps = options["max_num_steps"]
        fs = options.get("first_step")
        if fs is not None:
            if isinstance(fs, torch.Tensor):
                fs = float(fs)
            if isinstance(fs, bool) or not isinstance(fs, (int, float)) or not math.isfinite(fs) or fs <= 0:
                raise ValueError(f"options['first_step'] must be a positive number, got {fs!r}")
            first_step = float(fs)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    return max_steps, first_step


def _validate(func, y0, t, rtol, atol, method, backend, adjoint, step_mode, events, inputs, max_steps, options=None) -> Problem:
    if not callable(func):
        raise ValueError("func must be callable as func(t, y)")
    max_steps, first_step = _method_and_options(method, options, max_steps)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if adjoint not in ADJOINTS:
        raise ValueError(f"adjoint must be one of {ADJOINTS}, got {adjoint!r}")
    field_like = isinstance(func, HybridField)
    if step_mode is None:  # fields: per trajectory; plain callables: torchdiffeq's one state
        step_mode = "per_sample" if field_like else "shared"
    if step_mode not in STEP_MODES:
        raise ValueError(f"step_mode must be one of {STEP_MODES}, got {step_mode!r}")
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
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if t.dim() not in (1, 2) or t.shape[-1] == 0:
        raise ValueError(f"t must have shape (T,) or (B, T), got {tuple(t.shape)}")
    # Shapes. Plain callables in step_mode="shared" (their default): y0 of any shape is ONE state
    # (torchdiffeq), solved flattened as (1, N). Per-trajectory problems: y0 (B, D) or (D,);
    # HybridFields also any leading batch shape (..., D).
    one_state = not field_like and (step_mode == "shared" or (y0.dim() == 1 and t.dim() == 1))
    state_shape: Optional[Tuple[int, ...]] = None
    if one_state:
        if y0.numel() == 0:
            raise ValueError(f"y0 must have at least one element, got shape {tuple(y0.shape)}")
        if t.dim() != 1:
            raise ValueError(
                f"t must have shape (T,) for a plain callable (one state, torchdiffeq's semantics), got {tuple(t.shape)}; "
                "per-trajectory time grids need step_mode='per_sample' with y0 of shape (B, D)"
            )
        state_shape = tuple(y0.shape)
        out_shape = state_shape
        y0_2d = y0.reshape(1, -1)
    elif field_like:
        if y0.dim() == 0 or y0.shape[-1] == 0:
            raise ValueError(f"y0 must have shape (..., D) with D = {func.n_states} states, got {tuple(y0.shape)}")
        if y0.dim() > 2:
            if t.dim() == 2:
                raise ValueError(f"per-trajectory t (B, T) needs y0 of shape (B, D), got {tuple(y0.shape)}")
            out_shape = tuple(y0.shape)
            y0_2d = y0.reshape(-1, y0.shape[-1])
        else:
            out_shape = tuple(y0.shape) if (y0.dim() == 2 or t.dim() == 1) else (t.shape[0], y0.shape[-1])
            y0_2d = y0
    else:
        if y0.dim() not in (1, 2) or y0.shape[-1] == 0:
            raise ValueError(
                f"step_mode='per_sample' with a plain callable needs y0 of shape (B, D) (func gets t of shape (B,) "
                f"and y of shape (B, D)), got {tuple(y0.shape)}"
            )
        out_shape = tuple(y0.shape) if y0.dim() == 2 else (t.shape[0], y0.shape[-1])
        y0_2d = y0
    # Data-dependent checks go to one sink (hnode_fast/checks.py): raised at once when eager on
    # the host; under torch.compile recorded as graph computations the backend's op evaluates at
    # run time (nothing is branched on while tracing, the solve stays one graph); eagerly on a GPU
    # recorded and read back together at the end (one device synchronisation, not one per check).
    compiling = torch.compiler.is_compiling()
    on_device = not compiling and y0.device.type != "cpu"
    sink = CheckSink(record=compiling or on_device)
    sink.need(lambda: torch.isfinite(y0.detach()).all(), "y0 contains NaN or inf", host=lambda: _hostcheck.all_finite(y0))
    if t.device != y0.device:
        raise ValueError(f"t is on {t.device} but y0 is on {y0.device}")
    tt = t.detach().to(torch.float64)
    sink.need(lambda: torch.isfinite(tt).all(), "t contains NaN or inf", host=lambda: _hostcheck.all_finite(tt))
    if tt.shape[-1] > 1:
        sink.need(
            lambda: (tt[..., 1:] > tt[..., :-1]).all(),
            "t must be strictly increasing (backward-in-time solves are not supported)",
            host=lambda: _hostcheck.rows_increasing(tt),
        )
    D = y0_2d.shape[-1]
    B = y0_2d.shape[0] if y0.dim() >= 2 or one_state else (tt.shape[0] if tt.dim() == 2 else 1)
    y = y0_2d.reshape(1, D).expand(B, D) if (y0.dim() == 1 and not one_state) else y0_2d
    if tt.dim() == 2:
        if tt.shape[0] != B:
            raise ValueError(f"t has {tt.shape[0]} rows but y0 has batch {B}")
        out_t = tt.contiguous()
    else:
        out_t = tt.reshape(1, -1).expand(B, -1).contiguous()
    if step_mode == "shared" and B > 1:
        sink.need(lambda: (out_t == out_t[:1]).all(), "step_mode='shared' needs one time grid t shared by all trajectories")
    # eager: the parameters listed once, for the finite check and the dtype/device checks
    mt = _hostcheck.module_tensors(func) if not compiling and isinstance(func, torch.nn.Module) else None
    params = mt[0] if mt is not None else None
    _check_finite_params(func, sink, params)
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
        inputs = inputs.validate(B, func.n_inputs)
    if events is not None:
        if not isinstance(events, Events):
            raise ValueError("events must be an hf.Events")
        events = events.validate(B, D, out_t[:, 0], sink)
    if on_device:
        sink.flush()
    return Problem(
        func=func,
        field_like=field_like,
        y0=y,
        out_t=out_t,
        out_shape=out_shape,
        state_shape=state_shape,
        rtol=rtol,
        atol=atol,
        step_mode=step_mode,
        adjoint=adjoint,
        max_steps=max_steps,
        events=events,
        inputs=inputs,
        checks=sink.records if compiling and sink.records is not None else [],
        module_tensors=mt,
        first_step=first_step,
    )


def odeint(
    func,
    y0,
    t,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    method: Optional[str] = None,
    backend: str = "auto",
    adjoint: str = "discrete",
    step_mode: Optional[str] = None,
    events: Optional[Events] = None,
    max_steps: int = 10_000,
    return_stats: bool = False,
    inputs: Optional[Inputs] = None,
    options: Optional[dict] = None,
):
    """Solve ``dy/dt = func(t, y)`` with adaptive Dormand–Prince 5(4) (scipy ``RK45`` rules).

    Two kinds of ``func``:

    * any callable ``func(t, y)`` (reference backend; a drop-in for ``torchdiffeq.odeint``): by
      default ``y0`` of any shape (0-dim included) is ONE state, ``func`` gets a 0-dim ``t`` and
      ``y`` of ``y0``'s shape and one step size serves the whole solve, as in torchdiffeq.
      ``step_mode="per_sample"`` (asked for explicitly) solves each row of a ``(B, D)`` ``y0`` as
      its own trajectory; ``func`` then gets ``t`` of shape ``(B,)`` and ``y (B, D)`` (torchode's
      convention). ``func`` must return a tensor of the state's shape (checked at the first call).
    * an :class:`hf.HybridField` (every backend): ``y0 (..., D)``, each leading index a
      trajectory with its own adaptive steps (``(D,)``: one trajectory).

    Args:
        y0: initial state, float32/float64 (shapes above).
        t: ``(T,)`` output times, strictly increasing, ``t[0]`` the initial time; per-trajectory
            problems also take ``(B, T)`` grids. ``t`` may require grad (reference and cpu
            backends, no events): the gradient of output ``i >= 1`` with respect to ``t_i`` is the
            time derivative of the solver's dense-output interpolant there (the exact derivative
            of the computed solution with the steps fixed); for ``t_0`` it is
            ``-dL/dy0 . f(t_0, y_0)`` (what torchdiffeq's ``odeint_adjoint`` returns: moving the
            start with ``y0`` fixed).
        rtol, atol: tolerances of the error norm
            ``RMS_i(err_i / (atol + rtol * max(|y_n,i|, |y_n+1,i|)))`` (per trajectory; over the
            whole state for one state). Defaults are torchdiffeq's (1e-7, 1e-9).
        method: ``"dopri5"`` (or None). torchdiffeq's other methods raise ``NotImplementedError``.
        backend: ``"auto"`` | ``"reference"`` | ``"cpu"`` | ``"cuda"`` | ``"triton"``.
        adjoint: ``"discrete"`` (exact gradient of the computed solution) or ``"backsolve"``
            (continuous adjoint solved backwards and re-anchored to the forward solution at every
            output time, as torchdiffeq's ``odeint_adjoint``: O(1) memory in the number of steps,
            gradient of the exact ODE solution to the solver tolerance).
        step_mode: ``"per_sample"`` (each trajectory adapts its own step, like torchode; default
            for HybridFields) or ``"shared"`` (one step for the batch, error RMS over the whole
            state, like torchdiffeq; default for plain callables).
        events: :class:`hf.Events` bolus doses (``+inf``-padded ``(B, K)``).
        max_steps: attempted steps (accepted + rejected) per trajectory before status 1.
        return_stats: also return :class:`Stats` (per-trajectory steps, rejections, NFE, status).
        inputs: :class:`hf.Inputs` exogenous piecewise-constant inputs for ``hf.Input`` terms.
        options: torchdiffeq's options dict: ``max_num_steps`` (sets ``max_steps``) and
            ``first_step`` (the first step's size; reference backend); other keys raise.

    Returns:
        ``y`` of shape ``(T, *y0.shape)`` (``(T, B, D)`` for a ``(D,)`` HybridField ``y0`` with
        ``(B, T)`` ``t``), or ``(y, stats)``. A trajectory that fails (status != 0) has NaN
        outputs after its failure.

    Under ``torch.compile`` with ``backend="cpu"`` (or ``"auto"`` resolving to it) the whole call
    traces into one graph; the checks on data (NaN/inf, increasing ``t``, event ranges) then run
    inside the graph and the op raises the same ``ValueError``. See docs/compile.md.
    """
    from . import backends

    prob = _validate(func, y0, t, rtol, atol, method, backend, adjoint, step_mode, events, inputs, max_steps, options)
    name = backends.resolve(prob, backend)
    t_grad = isinstance(t, torch.Tensor) and t.requires_grad and torch.is_grad_enabled()
    if t_grad:
        prob, y_start, tg = _time_grad_start(prob, t, name)
    y, stats = backends.run(prob, name)
    if t_grad:
        y = _time_grad_outputs(prob, name, y, y_start, tg)
    y = y.reshape((y.shape[0],) + tuple(prob.out_shape))
    return (y, stats) if return_stats else y


def _time_grad_start(prob: Problem, t: torch.Tensor, name: str):
    """Gradients with respect to ``t`` (see ``odeint``): the problem with ``y0`` replaced by
    ``y0 - (t0 - t0.detach()) f(t0, y0)`` (same value; ``dL/dt0 = -dL/dy0 . f``), the original
    ``y0`` (output row 0 does not move with ``t0``) and ``t`` as float64 ``(B, T)``."""
    from .backends import supports_time_grad
    from .reference.problem import make_fun

    if torch.compiler.is_compiling():
        raise NotImplementedError("gradients with respect to t are not supported under torch.compile; detach t")
    if not supports_time_grad(name):
        raise NotImplementedError(
            f"backend={name!r} has no gradient with respect to t (t.requires_grad=True): use backend='reference' or 'cpu', or detach t"
        )
    if prob.events is not None:
        raise NotImplementedError("gradients with respect to t are not supported with events (doses at fixed times); detach t")
    B = prob.y0.shape[0]
    tg = t.to(torch.float64)
    tg = tg.reshape(1, -1).expand(B, -1) if tg.dim() == 1 else tg
    y_start = prob.y0
    f = make_fun(prob.func, prob.field_like, prob.inputs, prob.state_shape, prob.y0.dtype)
    t0 = prob.out_t[:, 0]
    with torch.no_grad():
        f0 = f(t0, y_start.detach(), t0)
    y0 = y_start - (tg[:, :1] - tg[:, :1].detach()).to(y_start.dtype) * f0
    return dataclasses.replace(prob, y0=y0), y_start, tg


def _time_grad_outputs(prob: Problem, name: str, y: torch.Tensor, y_start: torch.Tensor, tg: torch.Tensor) -> torch.Tensor:
    """Rows ``i >= 1`` get ``(t_i - t_i.detach()) * slope_i`` added (same value, ``dL/dt_i =
    g_i . slope_i`` with ``slope_i`` the dense-output interpolant's time derivative); row 0 is the
    original ``y0``."""
    from .backends import output_slopes

    slopes = output_slopes(prob, name).nan_to_num(0.0)  # (T, B, N), detached
    dt = (tg - tg.detach()).t().to(y.dtype)[..., None]  # (T, B, 1): zero valued
    return torch.cat([y_start[None], y[1:] + dt[1:] * slopes[1:]], dim=0)


__all__ = ["odeint", "Events", "Inputs", "Stats", "Problem"]
