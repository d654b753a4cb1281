"""The kernels compile for sm_90 ahead of time (triton's bundled ptxas; no GPU needed): catches
GPU code-generation errors that the interpreter cannot see. Runs in a subprocess without
TRITON_INTERPRET; small shapes keep it fast; the chunked (K > KC) dot path is included."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _nvidia_backend():
    try:
        from triton.backends import backends

        return "nvidia" in backends
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.skipif(not _nvidia_backend(), reason="triton's nvidia backend (ptxas) is not installed")
@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_kernels_compile_for_sm90(dtype):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable,
        "-m",
        "hnode_fast.backends.triton.aot",
        "--arch",
        "90",
        "--D",
        "3",
        "--hidden",
        "20",
        "20",
        "--kchunk",
        "16",
        "--inputs",
        "--dtype",
        dtype,
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    print(r.stdout, r.stderr[-2000:])
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    assert r.stdout.count(": ok") == 4
