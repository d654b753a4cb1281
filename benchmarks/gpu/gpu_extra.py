"""Extra GPU checks of hnode_fast's CUDA / Triton backends (run by benchmarks/gpu_check.sh).

    python benchmarks/gpu/gpu_extra.py CHECK [CHECK ...]      (from the project root, PYTHONPATH=.)

Each check runs in try/except, prints one line and is saved to $OUT/gpu_extra.json (merged
with earlier runs). Checks (see the bottom for groups):
  env            device, versions, build_info
  lmem           device memory taken by the first launch (per-thread local memory reservation)
  gridstride     B > n_thr (grid-stride loops, several trajectories per thread) in the forward
                 generic path and the adjoint partials, by shrinking cuda._WS_BUDGET_BYTES;
                 every trajectory compared with the CPU backend (outputs, stats, gradients)
  overflow       checkpoint overflow + re-solve path at scale (cuda._ck_budget patched to 1 byte)
  largeB         B=1e6 float32 (benchmark field) forward and forward+backward: statuses,
                 sampled rows (incl. the last ones: int32 overflow) vs the CPU backend, memory
  syncs          host syncs per solve (torch.cuda.set_sync_debug_mode) for cuda fwd / fwd+bwd
                 and the triton solve loop (syncs per iteration)
  profile        per-kernel CUDA time at B=1e5 (torch.profiler): forward and forward+backward
  wide           D=32 (256, 256) silu field: triton vs cuda (generic path) vs reference, B=512
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
import traceback
import warnings

import torch

import hnode_fast as hf
from hnode_fast import _native
from hnode_fast.backends import cuda as hcuda

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
from fieldgen import random_field  # noqa: E402  (the suite's field generator: one recipe, not a copy)

OUT = os.environ.get("OUT", "/tmp/gpucheck_out")
os.makedirs(OUT, exist_ok=True)
RES_PATH = os.path.join(OUT, "gpu_extra.json")
f64, f32 = torch.float64, torch.float32
# GPUCHECK_DRYRUN=1: run the logic on the CPU (backend "cpu" stands in for "cuda"; small sizes)
DRY = os.environ.get("GPUCHECK_DRYRUN") == "1"
GPU = torch.cuda.is_available() and not DRY
DEV = "cuda" if GPU else "cpu"
BK = "cuda" if GPU else "cpu"


def sync():
    if GPU:
        torch.cuda.synchronize()


def _load():
    try:
        with open(RES_PATH) as fh:
            return json.load(fh)
    except Exception:  # noqa: BLE001
        return {}


RES = _load()


def _save():
    with open(RES_PATH, "w") as fh:
        json.dump(RES, fh, indent=1, default=str)


def check(fn):
    def run():
        name = fn.__name__
        t0 = time.time()
        try:
            r = fn() or {}
            sync()
            RES[name] = dict(ok=bool(r.pop("_ok", True)), secs=round(time.time() - t0, 2), **r)
        except Exception as e:  # noqa: BLE001
            RES[name] = dict(
                ok=False, secs=round(time.time() - t0, 2), error=f"{type(e).__name__}: {e}"[:3000], tb=traceback.format_exc()[-4000:]
            )
        line = json.dumps(RES[name], default=str)
        print(f"[gpu_extra] {name}: {line[:1500]}", flush=True)
        _save()
        if GPU:
            torch.cuda.empty_cache()

    run.__name__ = fn.__name__
    return run


# ----------------------------------------------------------------------------- helpers


def make_field(D=8, hidden=(32, 32), act="tanh", dtype=f64, seed=0, **kw):
    """The test suite's random hybrid field (tests/fieldgen.py), drawn after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return random_field(D=D, hidden=hidden, activation=act, dtype=dtype, **kw)


def bench_field():
    """benchmarks/bench_cuda.py's field: D=8, MaskedMLP (32, 32) tanh, float32."""
    torch.manual_seed(0)
    net = hf.MaskedMLP(8, 8, hidden=(32, 32), activation="tanh")
    return hf.HybridField(nn=net).to(dtype=f32)


def plan_of(f, D, dtype):
    spec = f.compile()
    return _native._C.cuda_plan(spec.ints.data_ptr(), spec.ints.numel(), spec.params.numel(), D, dtype == f64), spec.params.numel()


def diff(a, b):
    """max abs / max rel difference of two tensors (NaN positions must agree)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    nan_ok = bool(torch.equal(torch.isnan(a), torch.isnan(b)))
    m = ~torch.isnan(a) & ~torch.isnan(b)
    d = (a[m] - b[m]).abs()
    mx = float(d.max()) if d.numel() else 0.0
    rel = float((d / (b[m].abs() + 1e-300)).max()) if d.numel() else 0.0
    scale = float(b[m].abs().max()) if d.numel() else 0.0
    return dict(nan_ok=nan_ok, max_abs=mx, max_rel=rel, rel_to_max=mx / scale if scale else mx)


def stats_mismatch(sa, sb):
    out = {}
    for n in ("n_steps", "n_rejected", "nfe", "status"):
        out[n] = int((getattr(sa, n).cpu() != getattr(sb, n).cpu()).sum())
    return out


def grads(f, y0, t, w, backend, **kw):
    y0 = y0.detach().clone().requires_grad_(True)
    params = [p for p in f.parameters() if p.requires_grad]
    y = hf.odeint(f, y0, t, backend=backend, **kw)
    g = torch.autograd.grad((y.nan_to_num() * w).sum(), [y0] + params, allow_unused=True)
    return y.detach(), g


def cuda_ms(fn, reps=1):
    if not GPU:
        t0 = time.perf_counter()
        for _ in range(reps):
            r = fn()
        return (time.perf_counter() - t0) * 1e3 / reps, r
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(reps):
        r = fn()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / reps, r


# ----------------------------------------------------------------------------- checks


@check
def env():
    if GPU:
        p = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info()
        dev = dict(device=torch.cuda.get_device_name(), cc=f"{p.major}.{p.minor}", sms=p.multi_processor_count)
    else:
        free = total = 0
        dev = dict(device="cpu (dry run)")
    info = dict(
        **dev,
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        free_gb=round(free / 2**30, 1),
        total_gb=round(total / 2**30, 1),
        build_info={k: v for k, v in hf.build_info().items()},
    )
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001
        info["triton"] = repr(e)
    info["_ok"] = bool(info["build_info"].get("cuda")) and (hcuda.is_available() or not GPU)
    return info


@check
def lmem():
    """Free device memory before/after the first launch of each local-memory bucket
    (the driver reserves lmem/thread x 2048 threads x SMs; ptxas: ~8.6 KiB f32/2048, ~17 KiB f64/2048)."""
    out = {}
    if not GPU:
        return dict(skipped="no GPU")
    for dt, hid in ((f32, (32, 32)), (f64, (32, 32)), (f64, (8,))):
        f = make_field(D=8, hidden=hid, dtype=dt).to(DEV)
        plan, P = plan_of(f, 8, dt)
        y0 = torch.rand(256, 8, dtype=dt, device=DEV)
        t = torch.linspace(0, 1, 3, dtype=dt, device=DEV)
        torch.cuda.synchronize()
        free0 = torch.cuda.mem_get_info()[0]
        res0 = torch.cuda.memory_reserved()
        with torch.no_grad():
            hf.odeint(f, y0, t, backend=BK)
        torch.cuda.synchronize()
        free1 = torch.cuda.mem_get_info()[0]
        res1 = torch.cuda.memory_reserved()
        out[f"{str(dt)[6:]}_{hid}_bucket{plan['bucket']}_wsz{plan['wsz']}"] = round(((free0 - free1) - (res1 - res0)) / 2**20, 1)
    out["unit"] = "MiB not explained by torch's allocator (local memory reservation + module load)"
    return out


@check
def gridstride():
    """n_thr forced small (128 threads) so each thread solves / differentiates ~3 trajectories."""
    saved = hcuda._WS_BUDGET_BYTES
    hcuda._WS_BUDGET_BYTES = 1 << 16
    out = {}
    ok = True
    try:
        cases = [
            ("f64_generic_128x128", dict(D=8, hidden=(128, 128), dtype=f64), 300, 1e-9),
            ("f64_bucket_32x32", dict(D=8, hidden=(32, 32), dtype=f64), 300, 1e-9),
            ("f64_csr_inputs_events", dict(D=5, hidden=(16, 16), dtype=f64, mask_density=0.3, n_inputs=2, nn_inputs=True), 260, 1e-9),
            ("f32_bucket_32x32", dict(D=8, hidden=(32, 32), dtype=f32), 300, 2e-3),
        ]
        for name, kw, B, tol in cases:
            dt = kw["dtype"]
            f = make_field(seed=3, **kw)
            D = kw["D"]
            plan, P = plan_of(f, D, dt)
            g = torch.Generator().manual_seed(5)
            y0 = torch.rand(B, D, generator=g, dtype=dt)
            t = torch.linspace(0, 2, 9, dtype=dt)
            w = torch.randn(9, B, D, generator=g, dtype=dt)
            extra_c, extra_g = {}, {}
            if kw.get("n_inputs"):
                K = kw["n_inputs"]
                inf = float("inf")
                et = torch.where(
                    torch.rand(B, 2, generator=g) < 0.5, torch.rand(B, 2, generator=g, dtype=f64) * 2, torch.full((B, 2), inf, dtype=f64)
                )
                ev = hf.Events(times=et, states=torch.randint(0, D, (B, 2), generator=g), amounts=torch.rand(B, 2, generator=g, dtype=dt))
                it = torch.sort(torch.rand(B, 3, generator=g, dtype=f64) * 2, dim=1).values
                inp = hf.Inputs(times=it, values=torch.randn(B, 3, K, generator=g, dtype=dt))
                extra_c = dict(events=ev, inputs=inp)
                extra_g = dict(
                    events=hf.Events(times=et.to(DEV), states=ev.states.to(DEV), amounts=ev.amounts.to(DEV)),
                    inputs=hf.Inputs(times=it.to(DEV), values=inp.values.to(DEV)),
                )
            kws = dict(rtol=1e-7 if dt == f64 else 1e-5, atol=1e-9 if dt == f64 else 1e-7)
            with torch.no_grad():
                yc, sc = hf.odeint(f, y0, t, backend="cpu", return_stats=True, **kws, **extra_c)
                fg = copy.deepcopy(f).to(DEV)
                yg, sg = hf.odeint(fg, y0.to(DEV), t.to(DEV), backend=BK, return_stats=True, **kws, **extra_g)
            r = dict(
                P=P,
                wsz=plan["wsz"],
                bucket=plan["bucket"],
                n_thr_fwd=hcuda._n_thr(B, plan["wsz"], y0.element_size()) if plan["bucket"] == 0 else B,
                n_thr_adj=hcuda._n_thr(B, max(P, 1) + (plan["wsz"] if plan["bucket"] == 0 else 0), y0.element_size()),
            )
            r["fwd"] = diff(yg, yc)
            r["stats_mismatch"] = stats_mismatch(sg, sc)
            # gradients (discrete adjoint), CPU backend vs CUDA
            yc2, gc = grads(f, y0, t, w, "cpu", **kws, **extra_c)
            yg2, gg = grads(fg, y0.to(DEV), t.to(DEV), w.to(DEV), BK, **kws, **extra_g)
            gd = {}
            names = ["y0"] + [n for n, p in f.named_parameters() if p.requires_grad]
            worst = 0.0
            for n, a, b in zip(names, gg, gc):
                if a is None or b is None:
                    gd[n] = "None" if (a is None and b is None) else f"one is None ({a is None}, {b is None})"
                    continue
                dd = diff(a, b)
                worst = max(worst, dd["rel_to_max"])
                gd[n] = round(dd["rel_to_max"], 15)
            r["grad_rel_to_max"] = gd
            r["grad_worst"] = worst
            # determinism of the partials reduction
            _, gg2 = grads(fg, y0.to(DEV), t.to(DEV), w.to(DEV), BK, **kws, **extra_g)
            r["grad_bitwise_repeat"] = all(torch.equal(a, b) for a, b in zip(gg, gg2) if a is not None)
            r["pass"] = bool(r["fwd"]["nan_ok"] and r["fwd"]["rel_to_max"] < tol and worst < (1e-7 if dt == f64 else 5e-2))
            ok &= r["pass"]
            out[name] = r
    finally:
        hcuda._WS_BUDGET_BYTES = saved
    out["_ok"] = ok
    return out


@check
def overflow():
    """Checkpoint budget patched to 1 byte: cap = 8 steps, most trajectories overflow and are re-solved."""
    saved = hcuda._ck_budget
    hcuda._ck_budget = lambda device: 1
    try:
        f = make_field(D=4, hidden=(16, 16), dtype=f64, seed=7)
        B = 2000
        g = torch.Generator().manual_seed(1)
        y0 = torch.rand(B, 4, generator=g, dtype=f64)
        t = torch.linspace(0, 3, 6, dtype=f64)
        w = torch.randn(6, B, 4, generator=g, dtype=f64)
        _, gc = grads(f, y0, t, w, "cpu")
        fg = copy.deepcopy(f).to(DEV)
        _, gg = grads(fg, y0.to(DEV), t.to(DEV), w.to(DEV), BK)
        worst = max(diff(a, b)["rel_to_max"] for a, b in zip(gg, gc) if a is not None and b is not None)
        return dict(grad_worst=worst, _ok=worst < 1e-8)
    finally:
        hcuda._ck_budget = saved


def _flops_per_eval():
    dims = [8, 32, 32, 8]
    return sum(2 * a * b + b for a, b in zip(dims[:-1], dims[1:])) + 25 * 64 + 8


@check
def largeB():
    f = bench_field().to(DEV)
    B = int(os.environ.get("GPUCHECK_LARGE_B", "1000000"))
    g = torch.Generator(device=DEV).manual_seed(1)
    y0 = (torch.rand(B, 8, generator=g, device=DEV, dtype=f32) - 0.5) * 2.0
    t = torch.linspace(0, 5.0, 20, dtype=f32, device=DEV)
    kw = dict(rtol=1e-5, atol=1e-7)
    out = dict(B=B)
    with torch.no_grad():
        hf.odeint(f, y0[:1024], t, backend=BK, **kw)  # warm-up
        ms, (y, st) = cuda_ms(lambda: hf.odeint(f, y0, t, backend=BK, return_stats=True, **kw))
    out["fwd_ms"] = round(ms, 2)
    nfe = st.nfe.double().sum().item()
    steps = (st.n_steps + st.n_rejected).double().sum().item()
    fl = nfe * _flops_per_eval() + steps * 60 * 8
    out["fwd_gflops"] = round(fl / (ms * 1e-3) / 1e9, 1)
    out["nfe_mean"] = round(nfe / B, 1)
    out["steps_mean_max"] = [round(st.n_steps.double().mean().item(), 1), int(st.n_steps.max())]
    out["status_counts"] = {int(k): int(v) for k, v in zip(*torch.unique(st.status, return_counts=True))}
    out["nan_outputs"] = int(torch.isnan(y).sum())
    idx = torch.cat([torch.arange(64), torch.arange(B - 64, B), torch.randint(0, B, (128,))]).unique()
    fc = bench_field()
    with torch.no_grad():
        yc, sc = hf.odeint(fc, y0[idx.to(DEV)].cpu(), t.cpu(), backend="cpu", return_stats=True, **kw)
    out["sample_vs_cpu"] = diff(y[:, idx.to(DEV)], yc)
    out["sample_step_diff_max"] = int((st.n_steps[idx.to(DEV)].cpu() - sc.n_steps).abs().max())
    del y
    if GPU:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    y0r = y0.clone().requires_grad_(True)

    def fb():
        yy = hf.odeint(f, y0r, t, backend=BK, **kw)
        yy.pow(2).sum().backward()
        return None

    ms, _ = cuda_ms(fb)
    out["fwd_bwd_ms"] = round(ms, 2)
    out["fwd_bwd_peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if GPU else None
    gp = [p.grad for p in f.parameters()]
    out["grads_finite"] = bool(all(torch.isfinite(x).all() for x in gp if x is not None)) and bool(torch.isfinite(y0r.grad).all())
    # gy0 rows vs the CPU backend on the sampled trajectories (independent per trajectory)
    ys = y0.detach()[idx.to(DEV)].cpu().requires_grad_(True)
    yc = hf.odeint(fc, ys, t.cpu(), backend="cpu", **kw)
    (gyc,) = torch.autograd.grad(yc.pow(2).sum(), [ys])
    out["sample_gy0_vs_cpu"] = diff(y0r.grad[idx.to(DEV)], gyc)
    out["_ok"] = out["nan_outputs"] == 0 and out["grads_finite"] and out["sample_vs_cpu"]["rel_to_max"] < 1e-2
    return out


@check
def syncs():
    """Synchronising torch calls per solve, counted with torch.cuda.set_sync_debug_mode('warn')."""
    out = {}

    def count(fn):
        if not GPU:
            fn()
            return 0, ["dry run"]
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
                torch.cuda.set_sync_debug_mode(0)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        hits = [x for x in w if "called a synchronizing" in str(x.message)]
        where = sorted({f"{os.path.basename(x.filename)}:{x.lineno}" for x in hits})  # the Python line that synchronised
        return len(hits), where[:12]

    f = bench_field().to(DEV)
    y0 = torch.rand(1000, 8, dtype=f32, device=DEV)
    t = torch.linspace(0, 5.0, 20, dtype=f32, device=DEV)
    with torch.no_grad():
        hf.odeint(f, y0, t, backend=BK)
        out["cuda_fwd"] = count(lambda: hf.odeint(f, y0, t, backend=BK))

    def fb():
        y0r = y0.clone().requires_grad_(True)
        hf.odeint(f, y0r, t, backend=BK).sum().backward()

    fb()
    out["cuda_fwd_bwd"] = count(fb)
    try:
        ft = make_field(D=4, hidden=(16,), dtype=f32, seed=2).to(DEV)
        y0t = torch.rand(256, 4, dtype=f32, device=DEV)
        tt = torch.linspace(0, 1, 5, dtype=f32, device=DEV)
        with torch.no_grad():
            _, st = hf.odeint(ft, y0t, tt, backend="triton", return_stats=True)  # compiles
            iters = int((st.n_steps + st.n_rejected).max())
            n, msgs = count(lambda: hf.odeint(ft, y0t, tt, backend="triton"))
        out["triton_solve"] = dict(syncs=n, max_attempts_per_row=iters, syncs_per_attempt=round(n / max(iters, 1), 2), kinds=msgs)
    except Exception as e:  # noqa: BLE001
        out["triton_solve"] = f"{type(e).__name__}: {e}"[:500]
    return out


@check
def profile():
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprof

    f = bench_field().to(DEV)
    B = int(os.environ.get("GPUCHECK_PROFILE_B", "100000"))
    y0 = (torch.rand(B, 8, device=DEV, dtype=f32) - 0.5) * 2
    t = torch.linspace(0, 5.0, 20, dtype=f32, device=DEV)
    kw = dict(rtol=1e-5, atol=1e-7)

    def fwd():
        with torch.no_grad():
            return hf.odeint(f, y0, t, backend=BK, **kw)

    def fb():
        y0r = y0.clone().requires_grad_(True)
        hf.odeint(f, y0r, t, backend=BK, **kw).pow(2).sum().backward()

    fwd()
    fb()
    sync()
    out = {"B": B}
    for name, fn in (("fwd", fwd), ("fwd_bwd", fb)):
        with tprof(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if GPU else [])) as prof:
            fn()
            sync()
        ka = prof.key_averages()
        rows = []
        for e in ka:
            dev_us = getattr(e, "device_time_total", None)
            if dev_us is None:
                dev_us = getattr(e, "cuda_time_total", 0)
            if dev_us and e.key and not e.key.startswith("hnode_fast::") and "aten::" not in e.key:
                rows.append((e.key[:90], round(dev_us / 1e3, 3), e.count))
        rows.sort(key=lambda r: -r[1])
        out[name] = rows[:12]
        with open(os.path.join(OUT, f"profile_{name}_B{B}.txt"), "w") as fh:
            try:
                fh.write(ka.table(sort_by="device_time_total", row_limit=30))
            except Exception:  # noqa: BLE001
                fh.write(ka.table(sort_by="cuda_time_total", row_limit=30))
    return out


@check
def wide():
    """bench_triton's field shape (D=32, (256, 256) silu, float32): triton vs cuda (generic path,
    global-memory weights) vs reference, B=512."""
    torch.manual_seed(0)
    D = 32
    terms = [hf.Linear(i, None, 0.1) for i in range(D)]
    mech = hf.MechanisticGraph(D, terms, dtype=f32)
    net = hf.MaskedMLP(D, D, hidden=(256, 256), activation="silu")
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.mul_(0.5)
    f = hf.HybridField(mech=mech, nn=net).to(dtype=f32, device=DEV)
    plan, P = plan_of(f, D, f32)
    B = int(os.environ.get("GPUCHECK_WIDE_B", "512"))
    y0 = torch.rand(B, D, dtype=f32, device=DEV)
    tt = torch.linspace(0, 1.0, 10, dtype=f64, device=DEV)
    kw = dict(rtol=1e-5, atol=1e-7)
    out = dict(P=P, wsz=plan["wsz"], bucket=plan["bucket"])
    with torch.no_grad():
        ms_c, (yc, sc) = cuda_ms(lambda: hf.odeint(f, y0, tt.float(), backend=BK, return_stats=True, **kw))
        ms_t, (yt, stt) = cuda_ms(lambda: hf.odeint(f, y0, tt.float(), backend="triton", return_stats=True, **kw))
        f64f = copy.deepcopy(f).double()
        yr = hf.odeint(f64f, y0.double(), tt, backend=BK, **kw)
    out["cuda_ms"], out["triton_ms"] = round(ms_c, 1), round(ms_t, 1)
    out["cuda_vs_f64"] = diff(yc, yr)
    out["triton_vs_f64"] = diff(yt, yr)
    out["steps_cuda_vs_triton_maxdiff"] = int((sc.n_steps - stt.n_steps).abs().max())
    out["_ok"] = out["cuda_vs_f64"]["rel_to_max"] < 1e-2 and out["triton_vs_f64"]["rel_to_max"] < 1e-2
    return out


CHECKS = {c.__name__: c for c in (env, lmem, gridstride, overflow, largeB, syncs, profile, wide)}
GROUPS = {
    "correct": ["env", "lmem", "gridstride", "overflow", "largeB", "syncs"],
    "timing": ["profile"],
    "triton": ["wide"],
}

if __name__ == "__main__":
    names = []
    for a in sys.argv[1:] or ["correct"]:
        names += GROUPS.get(a, [a])
    if not GPU and not DRY:
        print("gpu_extra: no CUDA device (GPUCHECK_DRYRUN=1 runs the logic on the CPU)")
        sys.exit(2)
    for n in names:
        CHECKS[n]()
    bad = [n for n in names if not RES.get(n, {}).get("ok")]
    print(f"[gpu_extra] done; failed: {bad}", flush=True)
    sys.exit(1 if bad else 0)
