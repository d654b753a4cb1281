"""Ahead-of-time compile check of the Triton kernels for a CUDA target, without a GPU.

Uses triton's bundled ``ptxas``: catches code-generation errors (unsupported ops, fp64 dots,
shared-memory layouts) and reports the static shared memory of each kernel::

    python -m hnode_fast.backends.triton.aot [--arch 90] [--D 32] [--hidden 256 256] [--act silu]
"""

from __future__ import annotations

import argparse
import sys
import time

_INTS = {"B", "D", "K", "n_terms"}
_F64 = {"h_ptr", "err_ptr", "hn_ptr", "st_ptr", "ctl", "gerr_ptr"}
_I8 = {"rej_ptr", "acc_ptr"}


def compile_kernel(fn, dtype: str, consts: dict, arch: int = 90, num_warps: int = 4):
    """Compile ``fn`` (a ``@triton.jit`` kernel of :mod:`.field_kernels` or :mod:`.step_kernels`)
    for ``sm_<arch>``; ``dtype`` is ``"fp32"`` or ``"fp64"``. Returns the compiled kernel
    (``.metadata.shared`` etc.)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in _INTS:
            sig[name] = "i32"
        elif name == "tab":
            sig[name] = "*i32"
        elif name in _F64:
            sig[name] = "*fp64"
        elif name in _I8:
            sig[name] = "*i8"
        else:
            sig[name] = "*" + dtype
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=num_warps))


def kernel_jobs(meta: dict, dtype: str, prec: str = "ieee"):
    from . import field_kernels as FK
    from . import step_kernels as SK

    base = dict(meta, PREC=prec)
    return [
        (FK._field_fwd_kernel, base),
        (FK._field_bwd_kernel, base),
        (SK._dp_step_fwd_kernel, dict(base, STIFF=True)),
        (SK._dp_step_bwd_kernel, dict(base, HAS_GQ=True, HAS_GERR=True)),
    ]


def main(argv=None) -> int:
    import os

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("aot: unset TRITON_INTERPRET (the interpreter replaces the jit functions)")
    from .plan import pad_width

    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--D", type=int, default=32)
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    ap.add_argument("--act", type=int, default=5, help="activation code (hf.ACTIVATIONS)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp64"])
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--block-m", type=int, default=16)
    ap.add_argument("--kchunk", type=int, default=64)
    ap.add_argument("--inputs", action="store_true", help="network reads exogenous inputs (K <= 16)")
    ap.add_argument("--kernels", default="all", help="comma list of kernel names (default all)")
    args = ap.parse_args(argv)
    hid = [pad_width(h) for h in args.hidden]
    if len(hid) > 3:
        raise SystemExit("at most 3 hidden layers")
    DP = pad_width(args.D)
    outs = (hid + [16, 16, 16])[:3]
    meta = dict(
        NL=len(hid) + 1,
        DP=DP,
        KP=16,
        O0=outs[0],
        O1=outs[1],
        O2=outs[2],
        HAS_U=args.inputs,
        ACT=args.act,
        KC=args.kchunk,
        SW=max([DP, 16] + hid),
        BM=args.block_m,
    )
    ok = True
    for fn, consts in kernel_jobs(meta, args.dtype, "tf32" if args.tf32 else "ieee"):
        if args.kernels != "all" and fn.fn.__name__ not in args.kernels.split(","):
            continue
        t0 = time.time()
        try:
            c = compile_kernel(fn, args.dtype, consts, args.arch)
            print(f"{fn.fn.__name__}: ok ({time.time() - t0:.1f}s), shared memory {c.metadata.shared} B", flush=True)
        except Exception as e:  # noqa: BLE001
            ok = False
            print(f"{fn.fn.__name__}: FAILED {type(e).__name__}: {str(e)[:2000]}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
