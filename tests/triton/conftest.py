"""Triton kernel tests: run on CUDA when available, else on the CPU under TRITON_INTERPRET=1.

Run them in their own invocation (the interpreter must be enabled before triton is imported)::

    TRITON_INTERPRET=1 python -m pytest -q tests/triton

Without the variable and without a GPU every test here is skipped with a reason.
"""

import importlib.util
import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    reason = None
    if not HAS_TRITON:
        reason = "triton is not installed"
    elif not (INTERPRET or HAS_CUDA):
        reason = "Triton kernels need a CUDA GPU or TRITON_INTERPRET=1 (run: TRITON_INTERPRET=1 python -m pytest -q tests/triton)"
    if reason is None:
        return
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def device():
    return torch.device("cuda") if (HAS_CUDA and not INTERPRET) else torch.device("cpu")


@pytest.fixture
def tseed():
    """The suite's seed (tests/conftest.py seeds every test with it; HNODE_TEST_SEED overrides)."""
    s = int(os.environ.get("HNODE_TEST_SEED", 20240601))
    torch.manual_seed(s)
    print(f"HNODE_TEST_SEED={s}")
    return s
