"""Strict JSON output: Python's ``json`` writes ``NaN`` / ``Infinity``, which are not JSON."""

from __future__ import annotations

import math
from typing import Any


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN / inf floats replaced by ``None`` (recursively through dicts, lists, tuples),
    so ``json.dumps(json_safe(obj), allow_nan=False)`` succeeds and any JSON parser reads it."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
