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
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

KIND_CONSTANT, KIND_LINEAR, KIND_MASS_ACTION, KIND_MM, KIND_HILL, KIND_INPUT = range(6)
FLAG_CONSUME = 1
FLAG_REPRESS = 2


@dataclass(frozen=True)
class Term:
    """Base record of one mechanistic term (see the module docstring for the flux)."""

    kind: int = dc_field(init=False, default=-1)

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


class MechanisticGraph(nn.Module):
    """Known mechanism ``dz/dt = sum_terms stoichiometry * gate * flux``.

    Args:
        n_states: number of states ``D``.
        terms: list of term records (``hf.Constant``, ``hf.Linear`` ...).
        n_inputs: number of exogenous inputs ``K`` (``u(t)``, shape ``(B, K)``).
        param: ``"raw"`` (parameters stored as given) or ``"log"`` (stored as logs, all > 0).
        learn_gates: make the per-term gates learnable (HGS edge weights; default fixed at 1).
        state_names: optional names, used in error messages and by training utilities.
        dtype: dtype of the parameters (default ``torch.get_default_dtype()``); pass
            ``torch.float64`` for float64 work so literal rates are not first rounded to float32.

    Attributes:
        params: flat ``nn.Parameter`` of all term parameters (stored form), ``param_offsets``
            gives each term's slice. ``gates``: ``(n_terms,)``; ``term_mask``: bool buffer.

    Shapes: ``forward(z, u=None)`` maps ``(B, D)`` (and ``(B, K)``) to ``(B, D)``.
    """

    term_mask: torch.Tensor  # bool buffer (n_terms,)

    def __init__(
        self,
        n_states: int,
        terms: Sequence[Term] = (),
        n_inputs: int = 0,
        param: str = "raw",
        learn_gates: bool = False,
        state_names: Optional[Sequence[str]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if int(n_states) < 1:
            raise ValueError(f"n_states must be >= 1, got {n_states}")
        if param not in ("raw", "log"):
            raise ValueError(f"param must be 'raw' or 'log', got {param!r}")
        self.n_states = int(n_states)
        self.n_inputs = int(n_inputs)
        self.param = param
        self.terms = list(terms)
        if state_names is not None and len(state_names) != self.n_states:
            raise ValueError(f"state_names must have {self.n_states} names, got {len(state_names)}")
        self.state_names = list(state_names) if state_names is not None else None
        offsets: List[int] = []
        values: List[float] = []
        for j, term in enumerate(self.terms):
            self._validate_term(j, term)
            offsets.append(len(values))
            values.extend(float(v) for v in term.values())
        offsets.append(len(values))
        dtype = dtype or torch.get_default_dtype()
        vals = torch.tensor(values, dtype=torch.float64)
        if not torch.isfinite(vals).all():
            raise ValueError("terms: parameter values must be finite")
        if param == "log":
            if (vals <= 0).any():
                raise ValueError("terms: param='log' needs every parameter > 0")
            vals = torch.log(vals)
        self.params = nn.Parameter(vals.to(dtype))
        self.param_offsets = offsets
        self.gates = nn.Parameter(torch.ones(len(self.terms), dtype=dtype), requires_grad=bool(learn_gates))
        self.register_buffer("term_mask", torch.ones(len(self.terms), dtype=torch.bool))

    def _validate_term(self, j: int, term: Term) -> None:
        if not isinstance(term, Term) or term.kind < 0:
            raise ValueError(f"terms[{j}] must be a hf term record (Constant, Linear, ...), got {term!r}")
        D = self.n_states
        for s in term.sources():
            if not (isinstance(s, int) and 0 <= s < D):
                raise ValueError(f"terms[{j}]: source state {s!r} out of range [0, {D})")
        dst = getattr(term, "dst", None)
        if dst is not None and not (isinstance(dst, int) and 0 <= dst < D):
            raise ValueError(f"terms[{j}]: dst {dst!r} out of range [0, {D})")
        if isinstance(term, Input) and not (isinstance(term.k, int) and 0 <= term.k < self.n_inputs):
            raise ValueError(f"terms[{j}]: input index {term.k!r} out of range [0, {self.n_inputs}) (set n_inputs)")
        if isinstance(term, (Constant, Hill, Input)) and dst is None:
            raise ValueError(f"terms[{j}]: {type(term).__name__} needs a dst state")

    # ------------------------------------------------------------------ access
    @property
    def n_terms(self) -> int:
        return len(self.terms)

    def effective_params(self) -> torch.Tensor:
        """Flat effective parameter vector (``exp`` applied for ``param='log'``), ungated."""
        return torch.exp(self.params) if self.param == "log" else self.params

    def term_params(self, j: int) -> torch.Tensor:
        """Effective parameters of term ``j`` (ungated), e.g. ``(vmax, km)``."""
        a, b = self.param_offsets[j], self.param_offsets[j + 1]
        return self.effective_params()[a:b]

    def effective_gates(self) -> torch.Tensor:
        """``gates * term_mask``, shape ``(n_terms,)``."""
        return self.gates * self.term_mask

    def set_term_mask(self, m) -> None:
        m = torch.as_tensor(m)
        if tuple(m.shape) != (self.n_terms,):
            raise ValueError(f"term mask must have shape ({self.n_terms},), got {tuple(m.shape)}")
        self.term_mask.copy_(m.to(torch.bool).to(self.term_mask.device))
        # new sparsity structure: torch.compile'd solves guard on this and recompile (backends/cpu.py)
        self._hnode_structure_version = getattr(self, "_hnode_structure_version", 0) + 1

    def term_flags(self, term: Term) -> int:
        flags = 0
        if getattr(term, "consume", False) and not isinstance(term, Hill):
            flags |= FLAG_CONSUME
        if getattr(term, "repress", False):
            flags |= FLAG_REPRESS
        return flags

    def forward(self, z: torch.Tensor, u: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, D)`` states (``(B, K)`` inputs) -> ``(B, D)`` mechanistic derivative."""
        B, D = z.shape
        out = torch.zeros_like(z)
        if self.n_terms == 0:
            return out
        eff = self.effective_params()
        g = self.effective_gates().to(z.dtype)
        cols_add, cols_sub, vals_add, vals_sub = [], [], [], []
        for j, term in enumerate(self.terms):
            if not bool(self.term_mask[j]):
                continue
            p = list(eff[self.param_offsets[j] : self.param_offsets[j + 1]].to(z.dtype))
            p[0] = p[0] * g[j]
            src = term.sources()
            za = z[:, src[0]] if src else None
            zb = z[:, src[1]] if len(src) > 1 else None
            uk = None
            if isinstance(term, Input):
                if u is None:
                    raise ValueError("this field has Input terms: pass inputs (hf.Inputs) to odeint")
                uk = u[:, term.k]
            flux = term_flux(term.kind, self.term_flags(term), p, za, zb, uk)
            flux = flux.expand(B) if flux.dim() == 0 else flux
            dst = getattr(term, "dst", None)
            if dst is not None:
                cols_add.append(dst)
                vals_add.append(flux)
            if self.term_flags(term) & FLAG_CONSUME:
                for s in src:
                    cols_sub.append(s)
                    vals_sub.append(flux)
        if cols_add:
            out = out.index_add(1, torch.tensor(cols_add, device=z.device), torch.stack(vals_add, 1))
        if cols_sub:
            out = out.index_add(1, torch.tensor(cols_sub, device=z.device), -torch.stack(vals_sub, 1))
        return out

    def edges(self) -> list:
        """``(src, dst)`` state edges of unmasked terms (``src = -1 - k`` for input ``k``)."""
        out = []
        for j, term in enumerate(self.terms):
            if not bool(self.term_mask[j]):
                continue
            dst = getattr(term, "dst", None)
            if isinstance(term, Input):
                out.append((-1 - term.k, dst))
            for s in term.sources():
                if dst is not None:
                    out.append((s, dst))
        return out
