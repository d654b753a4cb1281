"""The benchmark harness (hnode_fast.bench): problems, providers, reports. Never asserts timings."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from hnode_fast import bench as hb

f64 = torch.float64


@pytest.mark.parametrize("name", list(hb.PROBLEMS))
def test_problem_builds(name):
    p = hb.make_problem(name, f64)
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
    torch.testing.assert_close(hb.make_problem("vdp_mu10", f64).field(0.0, z), want)
    lv = hb.make_problem("lotka_volterra", f64).field
    x, y = z[:, 0], z[:, 1]
    torch.testing.assert_close(lv(0.0, z[:, :2]), torch.stack([1.5 * x - x * y, x * y - 3.0 * y], 1))
    pk = hb.make_problem("pk_hybrid", f64).field
    d, c = z[:, 0], z[:, 1]
    torch.testing.assert_close(pk.mech(z[:, :2]), torch.stack([-1.5 * d, 1.5 * d - 0.08 * c], 1))
    assert pk.nn is not None


@pytest.mark.parametrize("name", list(hb.PROBLEMS))
def test_every_provider_agrees_with_scipy(name):
    p = hb.make_problem(name, f64)
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
    rows = hb.run(["mlp_small"], [2], ["fwd", "fwd+bwd", "epoch"], repeats=1, epoch_batches=2, skip=["torchode"], progress=msgs.append)
    solvers = {r["solver"] for r in rows}
    assert "broken" not in solvers and "torchode" not in solvers
    assert {"hnode_reference", "torchdiffeq"} <= solvers
    assert any("broken" in m and "failed" in m for m in msgs)
    assert {(r["mode"], r["B"]) for r in rows} == {("fwd", 2), ("fwd+bwd", 2), ("epoch", 2)}
    for r in rows:
        assert set(hb.CSV_FIELDS) <= set(r)
        assert r["ms"] > 0 and r["repeats"] >= 1 and r["nfe"] > 0 and r["max_err"] < 1e-2
        assert r["speedup_vs_torchdiffeq"] is not None
        if r["solver"] == "torchdiffeq":
            assert r["speedup_vs_torchdiffeq"] == pytest.approx(1.0)


def test_main_writes_reports(tmp_path):
    out = tmp_path / "res"
    rc = hb.main(
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
    assert set(rows[0]) == set(hb.CSV_FIELDS)
    js = json.loads((out / "bench.json").read_text())
    assert set(js) == {"machine", "settings", "rows"} and len(js["rows"]) == len(rows)
    assert js["settings"]["problems"] == "mlp_small"
    pytest.importorskip("matplotlib")
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_json_is_strict(tmp_path):
    """A row without peak memory (NaN, where /proc/self/clear_refs is missing) or with a failed
    solve (inf error) is written as JSON null, not the non-JSON NaN / Infinity."""
    row = {k: 1.0 for k in hb.CSV_FIELDS}
    row.update(problem="mlp_small", B=1, mode="fwd", solver="torchdiffeq", peak_mb=float("nan"), max_err=float("inf"))
    hb.write_results([row], {"cpu": "x"}, str(tmp_path))

    def no_constants(name):
        raise ValueError(f"non-JSON constant {name}")

    js = json.loads((tmp_path / "bench.json").read_text(), parse_constant=no_constants)
    assert js["rows"][0]["peak_mb"] is None and js["rows"][0]["max_err"] is None and js["rows"][0]["ms"] == 1.0


def test_main_rejects_unknown_names(tmp_path):
    with pytest.raises(SystemExit):
        hb.main(["--problems", "nope", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        hb.main(["--modes", "sideways", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown problem"):
        hb.make_problem("nope")


def test_machine_record_keys():
    info = hb.machine()
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
    mb, sec = hb.peak_memory_mb(lambda: torch.ones(64 * 2**20 // 8, dtype=f64).sum(), "cpu")
    if mb == mb:  # NaN where /proc/self/clear_refs cannot be written
        assert mb > 32
    assert sec >= 0
