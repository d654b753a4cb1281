"""The benchmark problem zoo: fields, output times, tolerances and initial-state samplers.

Used by ``hnode-fast bench`` (:mod:`hnode_fast.bench_runner`), the benchmark harness under
``benchmarks/`` and the tests. Problems (:data:`PROBLEMS`), all ``hf.HybridField`` so every
hnode backend runs them: ``mlp_small`` (D=4, hidden (16,)), ``mlp_medium`` (D=8, (32, 32)),
``mlp_large`` (D=32, (128, 128)) random tanh MLPs; ``lotka_volterra`` (mass-action graph);
``pk_hybrid`` (the demo's one-compartment PK model plus a small ELU network); ``vdp_mu10`` (Van
der Pol, mu=10, written as a mass-action graph on ``(x, y, w = x**2)``: ``x' = y``,
``y' = mu*y - mu*w*y - x``, ``w' = 2*x*y``). :func:`reference_solution` is the tight scipy
DOP853 solution the errors are measured against (scipy is imported only there);
:func:`epoch_setup` the synthetic training task of the ``epoch`` mode.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .fields import HybridField, Linear, MaskedMLP, MassAction, MechanisticGraph
from .solve import odeint


def mlp_field(
    D: int = 8,
    hidden: Sequence[int] = (32, 32),
    activation: str = "tanh",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    sparsity: float = 0.0,
) -> HybridField:
    """The benchmark MLP field: a random (optionally pruned) masked MLP, weights ~ N(0, 1/fan_in)."""
    g = torch.Generator().manual_seed(seed)
    net = MaskedMLP(D, D, hidden=hidden, activation=activation)
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) / layer.in_features**0.5)
            layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=g))
        if sparsity > 0:
            for i, layer in enumerate(net.layers):
                net.set_mask(i, torch.rand(layer.weight.shape, generator=g) >= sparsity)
    return HybridField(nn=net).to(dtype)


@dataclass
class BenchProblem:
    """One benchmark problem: a field, output times, tolerances and an initial-state sampler.

    ``y0(B)`` is deterministic and its first rows do not depend on ``B`` (one scipy reference
    serves every batch size)."""

    name: str
    field: HybridField
    t: torch.Tensor
    sample: Callable[[torch.Generator, int], torch.Tensor]
    rtol: float = 1e-5
    atol: float = 1e-7
    note: str = ""
    seed: int = 1
    _ref: Dict[int, torch.Tensor] = dc_field(default_factory=dict, repr=False)

    @property
    def D(self) -> int:
        return int(self.field.n_states)

    @property
    def dtype(self) -> torch.dtype:
        return self.t.dtype

    def y0(self, B: int, seed: Optional[int] = None) -> torch.Tensor:
        """``(B, D)`` initial states; drawn in blocks of 64 rows so that the first rows are the
        same for every ``B`` (torch's samplers change algorithm with the tensor size)."""
        g = torch.Generator().manual_seed(self.seed if seed is None else seed)
        blocks = [self.sample(g, 64) for _ in range(-(-B // 64))]
        return torch.cat(blocks)[:B].to(self.dtype)

    def reference(self, rows: int) -> torch.Tensor:
        """Tight scipy solution ``(T, rows, D)`` float64 from ``y0(rows)`` (cached)."""
        if rows not in self._ref:
            self._ref[rows] = reference_solution(self.field, self.y0(rows), self.t)
        return self._ref[rows]


def _mlp_problem(name: str, D: int, hidden: Tuple[int, ...], dtype: torch.dtype) -> BenchProblem:
    return BenchProblem(
        name,
        mlp_field(D, hidden, dtype=dtype),
        torch.linspace(0, 5, 20, dtype=dtype),
        lambda g, B: 0.5 * torch.randn(B, D, generator=g, dtype=torch.float64),
        note=f"random tanh MLP, D={D}, hidden {hidden}, t in [0, 5], 20 outputs",
    )


def lotka_volterra(dtype: torch.dtype = torch.float64, a: float = 1.5, b: float = 1.0, d: float = 1.0, g: float = 3.0) -> BenchProblem:
    """``x' = a x - b x y``, ``y' = d x y - g y`` as a mass-action graph (raw signed rates)."""
    mech = MechanisticGraph(
        2,
        [
            Linear(0, 0, a, consume=False),
            MassAction((0, 1), 0, -b, consume=False),
            MassAction((0, 1), 1, d, consume=False),
            Linear(1, None, g),
        ],
        dtype=torch.float64,
        state_names=["prey", "predator"],
    )
    return BenchProblem(
        "lotka_volterra",
        HybridField(mech=mech).to(dtype),
        torch.linspace(0, 10, 20, dtype=dtype),
        lambda gen, B: 1.0 + torch.rand(B, 2, generator=gen, dtype=torch.float64),
        note=f"Lotka-Volterra a={a} b={b} d={d} g={g}, y0 in [1, 2]^2, t in [0, 10]",
    )


def pk_hybrid(dtype: torch.dtype = torch.float64, ka: float = 1.5, ke: float = 0.08) -> BenchProblem:
    """The demo's one-compartment model (depot -ka-> central -ke->) plus a small ELU MLP."""
    mech = MechanisticGraph(2, [Linear(0, 1, ka), Linear(1, None, ke)], param="log", dtype=torch.float64, state_names=["depot", "central"])
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    net = MaskedMLP(2, 2, hidden=(32,), activation="elu").double()
    torch.random.set_rng_state(torch_state)
    with torch.no_grad():  # a perturbation of the mechanism, not a replacement
        net.layers[-1].weight.mul_(0.1)
        net.layers[-1].bias.mul_(0.1)
    return BenchProblem(
        "pk_hybrid",
        HybridField(mech=mech, nn=net).to(dtype),
        torch.linspace(0, 24, 20, dtype=dtype),
        lambda gen, B: torch.cat([4 + 2 * torch.rand(B, 1, generator=gen, dtype=torch.float64), torch.zeros(B, 1, dtype=torch.float64)], 1),
        note=f"one-compartment PK (ka={ka}, ke={ke}) + ELU MLP (32,), dose in [4, 6], t in [0, 24] h",
    )


def vdp(dtype: torch.dtype = torch.float64, mu: float = 10.0, t_end: float = 10.0) -> BenchProblem:
    """Van der Pol on ``(x, y, w = x**2)`` (mass-action terms are at most quadratic):
    ``x' = y``, ``y' = mu*y - mu*w*y - x``, ``w' = 2*x*y``; ``w(0) = x(0)**2`` keeps ``w = x**2``."""
    mech = MechanisticGraph(
        3,
        [
            Linear(1, 0, 1.0, consume=False),
            Linear(1, 1, mu, consume=False),
            MassAction((2, 1), 1, -mu, consume=False),
            Linear(0, 1, -1.0, consume=False),
            MassAction((0, 1), 2, 2.0, consume=False),
        ],
        dtype=torch.float64,
        state_names=["x", "y", "x2"],
    )

    def sample(gen: torch.Generator, B: int) -> torch.Tensor:
        x = (1.0 + 1.5 * torch.rand(B, generator=gen, dtype=torch.float64)) * torch.where(
            torch.rand(B, generator=gen, dtype=torch.float64) < 0.5, -1.0, 1.0
        )
        y = 0.5 * torch.randn(B, generator=gen, dtype=torch.float64)
        return torch.stack([x, y, x * x], 1)

    return BenchProblem(
        f"vdp_mu{mu:g}",
        HybridField(mech=mech).to(dtype),
        torch.linspace(0, t_end, 20, dtype=dtype),
        sample,
        note=f"Van der Pol mu={mu:g} (3-state mass-action form), |x0| in [1, 2.5], t in [0, {t_end:g}]",
    )


PROBLEMS: Dict[str, Callable[[torch.dtype], BenchProblem]] = {
    "mlp_small": lambda dt: _mlp_problem("mlp_small", 4, (16,), dt),
    "mlp_medium": lambda dt: _mlp_problem("mlp_medium", 8, (32, 32), dt),
    "mlp_large": lambda dt: _mlp_problem("mlp_large", 32, (128, 128), dt),
    "lotka_volterra": lambda dt: lotka_volterra(dt),
    "pk_hybrid": lambda dt: pk_hybrid(dt),
    "vdp_mu10": lambda dt: vdp(dt, mu=10.0),
}


def make_problem(name: str, dtype: torch.dtype = torch.float64) -> BenchProblem:
    """Build a registered problem (see :data:`PROBLEMS`)."""
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; choose from {sorted(PROBLEMS)}")
    return PROBLEMS[name](dtype)


def trainable(m: torch.nn.Module) -> List[torch.nn.Parameter]:
    """The parameters of ``m`` that require grad (what the timed backward passes and epochs update)."""
    return [p for p in m.parameters() if p.requires_grad]


@dataclass
class EpochSetup:
    """A perturbed copy of a problem's field and a synthetic dataset for the ``epoch`` mode."""

    model: HybridField
    init: Dict[str, torch.Tensor]
    y0: torch.Tensor  # (N, D)
    target: torch.Tensor  # (T, N, D)
    B: int
    n_batches: int
    lr: float = 1e-3

    def call(self, fn: Callable[[torch.Tensor, torch.Tensor], Any], t: torch.Tensor) -> Callable[[], None]:
        params = trainable(self.model)

        def epoch() -> None:
            self.model.load_state_dict(self.init)
            opt = torch.optim.Adam(params, lr=self.lr)
            for i in range(self.n_batches):
                sl = slice(i * self.B, (i + 1) * self.B)
                opt.zero_grad(set_to_none=True)
                y, _ = fn(self.y0[sl], t)
                loss = (y - self.target[:, sl]).square().mean()
                loss.backward()
                opt.step()

        return epoch


def epoch_setup(prob: BenchProblem, B: int, n_batches: int, device: torch.device, seed: int = 123) -> EpochSetup:
    """Dataset: ``n_batches * B`` initial states (seed ``seed``) and the true field's tight solution;
    model: the field with every trainable parameter scaled by ``1 + 0.05 * N(0, 1)``."""
    N = n_batches * B
    y0 = prob.y0(N, seed=seed).to(device)
    t = prob.t.to(device)
    with torch.no_grad():
        target = odeint(prob.field, y0, t, rtol=prob.rtol * 1e-3, atol=prob.atol * 1e-3)
        model = copy.deepcopy(prob.field)
        g = torch.Generator().manual_seed(seed)
        for p in trainable(model):
            p.mul_(1 + 0.05 * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p))
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return EpochSetup(model, init, y0, target, B, n_batches)


def reference_solution(field: HybridField, y0: torch.Tensor, t: torch.Tensor, rtol: float = 1e-12, atol: float = 1e-12) -> torch.Tensor:
    """Tight scipy DOP853 solution (float64, CPU), ``(T, B, D)``; all rows in one system."""
    import numpy as np
    from scipy.integrate import solve_ivp

    f64 = copy.deepcopy(field).to(device="cpu", dtype=torch.float64)
    y0 = y0.detach().to("cpu", torch.float64)
    B, D = y0.shape
    tt = t.detach().to("cpu", torch.float64)

    def fun(s: float, z: Any) -> Any:
        with torch.no_grad():
            return f64(s, torch.from_numpy(np.ascontiguousarray(z)).view(B, D)).reshape(-1).numpy()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny evaluations: a thread pool only adds overhead
    try:
        sol = solve_ivp(
            fun, (float(tt[0]), float(tt[-1])), y0.reshape(-1).numpy(), method="DOP853", t_eval=tt.numpy(), rtol=rtol, atol=atol
        )
    finally:
        torch.set_num_threads(threads)
    if not sol.success:
        raise RuntimeError(f"scipy reference failed: {sol.message}")
    return torch.from_numpy(sol.y.T.reshape(len(tt), B, D).copy())
