"""The CUDA backend: the compiled whole-trajectory DP5 solver (``csrc/include/hnode/solve.h``)
as one ensemble kernel launch (one thread per trajectory), with its discrete adjoint as a
second launch. Kernels: ``csrc/cuda/solve_cuda.cu``; design notes: ``docs/cuda.md``.

The CUDA implementations of ``hnode_fast::solve`` and ``::solve_backward`` (schemas, fakes and
autograd in :mod:`.ops`), registered for ``"cuda"`` at import, and the backend's entry point
:func:`solve`. ``ints`` (the FieldSpec table) stays a CPU tensor (read by the host launcher);
everything else is on one CUDA device. On CUDA, ``ck_n[b] = -1`` marks a trajectory whose
accepted steps did not fit the checkpoints; the backward re-solves that subset only, with a
capacity of its accepted-step count. Parameter gradients: per-thread partial sums, then a second
kernel sums them in a fixed order (deterministic for a given launch size; no atomics).

Launches go on ``torch.cuda.current_stream()``; the forward never synchronises the device
(the backward does, once, to find overflowed trajectories). What the backend supports is
declared in :data:`.caps.CAPS` (``"cuda"``: the discrete adjoint only).
"""

from __future__ import annotations

import weakref
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from .. import _native
from ..types import Stats
from . import args as A
from . import ops
from .caps import CAPS

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
    return CAPS["cuda"].admits(prob)


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
    a = A.pack(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, 1)
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


def _solve_impl(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, ckpt_cap=0):
    """The forward launch: ``(y, stats, ck_t, ck_tn, ck_y, ck_jump, ck_n)``."""
    A.check("hnode_fast::solve", ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, max_steps, "cuda")
    ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v = A.contig(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v)
    B, D = y0.shape
    y = torch.empty(out_t.shape[1], B, D, dtype=y0.dtype, device=y0.device)
    stats = torch.empty(B, 4, dtype=torch.int64, device=y0.device)
    ck = A.ck_empty(B, D, max(int(ckpt_cap), 0), y0.dtype, device=y0.device)
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
                a.update(A.pack_ck(*ck))
            lib.cuda_solve(a, y0.dtype == torch.float64, y.data_ptr(), stats.data_ptr())
            del keep, ws  # freed on the current stream: safe with the caching allocator
    return (y, stats) + ck


@ops.solve.register_kernel("cuda")
def _(
    ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, n_threads, ckpt_cap=0, checks=None, check_msgs=""
):
    A.raise_failed_checks(checks, check_msgs)  # n_threads: the CPU kernel's
    return _solve_impl(ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, ckpt_cap)


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
        a.update(A.pack_ck(*ck))
        lib.cuda_solve_backward(
            a, y0.dtype == torch.float64, grad_y.data_ptr(), gp.data_ptr(), gy0.data_ptr(), gev.data_ptr(), partials.data_ptr()
        )
        del keep, ws, partials
    return gp, gy0, gev


@ops.solve_backward.register_kernel("cuda")
def _(grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps, n_threads, stats, *ck):
    op = "hnode_fast::solve_backward"
    A.check(op, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, max_steps, "cuda")
    A.check_grad_y(op, grad_y, y0, out_t)
    grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v = A.contig(
        grad_y, ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v
    )
    B, D = y0.shape
    args = (ints, params, y0, out_t, stops, ev_t, ev_s, ev_a, in_t, in_v, rtol, atol, max_steps)
    if A.check_ckpts(op, y0, *ck) > 0:
        gp, gy0, gev = _adjoint_launch(grad_y, *args, A.contig(*ck))
        redo = ck[4] < 0
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
        ck2 = _solve_impl(*sargs, *[cap2])[2:]
        gp2, gy02, gev2 = _adjoint_launch(grad_y.index_select(1, idx).contiguous(), *sargs, *[ck2])
        gp = gp + gp2
        gy0 = gy0.index_copy(0, idx, gy02)
        gev = gev.index_copy(0, idx, gev2)
    return gp, gy0, gev.to(ev_a.dtype)


def _ck_budget(device) -> int:
    """Bytes of checkpoints a forward may store: a quarter of the free device memory, within
    [1 GiB, 4 GiB] (trajectories that do not fit are re-solved in the backward)."""
    return _free_share(device, 4, _CK_BUDGET_MIN, _CK_BUDGET_MAX)


def solve(prob):
    """``Problem -> (y (T, B, D), Stats)`` on the CUDA kernels.

    Under ``torch.compile`` the deferred checks of ``hf.odeint`` (``prob.checks``) go to the op,
    which raises ``ValueError`` before solving (as on the CPU)."""
    _lib()
    CAPS["cuda"].require(prob)
    compiling = torch.compiler.is_compiling()
    checks = prob.checks if compiling else None
    args = A.solve_args(prob, checks, "cuda", 0)
    params, ev_a = args[1], args[7]
    needs_graph = torch.is_grad_enabled() and (params.requires_grad or prob.y0.requires_grad or ev_a.requires_grad)
    if needs_graph or compiling:
        B, D = prob.y0.shape
        per = B * (D * prob.y0.element_size() + 17)
        budget = _ck_budget(prob.y0.device)
        cap = int(min(prob.max_steps, 512, max(8, budget // max(per, 1))))
        y, st = torch.ops.hnode_fast.solve(*args, cap, *A.stack_checks(checks))[:2]
    else:
        y, st = _solve_impl(*args[:-1])[:2]
    stats = Stats(n_steps=st[:, 0], n_rejected=st[:, 1], nfe=st[:, 2], status=st[:, 3], step_times=None)
    return y, stats
