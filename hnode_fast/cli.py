"""Command line: ``hnode-fast demo | bench | info`` (also ``python -m hnode_fast ...``)."""

from __future__ import annotations

import json
import sys


def _info() -> int:
    from . import backends
    from ._native import build_info

    try:
        info = build_info()
    except ImportError as e:  # extension not built: still useful
        info = {"error": str(e)}
    info["backends"] = backends.available()
    print(json.dumps(info, indent=2, default=str))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = (
        "usage: hnode-fast {demo,bench,info} [options]\n"
        "  demo   cross-validate mechanistic / black-box / sparse hybrid models on Indometh and say who won\n"
        "         (--quick, --json, --seed, --folds, --plot, --backend, --no-progress; see demo -h)\n"
        "  bench  speed vs torchdiffeq/torchode: Markdown table, missing peers named (full harness: benchmarks/)\n"
        "         (--problems, --batches, --modes, --full, --threads, --device; see bench -h)\n"
        "         --loop: torchdiffeq's ode_demo training loop, timed quiet and with the cores kept busy\n"
        "  info   what was compiled (hf.build_info()) and which backends are usable"
    )
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "demo":
        from .demo import main as demo_main

        return demo_main(rest)
    if cmd == "bench":
        from .bench_runner import main as bench_main

        return bench_main(rest)
    if cmd == "info":
        return _info()
    print(f"unknown command {cmd!r}\n{usage}", file=sys.stderr)
    return 2
