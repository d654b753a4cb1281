"""Shared fixtures: a fixed random seed for every test (HNODE_TEST_SEED overrides it), the backends, float64 strict mode."""

import os
import random

import pytest
import torch
from fieldgen import ROUGH_HILL, SMOOTH_HILL, random_field  # noqa: F401  (re-exported: tests import them from here)

from hnode_fast import backends

# Backends that solve hf.HybridField problems on CPU tensors in this build. Triton runs only
# under TRITON_INTERPRET=1 in its own pytest invocation (tests/triton).
FIELD_BACKENDS = [b for b in backends.available() if b in ("reference", "cpu")]


@pytest.fixture(params=FIELD_BACKENDS)
def backend(request):
    return request.param


# One fixed seed by default, so a run is reproducible and CI does not draw new failures by chance;
# HNODE_TEST_SEED=<n> overrides it, and tests/sweep_seeds.py runs the suite over many seeds
# (fuzzing). Every test starts from this seed (autouse), whether or not it asks for ``seed``.
DEFAULT_SEED = 20240601


def session_seed() -> int:
    return int(os.environ.get("HNODE_TEST_SEED", DEFAULT_SEED))


@pytest.fixture(autouse=True)
def _seed_every_test():
    torch.manual_seed(session_seed())
    random.seed(session_seed())


@pytest.fixture
def seed():
    s = session_seed()
    torch.manual_seed(s)
    print(f"HNODE_TEST_SEED={s}")
    return s
