"""``torch.library.opcheck`` on every hnode_fast custom op (schema, fake impl, autograd
registration, AOT dispatch with dynamic shapes), plus a census: every op registered under the
``hnode_fast`` namespace must be covered here or in tests/triton/test_triton_opcheck.py.

CPU ops run for real. CUDA ops need a device for opcheck; without one their fake (meta)
implementations are still run on fake CUDA tensors. Triton ops run on CPU only under
``TRITON_INTERPRET=1`` (tests/triton, its own pytest invocation).
"""

import pytest
import torch
from conftest import random_field

import hnode_fast as hf
from hnode_fast.backends import args as A
from hnode_fast.backends import cpu, cuda  # noqa: F401  (register the cpu and cuda kernels of the ops)
from hnode_fast.backends.triton import library as _triton_library  # noqa: F401  (registers triton_* ops)
from hnode_fast.solve import _validate

f64 = torch.float64
NS = "hnode_fast"

# op name -> where it is checked; a new op fails test_every_op_is_covered until it is added here
COVERAGE = {
    # CPU kernels: opcheck here; CUDA kernels: fake impl here, opcheck needs a CUDA device
    "solve": "opcheck here",
    "solve_backward": "opcheck here",
    "backsolve": "opcheck here (CPU kernel only)",
    "eval_field": "opcheck here (CPU kernel only)",
    "vjp_field": "opcheck here (CPU kernel only)",
    "triton_field_eval": "tests/triton/test_triton_opcheck.py",
    "triton_field_eval_bwd": "tests/triton/test_triton_opcheck.py",
    "triton_dp_step": "tests/triton/test_triton_opcheck.py",
    "triton_dp_step_bwd": "tests/triton/test_triton_opcheck.py",
}


def registered_ops():
    """Names of the ops registered under the ``hnode_fast`` namespace (after importing the
    modules that define them)."""
    return sorted(n.split("::", 1)[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names() if n.startswith(NS + "::"))


def has_fake_impl(name):
    entry = torch._library.simple_registry.singleton.find(f"{NS}::{name}")
    return entry.fake_impl.kernel is not None


def test_every_op_is_covered():
    ops = registered_ops()
    assert ops, "no hnode_fast ops registered"
    missing = sorted(set(ops) - set(COVERAGE))
    assert not missing, f"hnode_fast ops without an opcheck / fake-impl test: {missing} (add them to COVERAGE)"
    stale = sorted(set(COVERAGE) - set(ops))
    assert not stale, f"COVERAGE lists ops that are not registered: {stale}"


@pytest.mark.parametrize("name", sorted(COVERAGE))
def test_op_has_fake_impl(name):
    assert has_fake_impl(name), f"{NS}::{name} has no fake implementation (torch.compile cannot trace it)"


# ----------------------------------------------------------------------------- cpu ops


def problem_args(B=3, D=3, events=False, inputs=False, seed=0, device="cpu"):
    """The ``solve`` op's tensor arguments and scalars of a small random problem."""
    torch.manual_seed(seed)
    f = random_field(D=D, hidden=(5,), n_inputs=1 if inputs else 0)
    y0 = torch.rand(B, D, dtype=f64) + 0.1
    t = torch.linspace(0, 1, 4, dtype=f64)
    ev = (
        hf.Events(times=torch.rand(B, 2, dtype=f64).sort(1).values, states=torch.randint(0, D, (B, 2)), amounts=torch.rand(B, 2, dtype=f64))
        if events
        else None
    )
    inp = hf.Inputs(times=torch.tensor([[0.0, 0.5]] * B, dtype=f64), values=torch.rand(B, 2, 1, dtype=f64)) if inputs else None
    prob = _validate(f, y0, t, 1e-6, 1e-8, "dopri5", "cpu", "discrete", "per_sample", ev, inp, 1000)
    spec = f.compile()
    out_t, stops, ev_t, ev_s, ev_a, in_t, in_v = A.problem_tensors(prob, spec)
    tensors = [spec.ints, spec.params.detach().clone(), prob.y0.contiguous(), out_t, stops, ev_t, ev_s, ev_a.detach().clone(), in_t, in_v]
    return [x.to(device) if i > 0 else x for i, x in enumerate(tensors)], (1e-6, 1e-8, 1000)


def with_grad(tensors):
    t = list(tensors)
    for i in (1, 2, 7):  # params, y0, ev_a
        t[i] = t[i].clone().requires_grad_(True)
    return t


CASES = {"plain": {}, "events": dict(events=True), "inputs": dict(inputs=True), "batch1": dict(B=1, D=1)}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("cap", [0, 16])
def test_opcheck_solve_cpu(case, cap):
    tensors, (rtol, atol, max_steps) = problem_args(**CASES[case])
    torch.library.opcheck(torch.ops.hnode_fast.solve.default, (*with_grad(tensors), rtol, atol, max_steps, 1, cap))


def test_opcheck_solve_cpu_with_checks():
    tensors, (rtol, atol, max_steps) = problem_args()
    checks = torch.ones(2, dtype=torch.bool)
    torch.library.opcheck(torch.ops.hnode_fast.solve.default, (*with_grad(tensors), rtol, atol, max_steps, 1, 8, checks, "first\nsecond"))


def test_solve_raises_failed_check():
    tensors, (rtol, atol, max_steps) = problem_args()
    checks = torch.tensor([True, False])
    with pytest.raises(ValueError, match="^second$"):
        torch.ops.hnode_fast.solve(*tensors, rtol, atol, max_steps, 1, 0, checks, "first\nsecond")


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("cap", [0, 16])
def test_opcheck_solve_backward_cpu(case, cap):
    tensors, (rtol, atol, max_steps) = problem_args(**CASES[case])
    out = torch.ops.hnode_fast.solve(*tensors, rtol, atol, max_steps, 1, cap)
    y = out[0]
    grad_y = torch.randn_like(y)
    torch.library.opcheck(torch.ops.hnode_fast.solve_backward.default, (grad_y, *tensors, rtol, atol, max_steps, 1, *out[1:]))


@pytest.mark.parametrize("case", ["plain", "inputs", "batch1"])
def test_opcheck_backsolve_cpu(case):
    tensors, (rtol, atol, max_steps) = problem_args(**CASES[case])
    y = torch.ops.hnode_fast.solve(*tensors, rtol, atol, max_steps, 1, 0)[0]
    grad_y = torch.randn_like(y)
    torch.library.opcheck(torch.ops.hnode_fast.backsolve.default, (grad_y, *tensors, y.contiguous(), rtol, atol, max_steps, 1))


@pytest.mark.parametrize("inputs", [False, True])
def test_opcheck_field_ops_cpu(inputs):
    torch.manual_seed(3)
    spec = random_field(D=3, hidden=(5,), n_inputs=2 if inputs else 0).compile()
    z = torch.randn(4, 3, dtype=f64)
    u = torch.randn(4, 2, dtype=f64) if inputs else None
    p = spec.params.detach().clone()
    torch.library.opcheck(torch.ops.hnode_fast.eval_field.default, (spec.ints, p.requires_grad_(), z.requires_grad_(), u, 1, 1))
    a = torch.randn(4, 3, dtype=f64)
    torch.library.opcheck(torch.ops.hnode_fast.vjp_field.default, (spec.ints, p.detach(), z.detach(), u, a))


def test_eval_field_op_gradients_and_errors():
    """``eval_field``'s registered autograd (through ``vjp_field``) against finite differences;
    inputs get no gradient and say so; bad arguments name the op."""
    torch.manual_seed(4)
    spec = random_field(D=3, hidden=(4,), n_inputs=1).compile()
    z = torch.randn(3, 3, dtype=f64, requires_grad=True)
    u = torch.randn(3, 1, dtype=f64)
    p = spec.params.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda p, z: torch.ops.hnode_fast.eval_field(spec.ints, p, z, u), (p, z))
    with pytest.raises(NotImplementedError, match="no gradient to the inputs"):
        torch.ops.hnode_fast.eval_field(spec.ints, p, z, u.clone().requires_grad_()).sum().backward()
    with pytest.raises(ValueError, match="hnode_fast::eval_field: u must be"):
        torch.ops.hnode_fast.eval_field(spec.ints, p.detach(), z.detach(), torch.zeros(3, 2, dtype=f64))
    with pytest.raises(ValueError, match="hnode_fast::eval_field: params"):
        torch.ops.hnode_fast.eval_field(spec.ints, p.detach()[:-1], z.detach(), u)


# ----------------------------------------------------------------------------- cuda ops


def _cuda_fake_args(tensors):
    """Fake CUDA copies of the problem tensors (no device needed), ints kept on the CPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    with mode:
        fakes = [torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="cuda") for x in tensors[1:]]
    return mode, [mode.from_tensor(tensors[0])] + fakes


@pytest.mark.parametrize("cap", [0, 16])
def test_cuda_solve_fake_impl(cap):
    tensors, (rtol, atol, max_steps) = problem_args(events=True)
    mode, fake = _cuda_fake_args(tensors)
    B, D = tensors[2].shape
    T = tensors[3].shape[1]
    with mode:
        out = torch.ops.hnode_fast.solve(*fake, rtol, atol, max_steps, 0, cap)
        assert out[0].shape == (T, B, D) and out[0].dtype == f64 and out[0].device.type == "cuda"
        assert out[1].shape == (B, 4) and out[1].dtype == torch.int64
        assert out[2].shape == (B, cap) and out[4].shape == (B, cap, D) and out[6].shape == (B,)
        gp, gy0, gev = torch.ops.hnode_fast.solve_backward(torch.empty_like(out[0]), *fake, rtol, atol, max_steps, 0, *out[1:])
        assert gp.shape == fake[1].shape and gy0.shape == (B, D) and gev.shape == fake[7].shape
        assert gy0.device.type == "cuda"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.skipif(not cuda.is_available(), reason="hnode_fast was built without CUDA")
@pytest.mark.parametrize("cap", [0, 16])
def test_opcheck_cuda_ops(cap):
    tensors, (rtol, atol, max_steps) = problem_args(events=True, device="cuda")
    torch.library.opcheck(torch.ops.hnode_fast.solve.default, (*with_grad(tensors), rtol, atol, max_steps, 0, cap))
    out = torch.ops.hnode_fast.solve(*tensors, rtol, atol, max_steps, 0, cap)
    torch.library.opcheck(
        torch.ops.hnode_fast.solve_backward.default, (torch.randn_like(out[0]), *tensors, rtol, atol, max_steps, 0, *out[1:])
    )
