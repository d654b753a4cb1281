"""The compiled extension: build description and the Dormand-Prince tableau."""

import numpy as np
import pytest

_native = pytest.importorskip("hnode_fast._native")


def test_build_info_keys_and_types():
    info = _native.build_info()
    expected = {
        "cuda": bool,
        "cuda_archs": list,
        "cxx_compiler": str,
        "openmp": bool,
        "version": str,
        "cpu": bool,
        "triton": bool,
        "torch": str,
        "python": str,
        "cuda_runtime_available": bool,
        "cuda_device_count": int,
    }
    for key, typ in expected.items():
        assert key in info, key
        assert isinstance(info[key], typ), (key, info[key])
    assert info["cpu"] is True
    assert all(isinstance(a, int) for a in info["cuda_archs"])
    assert info["cuda_compiler"] is None or isinstance(info["cuda_compiler"], str)
    assert info["cuda_device_count"] >= 0


def test_version_matches_metadata():
    from importlib.metadata import PackageNotFoundError, version

    from hnode_fast._version import __version__

    assert _native.build_info()["version"] == __version__
    try:
        assert version("hnode_fast") == __version__
    except PackageNotFoundError:  # running from a source tree without an install
        pytest.skip("hnode_fast is not installed")


def test_cuda_flag_consistent():
    info = _native.build_info()
    assert _native.has_cuda() == info["cuda"]
    if info["cuda"]:
        assert len(info["cuda_archs"]) > 0
        assert info["cuda_compiler"]
    else:
        assert info["cuda_archs"] == []
        assert info["cuda_compiler"] is None
        assert info["cuda_device_count"] == 0
    # torch sees a GPU only if the compiled runtime can see one too (when compiled with CUDA)
    if info["cuda"] and info["cuda_runtime_available"]:
        assert info["cuda_device_count"] >= 1


def test_dopri5_tableau_equals_scipy_rk45():
    rk = pytest.importorskip("scipy.integrate._ivp.rk")
    ref = rk.RK45
    tab = _native.dopri5_tableau()
    for name in ("A", "B", "C", "E", "P"):
        got = np.asarray(tab[name], dtype=np.float64)
        want = np.asarray(getattr(ref, name), dtype=np.float64)
        assert got.shape == want.shape, (name, got.shape, want.shape)
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert tab["n_stages"] == ref.n_stages == 6
    assert tab["order"] == ref.order == 5
    assert tab["error_estimator_order"] == ref.error_estimator_order == 4


def test_dopri5_tableau_consistency():
    tab = {k: np.asarray(v, dtype=np.float64) for k, v in _native.dopri5_tableau().items() if k in "ABCEP"}
    A, B, C, E, P = tab["A"], tab["B"], tab["C"], tab["E"], tab["P"]
    np.testing.assert_allclose(A.sum(axis=1), C, rtol=0, atol=1e-15)  # row sums = nodes
    assert B.sum() == pytest.approx(1.0, abs=1e-15)
    assert E.sum() == pytest.approx(0.0, abs=1e-15)
    # dense output at theta = 1 reproduces the 5th-order solution weights (k_6 weight 0)
    np.testing.assert_allclose(P.sum(axis=1), np.append(B, 0.0), rtol=0, atol=1e-14)
