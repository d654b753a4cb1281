"""The benchmark problems (hnode_fast.problems), the runner of ``hnode-fast bench``
(hnode_fast.bench_runner) and the full harness (benchmarks/harness.py). Never asserts timings."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hnode_fast import bench_runner as hb
from hnode_fast import problems as hp

f64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]


def _load_harness():
    """benchmarks/harness.py as a module (under its own name: no sys.path change for other tests)."""
    spec = importlib.util.spec_from_file_location("hnode_bench_harness", ROOT / "benchmarks" / "harness.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


hh = _load_harness()


@pytest.mark.parametrize("name", list(hp.PROBLEMS))
def test_problem_builds(name):
    p = hp.make_problem(name, f64)
    y0 = p.y0(5)
    assert y0.shape == (5, p.D) and y0.dtype == f64
    assert p.t.dtype == f64 and p.t.dim() == 1 and bool((p.t.diff() > 0).all())
    dz = p.field(p.t[0], y0)
    assert dz.shape == y0.shape and bool(torch.isfinite(dz).all())
    assert list(p.field.parameters()), "the epoch mode needs trainable parameters"
    # first rows do not depend on B (one scipy reference serves every batch size)
    assert torch.equal(p.y0(1), p.y0(4)[:1]) and torch.equal(p.y0(4), p.y0(130)[:4])
    assert not torch.equal(p.y0(4, seed=7), p.y0(4))


def test_problem_fields_are_the_named_equations():
    z = torch.tensor([[1.3, 0.7, 1.69], [-2.0, 0.5, 4.0]], dtype=f64)
    mu = 10.0
    x, y, w = z.unbind(1)
    want = torch.stack([y, mu * (1 - x * x) * y - x, 2 * x * y], 1)
    torch.testing.assert_close(hp.make_problem("vdp_mu10", f64).field(0.0, z), want)
    lv = hp.make_problem("lotka_volterra", f64).field
    x, y = z[:, 0], z[:, 1]
    torch.testing.assert_close(lv(0.0, z[:, :2]), torch.stack([1.5 * x - x * y, x * y - 3.0 * y], 1))
    pk = hp.make_problem("pk_hybrid", f64).field
    d, c = z[:, 0], z[:, 1]
    torch.testing.assert_close(pk.mech(z[:, :2]), torch.stack([-1.5 * d, 1.5 * d - 0.08 * c], 1))
    assert pk.nn is not None


@pytest.mark.parametrize("name", list(hp.PROBLEMS))
def test_every_provider_agrees_with_scipy(name):
    p = hp.make_problem(name, f64)
    ref = p.reference(2)
    assert ref.shape == (len(p.t), 2, p.D)
    provs = hb.providers(p.field, p.rtol, p.atol)
    assert {"hnode_reference", "torchdiffeq", "torchode"} <= set(provs)
    # global error of an rtol-controlled solve grows along the trajectory: allow a few hundred
    # times the local tolerance (observed: <= 1.5e-3 on Lotka-Volterra, ~1e-5 elsewhere)
    scale = float(ref.abs().max())
    bound = 300 * (p.atol + p.rtol * max(1.0, scale))
    for solver, fn in provs.items():
        with torch.no_grad():
            y, st = fn(p.y0(2), p.t)
        nfe, steps = st()
        assert y.shape == ref.shape, solver
        err = float((y.double() - ref).abs().max())
        assert err < bound, (solver, err, bound)
        assert steps >= 1 and nfe >= 6 * steps, (solver, nfe, steps)


def test_run_rows_and_a_failing_peer(monkeypatch):
    real = hb.providers

    def with_broken(*a, **k):
        out = real(*a, **k)

        def broken(y0, t):
            raise RuntimeError("boom")

        out["broken"] = broken
        return out

    monkeypatch.setattr(hb, "providers", with_broken)
    msgs = []
    rows = hb.run(
        ["mlp_small"],
        [2],
        ["fwd", "fwd+bwd", "epoch"],
        repeats=1,
        epoch_batches=2,
        skip=["torchode"],
        progress=msgs.append,
        probe=hh.peak_memory_mb,
    )
    solvers = {r["solver"] for r in rows}
    assert "broken" not in solvers and "torchode" not in solvers
    assert {"hnode_reference", "torchdiffeq"} <= solvers
    assert any("broken" in m and "failed" in m for m in msgs)
    assert {(r["mode"], r["B"]) for r in rows} == {("fwd", 2), ("fwd+bwd", 2), ("epoch", 2)}
    for r in rows:
        assert set(hh.CSV_FIELDS) <= set(r)
        assert r["ms"] > 0 and r["repeats"] >= 1 and r["nfe"] > 0 and r["max_err"] < 1e-2
        assert r["speedup_vs_torchdiffeq"] is not None
        if r["solver"] == "torchdiffeq":
            assert r["speedup_vs_torchdiffeq"] == pytest.approx(1.0)


def test_main_writes_reports(tmp_path):
    out = tmp_path / "res"
    rc = hh.main(
        [
            "--problems",
            "mlp_small",
            "--batches",
            "1,2",
            "--modes",
            "fwd,epoch",
            "--repeats",
            "1",
            "--epoch-batches",
            "2",
            "--skip",
            "hnode_reference",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    md = (out / "bench.md").read_text()
    assert "| mlp_small | fwd | 1 |" in md and "| mlp_small | epoch | 2 |" in md and "torchdiffeq" in md
    assert "Machine:" in md and "- cpu:" in md
    with open(out / "bench.csv") as fh:
        rows = list(csv.DictReader(fh))
    n_solvers = len({r["solver"] for r in rows})
    assert n_solvers >= 3 and len(rows) == 2 * 2 * n_solvers
    assert set(rows[0]) == set(hh.CSV_FIELDS)
    js = json.loads((out / "bench.json").read_text())
    assert set(js) == {"machine", "settings", "rows"} and len(js["rows"]) == len(rows)
    assert js["settings"]["problems"] == "mlp_small"
    pytest.importorskip("matplotlib")
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


_QUICK = ["--problems", "mlp_small", "--batches", "1", "--modes", "fwd", "--repeats", "1", "--skip", "hnode_reference", "--quiet"]


def test_cli_bench_prints_the_table_and_writes_no_file(tmp_path, monkeypatch, capsys):
    """``hnode-fast bench`` (the package's runner): the table on stdout, no peak MB column (the
    full harness measures memory), nothing written to the working directory."""
    from hnode_fast.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["bench", *_QUICK]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Settings: problems mlp_small,")
    assert "| mlp_small | fwd | 1 | hnode_cpu |" in out and "| mlp_small | fwd | 1 | torchdiffeq |" in out
    assert "peak MB" not in out.split("\n\n")[1]
    assert os.listdir(tmp_path) == []


def test_missing_peers_are_named_loudly(monkeypatch, capsys):
    """Without torchdiffeq and torchode the run goes on with the hnode backends, and says which
    peers are missing and how to install them: on stderr and above the printed table."""
    for mod in ("torchdiffeq", "torchode"):
        monkeypatch.setitem(sys.modules, mod, None)  # import raises ImportError
    assert set(hb.not_installed()) == {"torchdiffeq", "torchode"}
    assert hb.not_installed(skip=["torchdiffeq", "torchode"]) == {}
    assert hb.main(_QUICK) == 0
    cap = capsys.readouterr()
    for mod in ("torchdiffeq", "torchode"):
        assert f"warning: peer solver {mod} is not installed: no {mod} rows" in cap.err
        assert f"> **warning**: peer solver {mod} is not installed: no {mod} rows" in cap.out
    assert cap.err.count('install it with: pip install "hnode_fast[bench]"') == 2
    head, table = cap.out.split("| problem |", 1)
    assert "torchdiffeq is not installed" in head and "torchode is not installed" in head  # above the table
    assert "| torchdiffeq |" not in table and "| torchode |" not in table and "| hnode_cpu |" in table
    assert "not_installed torchdiffeq,torchode" in head


def test_missing_scipy_leaves_out_the_errors(monkeypatch, capsys):
    for mod in ("scipy", "scipy.integrate"):
        monkeypatch.setitem(sys.modules, mod, None)
    assert set(hb.not_installed()) == {"scipy"}
    assert hb.main(_QUICK) == 0
    cap = capsys.readouterr()
    assert "warning: scipy is not installed: no 'max err' column" in cap.err and "pip install" in cap.err
    rows = [line for line in cap.out.splitlines() if line.startswith("| mlp_small |")]
    assert rows and all(line.endswith("| - |") for line in rows)


def test_results_json_is_strict(tmp_path):
    """A row without peak memory (NaN, where /proc/self/clear_refs is missing) or with a failed
    solve (inf error) is written as JSON null, not the non-JSON NaN / Infinity."""
    row = {k: 1.0 for k in hh.CSV_FIELDS}
    row.update(problem="mlp_small", B=1, mode="fwd", solver="torchdiffeq", peak_mb=float("nan"), max_err=float("inf"))
    hh.write_results([row], {"cpu": "x"}, str(tmp_path))

    def no_constants(name):
        raise ValueError(f"non-JSON constant {name}")

    js = json.loads((tmp_path / "bench.json").read_text(), parse_constant=no_constants)
    assert js["rows"][0]["peak_mb"] is None and js["rows"][0]["max_err"] is None and js["rows"][0]["ms"] == 1.0


def test_harness_report_names_missing_peers(tmp_path):
    row = {k: 1.0 for k in hh.CSV_FIELDS}
    row.update(problem="mlp_small", B=1, mode="fwd", solver="hnode_cpu")
    hh.write_results([row], {"cpu": "x"}, str(tmp_path), notes=["peer solver torchode is not installed: no torchode rows"])
    md = (tmp_path / "bench.md").read_text()
    assert md.index("> **warning**: peer solver torchode is not installed") < md.index("| problem |")


def test_main_rejects_unknown_names(tmp_path):
    with pytest.raises(SystemExit):
        hb.main(["--problems", "nope"])
    with pytest.raises(SystemExit):
        hb.main(["--modes", "sideways"])
    with pytest.raises(SystemExit):
        hh.main(["--problems", "nope", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown problem"):
        hp.make_problem("nope")


def test_cli_bench_help_outside_the_source_tree(tmp_path):
    """The installed package runs ``hnode-fast bench`` on its own (nothing from benchmarks/)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-m", "hnode_fast", "bench", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "--problems" in r.stdout and "--skip" in r.stdout
    assert "--loop" in r.stdout and "--busy" in r.stdout


def test_training_loop_benchmark_rows(capsys):
    """``hnode-fast bench --loop``: the ode_demo loop per solver, quiet and with a busy process;
    the hnode rows train the same network the torchdiffeq row trains (same NFE scale)."""
    from hnode_fast import bench_loop as bl

    names = [n for n in bl.solvers() if n in ("torchdiffeq", "hnode_cpu")]
    rows = bl.run([0, 1], iters=1, names=names)
    assert [(r["condition"], r["solver"]) for r in rows] == [(c, n) for c in ("quiet", "busy 1") for n in names]
    for r in rows:
        assert r["ms"] > 0 and r["nfe"] >= 8
    md = bl.markdown(rows)
    assert "| busy 1 | hnode_cpu |" in md and "B=20" in md
    a = hb.parser().parse_args(["--loop", "--iters", "1", "--busy", "0", "--quiet"])
    assert a.loop and a.busy == 0


def test_machine_record_keys():
    info = hh.machine()
    for k in (
        "cpu",
        "cores",
        "threads",
        "gpu",
        "os",
        "python",
        "torch",
        "cuda",
        "numpy",
        "scipy",
        "torchdiffeq",
        "torchode",
        "triton",
        "hnode_fast",
        "backends",
        "cpu_isa",
        "load_avg_1m",
    ):
        assert isinstance(info.get(k), str), k
    assert int(info["threads"]) == torch.get_num_threads()


def test_measure_and_peak_memory():
    calls = []
    sec, n = hb.measure(lambda: calls.append(1), repeats=3, warmup=1)
    assert n == 3 and len(calls) == 4 and sec >= 0
    _, n = hb.measure(lambda: None, repeats=5, warmup=0, max_seconds=1.0, estimate=0.4)
    assert n == 2
    mb, sec = hh.peak_memory_mb(lambda: torch.ones(64 * 2**20 // 8, dtype=f64).sum(), "cpu")
    if mb == mb:  # NaN where /proc/self/clear_refs cannot be written
        assert mb > 32
    assert sec >= 0
