"""The mechanistic interaction graph (:class:`MechanisticGraph`): a sum of known kinetic terms
with learnable rates, gates (HGS edge weights) and a term mask. The term kinds, their fluxes and
the self-loop rule are in :mod:`.terms`; ``describe()`` prints the equations a graph computes."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from ._text import format_equations, format_number, join_pieces, plural
from .terms import (
    FLAG_CONSUME,
    FLAG_REPRESS,
    Constant,
    Hill,
    Input,
    Linear,
    MassAction,
    MichaelisMenten,
    Term,
    self_loop_error,
    term_flux,
)

# re-exported: hybrid.py and older imports read these from here
__all__ = [
    "MechanisticGraph",
    "Term",
    "Constant",
    "Linear",
    "MassAction",
    "MichaelisMenten",
    "Hill",
    "Input",
    "format_equations",
    "format_number",
    "join_pieces",
    "plural",
]


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
