"""hnode_fast.types: the status codes and constants shared with the C++ core agree with it."""

import os
import re

import hnode_fast as hf
from hnode_fast.types import NONFINITE_STREAK, Status

CORE = os.path.join(os.path.dirname(__file__), "..", "csrc", "include", "hnode", "solve.h")


def _core_source():
    with open(CORE) as fh:
        return fh.read()


def test_status_codes_match_the_core():
    m = re.search(r"enum\s*\{([^}]*STATUS_OK[^}]*)\}", _core_source())
    assert m, "status enum not found in csrc/include/hnode/solve.h"
    core = {k.strip(): int(v) for k, v in (item.split("=") for item in m.group(1).split(",") if "=" in item)}
    assert core == {f"STATUS_{s.name}": int(s) for s in Status}


def test_nonfinite_streak_matches_the_core():
    m = re.search(r"constexpr int NONFINITE_STREAK = (\d+);", _core_source())
    assert m and int(m.group(1)) == NONFINITE_STREAK


def test_status_is_public_and_compares_with_stats():
    f = hf.HybridField(mech=hf.MechanisticGraph(1, [hf.Linear(0, None, 0.5)]).double())
    import torch

    _, st = hf.odeint(f, torch.ones(2, 1, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64), return_stats=True)
    assert bool((st.status == hf.Status.OK).all())
    _, st = hf.odeint(
        f, torch.ones(2, 1, dtype=torch.float64), torch.tensor([0.0, 100.0], dtype=torch.float64), max_steps=2, return_stats=True
    )
    assert bool((st.status == hf.Status.MAX_STEPS).all())


def test_spec_header_fields_match_the_core():
    """The FieldSpec header indices Python writes (fields/spec.py H_*) are the ones the C++ core
    reads (field.h HDR_*)."""
    from hnode_fast.fields import spec

    with open(os.path.join(os.path.dirname(CORE), "field.h")) as fh:
        src = fh.read()
    m = re.search(r"enum\s*\{([^}]*HDR_VERSION[^}]*)\}", src)
    assert m, "HDR_ enum not found in field.h"
    core = {k.strip(): int(v) for k, v in (item.split("=") for item in m.group(1).split(",") if "=" in item)}
    py = {f"HDR_{name[2:]}": getattr(spec, name) for name in dir(spec) if name.startswith("H_") and name[2:].isupper()}
    assert core == py and len(core) == 11
    m = re.search(r"SPEC_HEADER = (\d+), SPEC_LAYER_COLS = (\d+), SPEC_TERM_COLS = (\d+)", src)
    assert m and tuple(map(int, m.groups())) == (spec.HEADER, spec.LAYER_COLS, spec.TERM_COLS)
