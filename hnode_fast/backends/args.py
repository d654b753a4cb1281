"""The solver ops' arguments, written once for every device: checks, packing into the dict the
C++ launchers read (``csrc/cpu/args_py.h``), checkpoint tensors, and a Problem's tensors.

The ten tensor arguments of ``hnode_fast::solve`` (and of its backward ops), in order:

=========  ===================  =======  ==========================================
name       shape                dtype    meaning
=========  ===================  =======  ==========================================
ints       (n,)                 int32    FieldSpec table, always a CPU tensor
params     (P,)                 y0's     FieldSpec parameter vector
y0         (B, D)               f32/f64  initial states
out_t      (B, T)               float64  output times (row b: trajectory b)
stops      (B, S)               float64  breakpoints (doses, input switches), +inf pad
ev_t       (B, E)               float64  dose times, +inf pad
ev_s       (B, E)               int32    dosed state index in [0, D)
ev_a       (B, E)               y0's     dose amounts
in_t       (B, J)               float64  input switch times
in_v       (B, J, K)            y0's     input values
=========  ===================  =======  ==========================================

Everything but ``ints`` lives on y0's device. Checkpoints (``ck_*``, see :func:`ck_empty`) are the
accepted steps a forward stores for the discrete adjoint.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple, Union

import torch
from torch import Tensor

from ..events import build_stops
from ..fields.spec import H_D, H_K, H_P
from .threads import resolve_threads

NAMES = ("ints", "params", "y0", "out_t", "stops", "ev_t", "ev_s", "ev_a", "in_t", "in_v")
# the ten tensors, then rtol, atol, max_steps, n_threads: the leading arguments of every solver op
SolveArgs = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, float, float, int, int]


def check(op: str, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, max_steps, device_type: str = "cpu") -> None:
    """Shapes, dtypes and devices of the ten tensor arguments (``ValueError`` naming ``op`` and the
    argument). ``device_type``: the device the kernel runs on (``"cpu"`` or ``"cuda"``); ``ints``
    is read by the host launcher and must be a CPU tensor in every case."""

    def need(cond, msg):
        if not cond:
            raise ValueError(f"{op}: {msg}")

    need(isinstance(y0, Tensor) and y0.dim() == 2 and y0.dtype in (torch.float32, torch.float64), "y0 must be (B, D) float32/float64")
    on_cpu = device_type == "cpu"
    need(y0.is_cpu if on_cpu else y0.device.type == device_type, f"y0 must be a {device_type.upper()} tensor")
    B, D = y0.shape
    need(ints.is_cpu, "ints (FieldSpec table) must be a CPU tensor")
    for name, x in zip(NAMES[1:], (params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v)):
        if on_cpu:
            need(x.is_cpu, f"{name} must be a CPU tensor")  # (x.device costs ~1 us per tensor)
        else:
            need(x.device == y0.device, f"{name} is on {x.device} but y0 is on {y0.device}")
    need(ints.dim() == 1 and ints.dtype == torch.int32 and ints.numel() >= 12, "ints must be a FieldSpec int32 table")
    need(params.dim() == 1 and params.dtype == y0.dtype, "params must be 1-D with y0's dtype")
    hdr = ints[:12].tolist()  # one read of the header (each int(ints[i]) is a torch op)
    need(hdr[H_D] == D and hdr[H_P] == params.numel(), "ints/params do not match y0 (D) or each other (P)")
    need(out_t.dim() == 2 and out_t.shape[0] == B and out_t.shape[1] >= 1 and out_t.dtype == torch.float64, "out_t must be float64 (B, T)")
    need(stops.dim() == 2 and stops.shape[0] == B and stops.dtype == torch.float64, "stops must be float64 (B, S)")
    need(ev_t.dim() == 2 and ev_t.shape[0] == B and ev_t.dtype == torch.float64, "ev_t must be float64 (B, E)")
    need(ev_s.shape == ev_t.shape and ev_s.dtype == torch.int32, "ev_s must be int32 with ev_t's shape")
    need(ev_a.shape == ev_t.shape and ev_a.dtype == y0.dtype, "ev_a must have ev_t's shape and y0's dtype")
    if ev_s.numel():
        need(bool(((ev_s >= 0) & (ev_s < D)).all()), "ev_s must hold state indices in [0, D)")
    K = hdr[H_K]
    need(in_t.dim() == 2 and in_t.shape[0] == B and in_t.dtype == torch.float64, "in_t must be float64 (B, J)")
    need(
        in_v.dim() == 3 and in_v.shape[:2] == in_t.shape and in_v.dtype == y0.dtype and (in_v.shape[2] == K or in_t.shape[1] == 0),
        "in_v must be (B, J, K) with y0's dtype",
    )
    need(max_steps >= 1, "max_steps must be >= 1")


def check_grad_y(op: str, grad_y: Tensor, y0: Tensor, out_t: Tensor, what: str = "grad_y") -> None:
    """``grad_y`` (or the forward's outputs ``y_out``) must be ``(T, B, D)`` with y0's dtype."""
    if grad_y.shape != (out_t.shape[1],) + tuple(y0.shape) or grad_y.dtype != y0.dtype:
        raise ValueError(f"{op}: {what} must be (T, B, D) with y0's dtype")


def check_ckpts(op: str, y0: Tensor, ck_t, ck_tn, ck_y, ck_jump, ck_n) -> int:
    """The checkpoint capacity of ``ck_*`` (0: none stored), after checking their shapes and
    dtypes; on the CPU also that no count exceeds the capacity (on a device that read would
    synchronise; the CUDA kernel marks overflowed trajectories with ``ck_n = -1``)."""
    B, D = y0.shape
    cap = ck_t.shape[1] if ck_t.dim() == 2 else 0
    if cap > 0:
        if not (
            ck_t.shape == ck_tn.shape == ck_jump.shape == (B, cap)
            and ck_y.shape == (B, cap, D)
            and ck_n.shape == (B,)
            and ck_t.dtype == ck_tn.dtype == torch.float64
            and ck_y.dtype == y0.dtype
            and ck_jump.dtype == torch.uint8
            and ck_n.dtype == torch.int64
        ):
            raise ValueError(f"{op}: bad checkpoint tensors")
        if ck_n.is_cpu and bool((ck_n > cap).any()):
            raise ValueError(f"{op}: ck_n exceeds the checkpoint capacity")
    return cap


def contig(*ts: Tensor) -> List[Tensor]:
    return [t.contiguous() for t in ts]


def pack(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, n_threads) -> dict:
    """The argument dict of the C++ launchers (``cpu::args_from_dict``): pointers and sizes of
    contiguous tensors. ``n_threads`` (the CPU kernel's OpenMP threads; the CUDA launcher ignores
    it), resolved by :func:`.threads.resolve_threads`: ``n > 0`` exactly ``n``, ``0`` torch's
    current thread count, ``-n`` at most ``n`` of them (the work-size cap of :func:`.threads.op_threads`)."""
    B, D = y0.shape
    return dict(
        ints=ints.data_ptr(),
        n_ints=ints.numel(),
        params=params.data_ptr(),
        P=params.numel(),
        y0=y0.data_ptr(),
        B=B,
        D=D,
        out_t=out_t.data_ptr(),
        T=out_t.shape[1],
        stops=stops.data_ptr(),
        S=stops.shape[1],
        ev_t=ev_t.data_ptr(),
        ev_s=ev_s.data_ptr(),
        ev_a=ev_a.data_ptr(),
        E=ev_t.shape[1],
        in_t=in_t.data_ptr(),
        in_v=in_v.data_ptr(),
        J=in_t.shape[1],
        rtol=float(rtol),
        atol=float(atol),
        max_steps=int(max_steps),
        n_threads=resolve_threads(n_threads),
    )


def pack_ck(ck_t, ck_tn, ck_y, ck_jump, ck_n) -> dict:
    """The checkpoint entries of the launcher's argument dict."""
    return dict(
        ck_cap=ck_t.shape[1],
        ck_t=ck_t.data_ptr(),
        ck_tn=ck_tn.data_ptr(),
        ck_y=ck_y.data_ptr(),
        ck_jump=ck_jump.data_ptr(),
        ck_n=ck_n.data_ptr(),
    )


def ck_empty(B, D, cap, dtype, like=None, device="cpu"):
    """Checkpoint outputs ``(ck_t (B, cap) f64, ck_tn (B, cap) f64, ck_y (B, cap, D), ck_jump
    (B, cap) uint8, ck_n (B,) int64)``: uninitialised like ``like`` (fake impls), else zero-filled
    on ``device`` so that slots past a trajectory's last step hold defined values and the op's
    outputs are deterministic (opcheck compares them)."""
    mk = (
        (lambda *s, dtype: like.new_empty(s, dtype=dtype))
        if like is not None
        else (lambda *s, dtype: torch.zeros(s, dtype=dtype, device=device))
    )
    return (
        mk(B, cap, dtype=torch.float64),
        mk(B, cap, dtype=torch.float64),
        mk(B, cap, D, dtype=dtype),
        mk(B, cap, dtype=torch.uint8),
        mk(B, dtype=torch.int64),
    )


def raise_failed_checks(checks: Optional[Tensor], check_msgs: str) -> None:
    """``checks``: bool ``(N,)`` computed in the (compiled) graph by ``hf.odeint``'s validation;
    ``check_msgs``: their N messages, one per line. Raises ``ValueError`` with the first failed one."""
    if checks is None or checks.numel() == 0:
        return
    bad = torch.nonzero(~checks.reshape(-1).to(torch.bool))
    if bad.numel():
        msgs = check_msgs.split("\n")
        i = int(bad[0, 0])
        raise ValueError(msgs[i] if i < len(msgs) else "hf.odeint: invalid input")


def stack_checks(checks) -> tuple:
    """``(bool (N,) CPU tensor or None, messages)`` of a Problem's deferred checks, for the op."""
    if not checks:
        return None, ""
    chk = torch.stack([c.reshape(()).to(device="cpu", dtype=torch.bool) for c, _ in checks])
    return chk, "\n".join(m.replace("\n", " ") for _, m in checks)


def solve_args(prob, checks: Optional[list], device_type: str, n_threads: Union[int, Callable[[Tuple[int, ...], int], int]]) -> SolveArgs:
    """The first 14 arguments of ``hnode_fast::solve`` for a validated Problem: the field's
    FieldSpec (:func:`.specs.spec_for`, differentiable when a gradient is needed; ``checks``: the
    Problem's deferred checks under torch.compile, to which the mask check is appended), its
    parameters in y0's dtype, the Problem's tensors, tolerances, ``max_steps`` and ``n_threads``
    (an int, or a function of the spec's header and ``B`` that chooses it)."""
    from .specs import spec_for

    spec = spec_for(prob.func, checks, prob.module_tensors)
    if callable(n_threads):
        n_threads = n_threads(spec.header_ints(), prob.y0.shape[0])
    params = spec.params
    if params.dtype != prob.y0.dtype:
        params = params.to(prob.y0.dtype)
    out_t, stops, ev_t, ev_s, ev_a, in_t, in_v = problem_tensors(prob, spec, device_type)
    return (spec.ints, params, prob.y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, prob.rtol, prob.atol, prob.max_steps, n_threads)


def problem_tensors(prob, spec, device_type: str = "cpu"):
    """``(out_t, stops, ev_t, ev_s, ev_a, in_t, in_v)`` of a validated :class:`~hnode_fast.solve.Problem`
    (on y0's device; made on the CPU and moved for ``device_type="cuda"``)."""
    y0 = prob.y0
    B = y0.shape[0]
    dtype = y0.dtype
    out_t = prob.out_t.to(torch.float64).contiguous()
    stops = build_stops(out_t, prob.events, prob.inputs)
    if stops is None:
        stops = nothing(B, torch.float64)
    if prob.events is not None:
        ev = prob.events
        ev_t = ev.times.to(torch.float64).contiguous()
        ev_s = ev.states.to(torch.int32).contiguous()
        ev_a = ev.amounts.to(dtype)
    else:
        ev_t = nothing(B, torch.float64)
        ev_s = nothing(B, torch.int32)
        ev_a = nothing(B, dtype)
    if prob.inputs is not None:
        inp = prob.inputs
        if inp.values.requires_grad and torch.is_grad_enabled():
            raise NotImplementedError(f"backend={device_type!r} gives no gradient to inputs.values; use backend='reference'")
        in_t = inp.times.to(torch.float64).contiguous()
        in_v = inp.values.detach().to(dtype).contiguous()
    else:
        in_t = nothing(B, torch.float64)
        in_v = nothing(B, dtype, max(prob.func.n_inputs if prob.field_like else spec.n_inputs, 0))
    out: tuple = (out_t, stops, ev_t, ev_s, ev_a, in_t, in_v)
    if device_type != "cpu":
        out = tuple(x.to(y0.device) for x in out)
    return out


_NOTHING: dict = {}


def nothing(B: int, dtype: torch.dtype, K: Optional[int] = None) -> Tensor:
    """A zero-size CPU tensor ``(B, 0)`` (``(B, 0, K)`` with ``K``): no events, inputs or stops.

    Shared between calls (it holds no values, so nothing can be written to it; creating one is
    a few microseconds, several per call at batch 1). Under torch.compile a fresh one."""
    shape = (B, 0) if K is None else (B, 0, K)
    if torch.compiler.is_compiling():
        return torch.zeros(shape, dtype=dtype)
    t = _NOTHING.get((shape, dtype))
    if t is None:
        if len(_NOTHING) > 64:
            _NOTHING.clear()
        with torch.inference_mode(False):  # a normal tensor even if made under inference_mode
            t = _NOTHING[(shape, dtype)] = torch.zeros(shape, dtype=dtype)
    return t
