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
    :meth:`describe` (and ``repr``) print the right-hand side per state with current values.
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
        if isinstance(term, MassAction) and len(term.sources()) != 2:
            raise ValueError(f"terms[{j}]: MassAction needs two source states (a, b), got srcs={term.srcs!r}")
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
        loop = self_loop_error(term)  # raised when the term was built; checked again for records made otherwise
        if loop is not None:
            raise ValueError(f"terms[{j}]: {loop}")

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

    # ------------------------------------------------------------------ describe
    def state_symbol(self, i: int) -> str:
        """Name of state ``i`` in :meth:`describe`: ``state_names[i]`` if given, else ``z{i}``."""
        return str(self.state_names[i]) if self.state_names is not None else f"z{i}"

    def _current_values(self) -> Tuple[List[float], List[float]]:
        """Effective parameters (``exp`` applied for ``param='log'``, ungated) and effective gates."""
        with torch.no_grad():
            eff = self.effective_params().detach().to("cpu", torch.float64).tolist()
            gates = self.effective_gates().detach().to("cpu", torch.float64).tolist()
        return eff, gates

    def _term_body(self, term: Term, p: Sequence[float], digits: int) -> str:
        """What multiplies (or divides) the term's first parameter, e.g. ``*z0*z1`` or ``/(1 + (z1/0.6)^2)``."""
        sym, num = self.state_symbol, format_number
        src = term.sources()
        if isinstance(term, Constant):
            return ""
        if isinstance(term, Linear):
            return f"*{sym(src[0])}"
        if isinstance(term, MassAction):
            a, b = src
            return f"*{sym(a)}^2" if a == b else f"*{sym(a)}*{sym(b)}"
        if isinstance(term, MichaelisMenten):
            x = sym(src[0])
            return f"*{x}/({num(p[1], digits)} + {x})"
        if isinstance(term, Hill):
            r = f"({sym(src[0])}/{num(p[1], digits)})^{p[2]:.{digits}g}"
            return f"/(1 + {r})" if term.repress else f"*{r}/(1 + {r})"
        if isinstance(term, Input):
            return f"*u{term.k}(t)"
        raise ValueError(f"unknown term {term!r}")

    def term_label(self, j: int, digits: int = 6) -> str:
        """One-line summary of term ``j`` with its current effective (ungated) parameters,
        e.g. ``terms[2] Linear(z0 -> z1, rate=0.4)``."""
        term = self.terms[j]
        eff, _ = self._current_values()
        p = eff[self.param_offsets[j] : self.param_offsets[j + 1]]
        if isinstance(term, Input):
            lhs = f"u{term.k}"
        else:
            lhs = " + ".join(self.state_symbol(s) for s in term.sources())
        dst = getattr(term, "dst", None)
        arrow = f"{lhs} -> {self.state_symbol(dst) if dst is not None else 'out'}".strip()
        vals = ", ".join(f"{n}={format_number(v, digits)}" for n, v in zip(term.names(), p))
        flags = ""
        if isinstance(term, (Linear, MassAction, MichaelisMenten)) and not term.consume:
            flags = ", consume=False"
        if isinstance(term, Hill) and term.repress:
            flags = ", repress=True"
        return f"terms[{j}] {type(term).__name__}({arrow}, {vals}{flags})"

    def rhs_pieces(self, digits: int = 6) -> List[List[str]]:
        """Per state ``i``, the signed pieces of ``dz_i/dt`` in term order, e.g.
        ``["+1.5*z0", "-1.0*z0*z1"]``.

        Each unmasked term contributes ``s * g * p0 * body`` to every state it touches, ``s`` its
        net stoichiometry there (``+1`` at ``dst``, ``-1`` per consumed source), ``g`` its gate,
        ``p0`` its first effective parameter (``exp`` applied for ``param='log'``). Masked-out
        terms contribute nothing and are left out."""
        eff, gates = self._current_values()
        rows: List[List[str]] = [[] for _ in range(self.n_states)]
        for j, term in enumerate(self.terms):
            if not bool(self.term_mask[j]):
                continue
            p = eff[self.param_offsets[j] : self.param_offsets[j + 1]]
            stoich: dict = {}
            dst = getattr(term, "dst", None)
            if dst is not None:
                stoich[dst] = stoich.get(dst, 0) + 1
            if self.term_flags(term) & FLAG_CONSUME:
                for s in term.sources():
                    stoich[s] = stoich.get(s, 0) - 1
            body = self._term_body(term, p, digits)
            for i, n in stoich.items():
                if n == 0:
                    continue
                c = n * gates[j] * p[0]
                rows[i].append(f"{'-' if c < 0 else '+'}{format_number(abs(c), digits)}{body}")
        return rows

    def describe_notes(self, digits: int = 6) -> List[str]:
        """Lines that qualify the equations: masked-out terms, gates other than 1, Hill clamping."""
        notes = []
        masked = [self.term_label(j, digits) for j in range(self.n_terms) if not bool(self.term_mask[j])]
        if masked:
            notes.append("masked out (term_mask False, not computed): " + "; ".join(masked))
        _, gates = self._current_values()
        live = [bool(m) for m in self.term_mask.tolist()]
        gated = [f"terms[{j}] {format_number(gates[j], digits)}" for j in range(self.n_terms) if live[j] and gates[j] != 1.0]
        if gated or self.gates.requires_grad:
            what = "learnable gates" if self.gates.requires_grad else "gates"
            notes.append(f"{what} (multiplied into each term's first parameter, included above): " + (", ".join(gated) or "all 1.0"))
        if any(isinstance(t, Hill) and bool(self.term_mask[j]) for j, t in enumerate(self.terms)):
            notes.append("Hill terms read max(z, 0) for their regulator")
        return notes

    def describe(self, digits: int = 6) -> str:
        """The right-hand side this graph computes, one line per state, with current values::

            MechanisticGraph: 2 states, 4 terms, param='raw'
              dprey/dt     = +1.5*prey - 1.0*prey*predator
              dpredator/dt = +1.0*prey*predator - 3.0*predator

        Coefficients are the effective parameters (``exp`` of the stored logs for
        ``param='log'``) times the term's gate and its stoichiometry (``-`` where a source is
        consumed); ``u{k}(t)`` is exogenous input ``k``; states are named by ``state_names``
        (else ``z{i}``). Notes after the equations list masked-out terms, gates other than 1
        and the Hill clamping. ``digits``: significant digits of every number."""
        head = f"MechanisticGraph: {plural(self.n_states, 'state')}, {plural(self.n_terms, 'term')}"
        if self.n_inputs:
            head += f", {plural(self.n_inputs, 'input')}"
        head += f", param={self.param!r}" + (" (values: exp of the stored logs)" if self.param == "log" else "")
        lines = [head] + self._equation_lines(digits)
        lines += [f"  {n}" for n in self.describe_notes(digits)]
        return "\n".join(lines)

    def _equation_lines(self, digits: int) -> List[str]:
        rhs = [join_pieces(p) for p in self.rhs_pieces(digits)]
        return format_equations([self.state_symbol(i) for i in range(self.n_states)], rhs)

    def extra_repr(self) -> str:
        head = f"n_states={self.n_states}, n_inputs={self.n_inputs}, n_terms={self.n_terms}, param={self.param!r}"
        if self.params.device.type == "meta":  # no values to show
            return head
        lines = [head] + [ln.strip() for ln in self._equation_lines(6)] + self.describe_notes()
        return "\n".join(lines)

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
