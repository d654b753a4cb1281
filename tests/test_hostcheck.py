"""hnode_fast._hostcheck (one call into _C per eager check) equals the torch expressions it
replaces, on fresh random inputs with NaN/inf planted, odd sizes and both fast and fallback paths."""

import pytest
import torch
from conftest import random_field

import hnode_fast as hf
from hnode_fast import _hostcheck, _native

needs_c = pytest.mark.skipif(_native._C is None, reason="compiled module hnode_fast._C not built")
DTYPES = [torch.float32, torch.float64]


def planted(n, dtype, bad):
    x = torch.randn(n, dtype=dtype)
    if bad is not None and n:
        x[int(torch.randint(0, n, ()))] = bad
    return x


@needs_c
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 7, 33, 1001])
@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), -float("inf")])
def test_all_finite(dtype, n, bad, seed):
    x = planted(n, dtype, bad)
    expect = bool(torch.isfinite(x).all())
    assert _hostcheck.all_finite(x) == expect
    assert _hostcheck.all_finite(x.reshape(1, -1, 1)) == expect
    assert _hostcheck.all_finite(torch.nn.Parameter(x.clone())) == expect
    if n > 1:  # non-contiguous (torch fallback) and a view with a storage offset (fast path)
        y = torch.stack([x, x], 1)[:, 1]
        assert not y.is_contiguous() and _hostcheck.all_finite(y) == expect
        assert _hostcheck.all_finite(x[1:]) == bool(torch.isfinite(x[1:]).all())


def test_all_finite_other_dtypes_fall_back():
    assert not _hostcheck.all_finite(torch.tensor([1.0, float("nan")], dtype=torch.float16))
    assert _hostcheck.all_finite(torch.tensor([1.0, 2.0], dtype=torch.bfloat16))


@pytest.mark.parametrize("fallback", [False, True])
def test_first_nonfinite(fallback, seed):
    """Index of the first tensor with NaN/inf among mixed float32/float64 tensors; one
    non-contiguous tensor sends the whole list to the torch path."""
    ts = [planted(int(torch.randint(1, 40, ())), DTYPES[i % 2], None) for i in range(6)]
    if fallback:
        ts[3] = torch.randn(5, 4, dtype=torch.float64).t()
    assert _hostcheck.first_nonfinite(ts) == -1
    assert _hostcheck.first_nonfinite([]) == -1
    for k in (4, 1):
        ts[k].view(-1)[0] = float("nan") if k == 4 else float("inf")
        assert _hostcheck.first_nonfinite(ts) == k


@needs_c
@pytest.mark.parametrize("shape", [(1,), (2,), (9,), (1, 5), (6, 11)])
def test_rows_increasing(shape, seed):
    t = torch.rand(shape, dtype=torch.float64).cumsum(-1)
    assert _hostcheck.rows_increasing(t)
    if t.shape[-1] > 1:
        for bad in ("equal", "decrease", "nan"):
            u = t.clone()
            r = tuple(int(torch.randint(0, s, ())) for s in u.shape[:-1])
            j = int(torch.randint(1, u.shape[-1], ()))
            u[r + (j,)] = {"equal": u[r + (j - 1,)], "decrease": u[r + (j - 1,)] - 0.5, "nan": float("nan")}[bad]
            assert not _hostcheck.rows_increasing(u), (bad, u)
            assert not bool((u[..., 1:] > u[..., :-1]).all())
    assert _hostcheck.rows_increasing(t.float()) == bool((t.float()[..., 1:] > t.float()[..., :-1]).all())  # fallback


@needs_c
def test_all_equal(seed):
    ts = [
        torch.randn(5, 3, dtype=torch.float64),
        torch.randn(17, dtype=torch.float32),
        torch.rand(4, 4) < 0.5,
        torch.randint(0, 9, (6,), dtype=torch.int32),
        torch.empty(0, dtype=torch.float64),
    ]
    snap = [t.clone() for t in ts]
    assert _hostcheck.all_equal(snap, ts) is True
    for i in range(4):  # one element changed in one tensor
        other = [t.clone() for t in ts]
        flat = other[i].view(-1)
        k = int(torch.randint(0, flat.numel(), ()))
        flat[k] = ~flat[k] if flat.dtype == torch.bool else flat[k] + 1
        assert _hostcheck.all_equal(snap, other) is False, i
    # floats by value, as torch.equal: NaN never equal, -0 == +0
    nan = torch.tensor([1.0, float("nan")], dtype=torch.float64)
    assert _hostcheck.all_equal([nan], [nan.clone()]) is False
    z = torch.tensor([0.0, 1.0])
    assert _hostcheck.all_equal([z], [-z * torch.tensor([1.0, -1.0])]) is True
    # not host float/int/bool tensors: the caller must use torch
    assert _hostcheck.all_equal([torch.ones(3, dtype=torch.float16)], [torch.ones(3, dtype=torch.float16)]) is None
    nc = torch.randn(4, 4, dtype=torch.float64).t()
    assert _hostcheck.all_equal([nc], [nc]) is None


def test_module_tensors_match_torch():
    f = random_field(D=4, hidden=(5, 3), mask_density=0.5)
    ps, bs = _hostcheck.module_tensors(f)
    assert [id(p) for p in ps] == [id(p) for p in f.parameters()]
    assert [id(b) for b in bs] == [id(b) for b in f.buffers()]

    class Shared(torch.nn.Module):  # shared submodule and parameter, a None bias, a buffer
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 3, bias=False)
            self.b = self.a
            self.c = torch.nn.Sequential(torch.nn.Linear(3, 2), self.a)
            self.w = self.c[0].weight
            self.register_buffer("buf", torch.zeros(2))
            self.register_buffer("none_buf", None)

    m = Shared()
    ps, bs = _hostcheck.module_tensors(m)
    assert [id(p) for p in ps] == [id(p) for p in m.parameters()]
    assert [id(b) for b in bs] == [id(b) for b in m.buffers()]


def test_odeint_checks_name_the_bad_value(seed):
    """The eager checks that use these helpers still raise the documented errors."""
    f = random_field(D=3, hidden=(4,))
    y0 = torch.rand(2, 3, dtype=torch.float64)
    t = torch.linspace(0, 1, 4, dtype=torch.float64)
    bad_y0 = y0.clone()
    bad_y0[1, 2] = float("nan")
    with pytest.raises(ValueError, match="y0 contains NaN"):
        hf.odeint(f, bad_y0, t, backend="reference")
    with pytest.raises(ValueError, match="t contains NaN"):
        hf.odeint(f, y0, torch.tensor([0.0, float("inf")], dtype=torch.float64), backend="reference")
    with pytest.raises(ValueError, match="strictly increasing"):
        hf.odeint(f, y0, torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64), backend="reference")
    name, p = list(f.named_parameters())[-1]
    with torch.no_grad():
        p.view(-1)[0] = float("inf")
    with pytest.raises(ValueError, match=f"parameter '{name}' of func contains NaN or inf"):
        hf.odeint(f, y0, t, backend="reference")
