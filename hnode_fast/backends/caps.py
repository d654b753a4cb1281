"""What each backend can solve, declared once (:data:`CAPS`) and read everywhere: by the backends'
entry points (:meth:`Caps.require` raises the one ``NotImplementedError``/``ValueError`` for what
is missing), by ``backend="auto"`` (:meth:`Caps.admits`), by ``backends.supports`` and by the
time-gradient and deferred-check paths of ``hf.odeint``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class Caps:
    """One backend's capabilities.

    ``devices``: device types of ``y0`` it runs on (None: any). ``any_callable``: solves plain
    callables ``func(t, y)`` (else ``hf.HybridField`` only). ``deferred_checks``: its op takes the
    validation checks computed in a ``torch.compile`` graph (else they are read before the call).
    ``time_grad``: gradients with respect to ``t``. ``input_grad``: gradients to
    ``inputs.values``. ``first_step``: honours ``options["first_step"]``.
    """

    name: str
    devices: Optional[Tuple[str, ...]]
    step_modes: Tuple[str, ...] = ("per_sample",)
    adjoints: Tuple[str, ...] = ("discrete", "backsolve")
    any_callable: bool = False
    deferred_checks: bool = False
    time_grad: bool = False
    input_grad: bool = False
    first_step: bool = False

    def missing(self, prob) -> Optional[Tuple[type, str]]:
        """``(exception type, message)`` for the first thing of ``prob`` this backend cannot do."""
        b = f"backend={self.name!r}"
        if not (prob.field_like or self.any_callable):
            return NotImplementedError, f"{b} solves hf.HybridField funcs only; use backend='reference' for plain callables func(t, y)"
        if prob.step_mode not in self.step_modes:
            only = f"{b} supports step_mode={self.step_modes[0]!r} only"
            return NotImplementedError, f"{only}; use backend='reference' for step_mode={prob.step_mode!r}"
        if prob.adjoint not in self.adjoints:
            return NotImplementedError, f"{b} has no adjoint={prob.adjoint!r} (it has {', '.join(self.adjoints)}); use backend='reference'"
        if prob.adjoint == "backsolve" and prob.events is not None and prob.events.amounts.requires_grad:
            return NotImplementedError, "adjoint='backsolve' gives no gradient to events.amounts; use adjoint='discrete'"
        if self.devices is not None and prob.y0.device.type not in self.devices:
            kinds = "/".join(d.upper() for d in self.devices)
            return ValueError, f"{b} needs {kinds} tensors, y0 is on {prob.y0.device}"
        if prob.first_step is not None and not self.first_step:
            return NotImplementedError, f"options['first_step'] is supported by backend='reference' only (got {b})"
        return None

    def require(self, prob) -> None:
        """Raise for the first thing of ``prob`` this backend cannot do."""
        miss = self.missing(prob)
        if miss is not None:
            raise miss[0](miss[1])

    def admits(self, prob) -> bool:
        """Whether ``backend="auto"`` may pick this backend for ``prob``."""
        return self.missing(prob) is None


CAPS: Dict[str, Caps] = {
    "reference": Caps(
        "reference", devices=None, step_modes=("per_sample", "shared"), any_callable=True, time_grad=True, input_grad=True, first_step=True
    ),
    "cpu": Caps("cpu", devices=("cpu",), deferred_checks=True, time_grad=True),
    "cuda": Caps("cuda", devices=("cuda",), adjoints=("discrete",), deferred_checks=True),
    # CPU tensors only under TRITON_INTERPRET=1 (checked by the Triton ops)
    "triton": Caps("triton", devices=("cuda", "cpu")),
}
