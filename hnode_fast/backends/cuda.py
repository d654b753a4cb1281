"""The CUDA backend: the compiled whole-trajectory DP5 solver (``csrc/include/hnode/solve.h``)
as one ensemble kernel launch (one thread per trajectory), with its discrete adjoint as a
second launch. Kernels: ``csrc/cuda/solve_cuda.cu``; design notes: ``docs/cuda.md``.

Two ``torch.library`` custom ops (fake implementations for ``torch.compile``):

* ``hnode_fast::cuda_solve(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol,
  max_steps, ckpt_cap) -> (y (T, B, D), stats (B, 4) int64, ck_t, ck_tn, ck_y, ck_jump, ck_n)``;
  ``ints`` is the FieldSpec table on the CPU (read by the host launcher), everything else on one
  CUDA device. Checkpoints (accepted steps, up to ``ckpt_cap`` per trajectory) are stored for
  the backward; ``ck_n[b] = -1`` when trajectory ``b`` did not fit.
* ``hnode_fast::cuda_solve_backward(grad_y, <inputs>, stats, <checkpoints>) -> (grad_params (P,),
  grad_y0 (B, D), grad_ev_a (B, E))``: the discrete adjoint. Trajectories whose checkpoints
  overflowed are re-solved (that subset only) with a capacity of their accepted-step count.
  Parameter gradients: per-thread partial sums, then a second kernel sums them in a fixed
  order (deterministic for a given launch size; no atomics).

Launches go on ``torch.cuda.current_stream()``; the forward never synchronises the device
(the backward does, once, to find overflowed trajectories). Same options as the CPU backend:
``hf.HybridField`` funcs, ``step_mode="per_sample"``, ``adjoint="discrete"``.
"""

from __future__ import annotations

import weakref
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from .. import _native
from ..types import Stats
from . import cpu as _cpu

# Global scratch (generic-path workspace, the adjoint's per-thread gradient partials): None sizes
# it from the free device memory (_ws_budget); an int fixes it (tests shrink it to force several
# trajectories per thread).
_WS_BUDGET_BYTES: Optional[int] = None
_WS_BUDGET_MIN, _WS_BUDGET_MAX = 256 << 20, 4 << 30
# Checkpoints of a forward that needs gradients (zero-filled: their memset is part of the forward;
# trajectories that do not fit are re-solved by the backward)
_CK_BUDGET_MIN, _CK_BUDGET_MAX = 1 << 30, 4 << 30
_BLOCK = 128


def _compiled() -> bool:
    return _native._C is not None and hasattr(_native._C, "cuda_solve")


def unavailable_reason() -> str:
    """Why ``backend="cuda"`` cannot run here ("" when it can)."""
    if _native._C is None:
        return "backend='cuda' is not available: the compiled extension hnode_fast._C is missing"
    if not _compiled():
        return (
            "backend='cuda' is not available: hnode_fast was not compiled with CUDA "
            "(build_info()['cuda'] is False; rebuild with nvcc on PATH, HNODE_CUDA=ON)"
        )
    if not torch.cuda.is_available():
        return (
            "backend='cuda' is not available: no CUDA device (torch.cuda.is_available() is False; "
            f"torch {torch.__version__}, extension sees {_native._C.cuda_device_count()} device(s))"
        )
    return ""


def is_available() -> bool:
    return _compiled() and torch.cuda.is_available()


def _lib():
    reason = unavailable_reason()
    if reason:
        raise NotImplementedError(reason)
    return _native._C


def supports(prob) -> bool:
    """Whether ``backend="auto"`` may use this backend for ``prob``."""
    return prob.field_like and prob.y0.device.type == "cuda" and prob.step_mode == "per_sample" and prob.adjoint == "discrete"


def _check(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, max_steps):
    """Devices here; shapes and dtypes by the CPU backend's checks on the same tensors."""
    if not (isinstance(y0, Tensor) and y0.device.type == "cuda"):
        raise ValueError("hnode_fast::cuda_solve: y0 must be a CUDA tensor")
    if ints.device.type != "cpu":
        raise ValueError("hnode_fast::cuda_solve: ints (FieldSpec table) must be a CPU tensor")
    for name, x in (
        ("params", params),
        ("out_t", out_t),
        ("stops", stops),
        ("ev_t", ev_t),
        ("ev_s", ev_s),
        ("ev_a", ev_a),
        ("in_t", in_t),
        ("in_v", in_v),
    ):
        if x.device != y0.device:
            raise ValueError(f"hnode_fast::cuda_solve: {name} is on {x.device} but y0 is on {y0.device}")
    # shape/dtype/range checks: the CPU op's validator, seeing the device tensors through a proxy
    # (it reads values only from ints, a CPU tensor, and ev_s for its range check)
    _cpu._check(
        *[t if t.device.type == "cpu" else _MetaCPU(t) for t in (ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v)],
        *[max_steps],
    )


class _MetaCPU:
    """Proxy presenting a CUDA tensor to ``cpu._check`` as a CPU tensor: shape, dtype and dim
    are the tensor's; value reads (only the ``ev_s`` range check) run on the device."""

    __slots__ = ("_t",)

    def __init__(self, t):
        self._t = t

    device = torch.device("cpu")
    is_cpu = True  # cpu._check tests this (cheaper than device.type)

    @property
    def shape(self):
        return self._t.shape

    @property
    def dtype(self):
        return self._t.dtype

    def dim(self):
        return self._t.dim()

    def numel(self):
        return self._t.numel()

    def __ge__(self, o):
        return self._t >= o

    def __lt__(self, o):
        return self._t < o


def _free_share(device, div: int, lo: int, hi: int) -> int:
    """``free device memory // div`` clamped to ``[lo, hi]`` (``lo`` if it cannot be read); one
    call to cudaMemGetInfo, no sync."""
    try:
        free, _ = torch.cuda.mem_get_info(device)
    except RuntimeError:
        return lo
    return int(min(hi, max(lo, free // div)))


def _ws_budget(device) -> int:
    """Bytes of global scratch one launch may use: ``_WS_BUDGET_BYTES`` if set, else an eighth of
    the free device memory within [256 MiB, 4 GiB]."""
    if _WS_BUDGET_BYTES is not None:
        return int(_WS_BUDGET_BYTES)
    return _free_share(device, 8, _WS_BUDGET_MIN, _WS_BUDGET_MAX)


def _n_thr(B, per_thread_elems, elem_size, budget=None):
    """Threads of a launch whose threads each need ``per_thread_elems`` values of global scratch:
    one per trajectory when the scratch fits the budget, else fewer (each solving several
    trajectories, grid-stride), at least one block."""
    if per_thread_elems <= 0:
        return B
    if budget is None:
        budget = _ws_budget(None)
    n = max(_BLOCK, budget // (per_thread_elems * elem_size))
    return int(max(1, min(B, n)))


# Device copies of FieldSpec int tables, per (table, version, device): the table is read by the
# host launcher from the CPU tensor and by the kernels from this copy. A copy per call was a
# pageable host->device transfer, i.e. a device synchronisation on every solve.
_INTS_DEV: Dict[int, Tuple["weakref.ref[Tensor]", int, Dict[torch.device, Tensor]]] = {}


def _ints_on(ints: Tensor, dev: torch.device) -> Tensor:
    key = id(ints)
    hit = _INTS_DEV.get(key)
    if hit is None or hit[0]() is not ints or hit[1] != ints._version:

        def forget(_ref: "weakref.ref[Tensor]", k: int = key) -> None:
            _INTS_DEV.pop(k, None)

        hit = (weakref.ref(ints, forget), ints._version, {})
        _INTS_DEV[key] = hit
    d = hit[2].get(dev)
    if d is None:
        d = ints.to(dev)  # once per table and device
        hit[2][dev] = d
    return d


def _launch_args(lib, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps):
    """(args dict, plan, keep-alive tensors) common to the forward and the backward."""
    B, D = y0.shape
    dev = y0.device
    a = _cpu._args(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, 1)
    plan = lib.cuda_plan(ints.data_ptr(), ints.numel(), params.numel(), D, y0.dtype == torch.float64)
    ints_dev = _ints_on(ints, dev)
    params_t = torch.empty_like(params)
    a.update(
        ints_dev=ints_dev.data_ptr(),
        params_t=params_t.data_ptr(),
        stream=torch.cuda.current_stream(dev).cuda_stream,
        device=dev.index if dev.index is not None else torch.cuda.current_device(),
    )
    return a, plan, [ints_dev, params_t]


def _cuda_solve_impl(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, ckpt_cap=0):
    _check(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, max_steps)
    ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v = _cpu._contig(
        ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v
    )
    B, D = y0.shape
    y = torch.empty(out_t.shape[1], B, D, dtype=y0.dtype, device=y0.device)
    stats = torch.empty(B, 4, dtype=torch.int64, device=y0.device)
    ck = _cpu._ck_empty(B, D, max(int(ckpt_cap), 0), y0.dtype, device=y0.device)
    if B > 0:
        lib = _lib()
        with torch.cuda.device(y0.device):
            a, plan, keep = _launch_args(lib, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps)
            if plan["bucket"] > 0:
                n_thr, ws = B, y0.new_empty(0)
            else:
                n_thr = _n_thr(B, plan["wsz"], y0.element_size(), _ws_budget(y0.device))
                ws = y0.new_empty(n_thr * plan["wsz"])
            a.update(ws=ws.data_ptr(), ws_elems=ws.numel(), n_thr=n_thr)
            if ckpt_cap > 0:
                a.update(_cpu._ck_args(*ck))
            lib.cuda_solve(a, y0.dtype == torch.float64, y.data_ptr(), stats.data_ptr())
            del keep, ws  # freed on the current stream: safe with the caching allocator
    return (y, stats) + ck


@torch.library.custom_op("hnode_fast::cuda_solve", mutates_args=())
def cuda_solve(
    ints: Tensor,
    params: Tensor,
    y0: Tensor,
    out_t: Tensor,
    stops: Tensor,
    ev_t: Tensor,
    ev_s: Tensor,
    ev_a: Tensor,
    in_t: Tensor,
    in_v: Tensor,
    rtol: float,
    atol: float,
    max_steps: int,
    ckpt_cap: int = 0,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _cuda_solve_impl(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, ckpt_cap)


@cuda_solve.register_fake
def _(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, ckpt_cap=0):
    B, D = y0.shape
    return (y0.new_empty(out_t.shape[1], B, D), y0.new_empty(B, 4, dtype=torch.int64)) + _cpu._ck_empty(
        B, D, max(int(ckpt_cap), 0), y0.dtype, like=y0
    )


def _adjoint_launch(grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, ck):
    """One adjoint launch over stored checkpoints; trajectories with ck_n < 0 get zeros."""
    lib = _lib()
    B, D = y0.shape
    P = params.numel()
    gp = torch.zeros(params.shape, dtype=params.dtype, device=y0.device)
    gy0 = torch.zeros(B, D, dtype=y0.dtype, device=y0.device)
    gev = torch.zeros(ev_a.shape, dtype=y0.dtype, device=y0.device)
    if B == 0:
        return gp, gy0, gev
    with torch.cuda.device(y0.device):
        a, plan, keep = _launch_args(lib, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps)
        generic = plan["bucket"] == 0
        n_thr = _n_thr(B, max(P, 1) + (plan["wsz"] if generic else 0), y0.element_size(), _ws_budget(y0.device))
        ws = y0.new_empty(n_thr * plan["wsz"] if generic else 0)
        partials = y0.new_empty(n_thr * max(P, 1))
        a.update(ws=ws.data_ptr(), ws_elems=ws.numel(), n_thr=n_thr)
        a.update(_cpu._ck_args(*ck))
        lib.cuda_solve_backward(
            a, y0.dtype == torch.float64, grad_y.data_ptr(), gp.data_ptr(), gy0.data_ptr(), gev.data_ptr(), partials.data_ptr()
        )
        del keep, ws, partials
    return gp, gy0, gev


@torch.library.custom_op("hnode_fast::cuda_solve_backward", mutates_args=())
def cuda_solve_backward(
    grad_y: Tensor,
    ints: Tensor,
    params: Tensor,
    y0: Tensor,
    out_t: Tensor,
    stops: Tensor,
    ev_t: Tensor,
    ev_s: Tensor,
    ev_a: Tensor,
    in_t: Tensor,
    in_v: Tensor,
    rtol: float,
    atol: float,
    max_steps: int,
    stats: Tensor,
    ck_t: Tensor,
    ck_tn: Tensor,
    ck_y: Tensor,
    ck_jump: Tensor,
    ck_n: Tensor,
) -> Tuple[Tensor, Tensor, Tensor]:
    _check(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, max_steps)
    if grad_y.shape != (out_t.shape[1],) + tuple(y0.shape) or grad_y.dtype != y0.dtype:
        raise ValueError("hnode_fast::cuda_solve_backward: grad_y must be (T, B, D) with y0's dtype")
    grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v = _cpu._contig(
        grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v
    )
    B, D = y0.shape
    cap = ck_t.shape[1] if ck_t.dim() == 2 else 0
    args = (ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps)
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
            raise ValueError("hnode_fast::cuda_solve_backward: bad checkpoint tensors")
        ck = _cpu._contig(ck_t, ck_tn, ck_y, ck_jump, ck_n)
        gp, gy0, gev = _adjoint_launch(grad_y, *args, ck)
        redo = ck_n < 0
    else:
        gp = torch.zeros(params.shape, dtype=params.dtype, device=y0.device)
        gy0 = torch.zeros(B, D, dtype=y0.dtype, device=y0.device)
        gev = torch.zeros(ev_a.shape, dtype=y0.dtype, device=y0.device)
        redo = torch.ones(B, dtype=torch.bool, device=y0.device)
    idx = torch.nonzero(redo).flatten()  # synchronises: the overflowed subset is re-solved
    if idx.numel() > 0:
        cap2 = max(1, int(stats[idx, 0].max()))
        sub = [x.index_select(0, idx) for x in (y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v)]
        sargs = (ints, params, *sub, rtol, atol, max_steps)
        ck2 = _cuda_solve_impl(*sargs, *[cap2])[2:]
        gp2, gy02, gev2 = _adjoint_launch(grad_y.index_select(1, idx).contiguous(), *sargs, *[ck2])
        gp = gp + gp2
        gy0 = gy0.index_copy(0, idx, gy02)
        gev = gev.index_copy(0, idx, gev2)
    return gp, gy0, gev.to(ev_a.dtype)


@cuda_solve_backward.register_fake
def _(grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, stats, ck_t, ck_tn, ck_y, ck_jump, ck_n):
    return params.new_empty(params.shape), y0.new_empty(y0.shape), ev_a.new_empty(ev_a.shape)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:10], *output[1:])
    ctx.scalars = tuple(inputs[10:13])


def _backward(ctx, grad_y, *unused):
    saved = ctx.saved_tensors
    ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v = saved[:10]
    if grad_y is None:
        grad_y = torch.zeros(out_t.shape[1], y0.shape[0], y0.shape[1], dtype=y0.dtype, device=y0.device)
    gp, gy0, gev = torch.ops.hnode_fast.cuda_solve_backward(
        grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, *ctx.scalars, *saved[10:]
    )
    return (None, gp, gy0, None, None, None, None, gev, None, None, None, None, None, None)


cuda_solve.register_autograd(_backward, setup_context=_setup_context)


def _ck_budget(device) -> int:
    """Bytes of checkpoints a forward may store: a quarter of the free device memory, within
    [1 GiB, 4 GiB] (trajectories that do not fit are re-solved in the backward)."""
    return _free_share(device, 4, _CK_BUDGET_MIN, _CK_BUDGET_MAX)


def problem_tensors(prob, spec):
    """The op's tensor arguments (on y0's device) for a validated Problem."""
    dev = prob.y0.device
    return tuple(x.to(dev) for x in _cpu.problem_tensors(prob, spec))


def solve(prob):
    """``Problem -> (y (T, B, D), Stats)`` on the CUDA kernels."""
    if not prob.field_like:
        raise NotImplementedError("backend='cuda' solves hf.HybridField funcs only; use backend='reference' for plain callables")
    if prob.step_mode != "per_sample":
        raise NotImplementedError("backend='cuda' supports step_mode='per_sample' only; use backend='reference' for step_mode='shared'")
    if prob.adjoint != "discrete":
        raise NotImplementedError("backend='cuda' supports adjoint='discrete' only; use backend='reference' for adjoint='backsolve'")
    _lib()
    if prob.y0.device.type != "cuda":
        raise ValueError(f"backend='cuda' needs CUDA tensors, y0 is on {prob.y0.device}")
    spec = _cpu._spec_for(prob.func, module_tensors=prob.module_tensors)
    params = spec.params
    if params.dtype != prob.y0.dtype:
        params = params.to(prob.y0.dtype)
    out_t, stops, ev_t, ev_s, ev_a, in_t, in_v = problem_tensors(prob, spec)
    args = (spec.ints, params, prob.y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, prob.rtol, prob.atol, prob.max_steps)
    needs_graph = torch.is_grad_enabled() and (params.requires_grad or prob.y0.requires_grad or ev_a.requires_grad)
    if needs_graph or torch.compiler.is_compiling():
        B, D = prob.y0.shape
        per = B * (D * prob.y0.element_size() + 17)
        budget = _ck_budget(prob.y0.device)
        cap = int(min(prob.max_steps, 512, max(8, budget // max(per, 1))))
        y, st = torch.ops.hnode_fast.cuda_solve(*args, cap)[:2]
    else:
        y, st = _cuda_solve_impl(*args)[:2]
    stats = Stats(n_steps=st[:, 0], n_rejected=st[:, 1], nfe=st[:, 2], status=st[:, 3], step_times=None)
    return y, stats
