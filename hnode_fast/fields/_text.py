"""Text helpers of the ``describe()`` printouts (equations with aligned ``=`` signs)."""

from __future__ import annotations

from typing import List, Sequence


def format_number(v: float, digits: int = 6) -> str:
    """``v`` with ``digits`` significant digits, always with a decimal point or exponent
    (``1.0``, ``0.08``, ``1.5e-07``) so a coefficient never reads as an index."""
    out = f"{v:.{digits}g}"
    return out + ".0" if out.lstrip("-").isdigit() else out


def plural(n: int, word: str) -> str:
    """``"1 state"``, ``"2 states"``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def join_pieces(pieces: Sequence[str]) -> str:
    """``["+1.5*z0", "-1.0*z0*z1"]`` -> ``"+1.5*z0 - 1.0*z0*z1"``; no pieces -> ``"0"``."""
    if not pieces:
        return "0"
    return pieces[0] + "".join(f" {p[0]} {p[1:]}" for p in pieces[1:])


def format_equations(lhs: Sequence[str], rhs: Sequence[str], indent: str = "  ") -> List[str]:
    """``d<lhs>/dt = <rhs>`` lines with the ``=`` signs aligned."""
    heads = [f"d{x}/dt" for x in lhs]
    w = max((len(h) for h in heads), default=0)
    return [f"{indent}{h.ljust(w)} = {r}" for h, r in zip(heads, rhs)]
