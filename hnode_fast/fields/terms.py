"""Mechanistic interaction graph: a sum of known kinetic terms with learnable rates.

Each term produces a non-negative-by-construction *flux* ``f(z, u)`` (for positive rates and
states) that is added to its destination state and, for conversions (``consume=True``),
subtracted from its source state(s)::

    dz/dt[dst] += g * f          dz/dt[src] -= g * f   (consume)

``g`` is the term's gate (1 unless learned; HGS edge weights) times its bool mask.

Term kinds (``kind`` codes are part of the FieldSpec contract):

====  ==========================================  ==============================================
code  term                                        flux ``f``
====  ==========================================  ==============================================
0     ``Constant(dst, rate)``                      ``rate``
1     ``Linear(src, dst, rate, consume=True)``     ``rate * z[src]``
2     ``MassAction((a, b), dst, rate, consume)``   ``rate * z[a] * z[b]``
3     ``MichaelisMenten(src, dst, vmax, km, c)``   ``vmax * z[src] / (km + z[src])``
4     ``Hill(src, dst, vmax, k, n, repress)``      ``vmax * r / (1 + r)`` or ``vmax / (1 + r)``,
                                                   ``r = (max(z[src], 0) / k) ** n``
5     ``Input(k, dst, rate)``                      ``rate * u_k(t)``
====  ==========================================  ==============================================

``dst=None`` means the flux leaves the system (elimination); Hill terms never consume their
regulator. Parameters are stored raw (``param="raw"``) or as logs (``param="log"``: the
effective value is ``exp`` of the stored one, which keeps rates positive).

Self-loops. A consuming term (``Linear``, ``MassAction``, ``MichaelisMenten`` with
``consume=True``) whose ``dst`` is one of its sources is a ``ValueError`` when the term is
constructed: as a conversion it would add ``f`` to ``dst`` and take it away again (``Linear(0, 0,
a)`` is identically zero; ``MassAction((0, 0), 0, k)`` nets ``dz0/dt = -k z0^2``, the reaction
``2 z0 -> z0``, not the ``+k z0^2`` it reads as), which is never what such a term is written for.
Growth, decay and autocatalytic terms are written with ``consume=False`` (``dz[dst] += g * f``
only): ``Linear(0, 0, a, consume=False)`` is ``dz0/dt = +a z0``, ``MassAction((0, 0), 0, k,
consume=False)`` is ``dz0/dt = +k z0^2``, a negative raw rate makes either a decay.
:meth:`MechanisticGraph.describe` prints the equations a graph computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Optional, Sequence, Tuple

import torch

KIND_CONSTANT, KIND_LINEAR, KIND_MASS_ACTION, KIND_MM, KIND_HILL, KIND_INPUT = range(6)
FLAG_CONSUME = 1
FLAG_REPRESS = 2


@dataclass(frozen=True)
class Term:
    """Base record of one mechanistic term (see the module docstring for the flux)."""

    kind: int = dc_field(init=False, default=-1)

    def __post_init__(self) -> None:
        msg = self_loop_error(self)
        if msg is not None:
            raise ValueError(msg)

    def sources(self) -> Tuple[int, ...]:
        return ()

    def values(self) -> Tuple[float, ...]:
        raise NotImplementedError

    def names(self) -> Tuple[str, ...]:
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(Term):
    dst: int
    rate: float
    kind: int = dc_field(init=False, default=KIND_CONSTANT)

    def values(self):
        return (self.rate,)

    def names(self):
        return ("rate",)


@dataclass(frozen=True)
class Linear(Term):
    src: int
    dst: Optional[int]
    rate: float
    consume: bool = True
    kind: int = dc_field(init=False, default=KIND_LINEAR)

    def sources(self):
        return (self.src,)

    def values(self):
        return (self.rate,)

    def names(self):
        return ("rate",)


@dataclass(frozen=True)
class MassAction(Term):
    srcs: Tuple[int, int]
    dst: Optional[int]
    rate: float
    consume: bool = True
    kind: int = dc_field(init=False, default=KIND_MASS_ACTION)

    def sources(self):
        return tuple(self.srcs)

    def values(self):
        return (self.rate,)

    def names(self):
        return ("rate",)


@dataclass(frozen=True)
class MichaelisMenten(Term):
    src: int
    dst: Optional[int]
    vmax: float
    km: float
    consume: bool = True
    kind: int = dc_field(init=False, default=KIND_MM)

    def sources(self):
        return (self.src,)

    def values(self):
        return (self.vmax, self.km)

    def names(self):
        return ("vmax", "km")


@dataclass(frozen=True)
class Hill(Term):
    src: int
    dst: int
    vmax: float
    k: float
    n: float
    repress: bool = False
    kind: int = dc_field(init=False, default=KIND_HILL)

    def sources(self):
        return (self.src,)

    def values(self):
        return (self.vmax, self.k, self.n)

    def names(self):
        return ("vmax", "k", "n")


@dataclass(frozen=True)
class Input(Term):
    k: int
    dst: int
    rate: float
    kind: int = dc_field(init=False, default=KIND_INPUT)

    def values(self):
        return (self.rate,)

    def names(self):
        return ("rate",)


def _is_state_index(i) -> bool:
    return isinstance(i, int) and not isinstance(i, bool)


def self_loop_error(term: Term) -> Optional[str]:
    """The error message for a consuming term whose ``dst`` is one of its sources, else ``None``.

    Such a term adds its flux ``f`` to ``dst`` and subtracts it once per source, so ``dst`` nets
    ``(1 - m) f`` (``m``: how often ``dst`` is a source) and any other source ``-f``: zero for
    ``Linear`` / ``MichaelisMenten``, ``-f`` for ``MassAction((a, a), a, k)``, and for
    ``MassAction((a, b), b, k)`` nothing at ``b`` and ``-f`` at ``a``.
    """
    if isinstance(term, Hill) or not bool(getattr(term, "consume", False)):
        return None
    dst = getattr(term, "dst", None)
    try:
        srcs = tuple(term.sources())
    except TypeError:  # malformed sources: MechanisticGraph reports them
        return None
    if not _is_state_index(dst) or dst not in srcs or (isinstance(term, MassAction) and len(srcs) != 2):
        return None
    if isinstance(term, MassAction):
        a, b = srcs
        r = term.rate
        head = f"hf.MassAction(srcs={srcs!r}, dst={dst!r}, rate={r!r})"
        flux = f"{r!r}*z{a}^2" if a == b else f"{r!r}*z{a}*z{b}"
        how = "subtracted once per source"
        if a == b:
            net = f"it nets dz{a}/dt = -f, the reaction 2 z{a} -> z{a}: the opposite sign"
            loser = a
        else:
            loser = a if b == dst else b
            net = (
                f"it nets 0 at z{dst} and dz{loser}/dt -= f, the reaction z{a} + z{b} -> z{dst} "
                f"(z{dst} catalyses the loss of z{loser}): z{dst} does not grow"
            )
        fix = f"hf.MassAction({srcs!r}, {dst!r}, {r!r}, consume=False)"
        rate_word = "rate"
        tail = (
            f" If you meant the conversion, write its net effect without the self-loop: "
            f"hf.MassAction({srcs!r}, {loser!r}, {-r!r}, consume=False)."
        )
    else:
        s0 = srcs[0]
        if isinstance(term, MichaelisMenten):
            head = f"hf.MichaelisMenten(src={s0!r}, dst={dst!r}, vmax={term.vmax!r}, km={term.km!r})"
            flux = f"{term.vmax!r}*z{s0}/({term.km!r} + z{s0})"
            fix = f"hf.MichaelisMenten({s0!r}, {dst!r}, {term.vmax!r}, {term.km!r}, consume=False)"
            elim = f"hf.MichaelisMenten({s0!r}, None, vmax, km)"
            rate_word = "vmax"
        else:  # Linear: the only other consuming kind
            lr = getattr(term, "rate", None)
            head = f"hf.Linear(src={s0!r}, dst={dst!r}, rate={lr!r})"
            flux = f"{lr!r}*z{s0}"
            fix = f"hf.Linear({s0!r}, {dst!r}, {lr!r}, consume=False)"
            elim = f"hf.Linear({s0!r}, None, rate)"
            rate_word = "rate"
        how = "subtracted from its source"
        net = f"it is zero, the reaction z{dst} -> z{dst}: the term does nothing"
        tail = f" Elimination (dz{s0}/dt -= f) is {elim}; a conversion needs a dst other than its source."
    return (
        f"{head}: dst {dst} is also a consumed source (consume=True), which has two readings. "
        f"As a conversion (the flux f = {flux} is added to dz{dst}/dt and {how}) {net}. "
        f"As growth / autocatalysis (dz{dst}/dt += f, sources not used up) it needs consume=False. "
        f"Pass consume=False for growth / decay / autocatalytic terms: {fix} (a negative {rate_word}, param='raw', decays).{tail}"
    )


def term_flux(kind: int, flags: int, p: Sequence[torch.Tensor], za, zb, u):
    """Flux of one term. ``p`` are the effective parameters (first one already gated);
    ``za``/``zb`` the source states (``(B,)``), ``u`` the input column for Input terms."""
    if kind == KIND_CONSTANT:
        return p[0]
    if kind == KIND_LINEAR:
        return p[0] * za
    if kind == KIND_MASS_ACTION:
        return p[0] * za * zb
    if kind == KIND_MM:
        return p[0] * za / (p[1] + za)
    if kind == KIND_HILL:
        x = torch.clamp(za, min=0.0)
        # r = (x/k)^n, written so x = 0 gives r = 0 with a finite gradient
        pos = x > 0
        safe = torch.where(pos, x, torch.ones_like(x))
        r = torch.where(pos, torch.exp(p[2] * torch.log(safe / p[1])), torch.zeros_like(x))
        if flags & FLAG_REPRESS:
            return p[0] / (1 + r)
        return p[0] * r / (1 + r)
    if kind == KIND_INPUT:
        return p[0] * u
    raise ValueError(f"unknown term kind {kind}")
