"""The cpu backend's thread count by work size (hnode_fast.backends.threads): the rule, explicit
control, and that the count used does not change the forward solution."""

import subprocess
import sys

import pytest
import torch

import hnode_fast as hf
from hnode_fast import backends
from hnode_fast.backends import threads as T

f64 = torch.float64


def header_of(field):
    return field.compile().header_ints()


def demo_field(D=2, width=50):
    return hf.HybridField(nn=torch.nn.Sequential(torch.nn.Linear(D, width), torch.nn.Tanh(), torch.nn.Linear(width, D)).double())


@pytest.fixture(autouse=True)
def _auto_threads():
    old = T._FIXED
    T.set_cpu_threads(None)
    yield
    T._FIXED = old


def test_small_solves_get_one_thread_large_ones_all():
    h = header_of(demo_field())  # 2 -> 50 -> 2: 252 stored weights and biases
    assert T.eval_cost(h) == 2 * 50 + 50 + 50 * 2 + 2 + 40 * 2  # weights, biases, then 40 per state
    assert T.solve_threads(h, B=20, available=8) == 1  # ode_demo's batch: one thread
    assert T.solve_threads(h, B=1, available=8) == 1
    assert T.solve_threads(h, B=4096, available=8) == 8  # plenty of work: every thread
    mid = T.solve_threads(h, B=100, available=8)  # 100 * 336 / 10_000 = 3
    assert mid == 3
    big = header_of(hf.HybridField(nn=hf.MaskedMLP(8, 8, hidden=(32, 32))))
    assert T.solve_threads(big, B=64, available=2) == 2
    assert T.solve_threads(big, B=3, available=16) == 1


def test_op_encoding_and_its_resolution():
    h = header_of(demo_field())
    assert T.op_threads(h, 20) == -1 and T.op_threads(h, 100) == -3  # "at most" the work cap
    assert T.resolve_threads(-3, available=8) == 3 and T.resolve_threads(-3, available=2) == 2
    assert T.resolve_threads(0, available=5) == 5 and T.resolve_threads(4, available=2) == 4
    hf.set_cpu_threads(2)
    assert T.op_threads(h, 20) == 2 and T.op_threads(h, 1) == 1  # fixed, capped by B


def test_fixed_count_and_validation():
    h = header_of(demo_field())
    hf.set_cpu_threads(2)
    assert hf.get_cpu_threads() == 2
    assert T.solve_threads(h, B=20, available=8) == 2
    assert T.solve_threads(h, B=1, available=8) == 1  # never more threads than trajectories
    hf.set_cpu_threads(None)
    assert hf.get_cpu_threads() is None
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="positive int"):
            hf.set_cpu_threads(bad)


def test_environment_variable():
    code = "import hnode_fast as hf; print(hf.get_cpu_threads())"
    for val, want in (("3", "3"), ("auto", "None")):
        out = subprocess.run([sys.executable, "-c", code], env={**_env(), "HNODE_CPU_THREADS": val}, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == want
    bad = subprocess.run([sys.executable, "-c", code], env={**_env(), "HNODE_CPU_THREADS": "many"}, capture_output=True, text=True)
    assert bad.returncode != 0 and "HNODE_CPU_THREADS must be" in bad.stderr


def _env():
    import os

    return dict(os.environ)


@pytest.mark.skipif("cpu" not in backends.available(), reason="CPU solver not built")
def test_solve_uses_the_rule_and_threads_do_not_change_the_solution(monkeypatch, seed):
    from hnode_fast.backends import cpu

    seen = []
    real = cpu.op_threads

    def spy(header, B):
        n = real(header, B)
        seen.append((B, n))
        return n

    monkeypatch.setattr(cpu, "op_threads", spy)
    field = demo_field()
    y0 = torch.randn(64, 2, dtype=f64)
    t = torch.linspace(0, 1, 5, dtype=f64)
    y_auto = hf.odeint(field, y0, t, backend="cpu")
    assert seen and seen[-1][0] == 64 and T.resolve_threads(seen[-1][1]) == T.solve_threads(header_of(field), 64)
    hf.set_cpu_threads(2)
    y_two = hf.odeint(field, y0, t, backend="cpu")
    hf.set_cpu_threads(1)
    y_one = hf.odeint(field, y0, t, backend="cpu")
    assert torch.equal(y_auto, y_two) and torch.equal(y_two, y_one)
