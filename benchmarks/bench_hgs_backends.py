"""Wall time of one full-size HGS pipeline (the ``small`` regime of bench_hgs.py: 3 patient-days,
4 lambdas x 3 folds, 60 epochs per fit) with ``backend="cpu"`` and ``backend="reference"``,
run one after the other in the same process on one thread.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_hgs_backends.py [--data CSV]``.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import hnode_fast as hf
from hnode_fast.hgs import sparsify

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_hgs import PATIENTS, windows  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--epochs", type=int, default=60)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    recs = hf.data.load_glucose_sim(a.data, split_days=True)
    tr = windows(recs, PATIENTS[:3], {0}, stride=6)
    g = hf.models.uva_padova_graph()
    # warm-up: one-time imports (torch.optim pulls in torch._dynamo) and the native module
    sparsify(g, tr, lambdas=(0.01,), epochs=1, retrain_epochs=0, backend="cpu", progress=False)
    out = {}
    for be in ("cpu", "reference"):
        t0 = time.perf_counter()
        res = sparsify(g, tr, lambdas=(0.001, 0.003, 0.01, 0.03), folds=3, epochs=a.epochs, hidden=(8,), backend=be, progress=False)
        out[be] = time.perf_counter() - t0
        kept = len(res.kept_edges)
        print(f"backend={be!r}: {out[be]:.1f} s (cv {res.seconds['cv']:.1f} s), lambda1 {res.lam1:g}, kept {kept} edges", flush=True)
    print(f"reference / cpu: {out['reference'] / out['cpu']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
