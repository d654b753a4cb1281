"""Where ``hf.odeint``'s validation reports: one validator (``solve._validate``,
``Events.validate``, ``Inputs.validate``) written once against a :class:`CheckSink`.

A data-dependent check is ``sink.need(ok, message, host=None)`` with ``ok`` a function returning a
0-dim bool tensor:

* eager on the host (``CheckSink(record=False)``): evaluated at once (``host()`` when given, a
  faster host-side form of the same test), ``ValueError(message)`` if it fails;
* under ``torch.compile``, or eagerly on a GPU (``record=True``): ``(ok(), message)`` is recorded.
  A traced solve hands the records to the op (``Problem.checks``), which raises the first failed
  one at run time, so nothing is branched on while tracing; eagerly on a GPU :meth:`flush` reads
  them all back with one device synchronisation instead of one per check.

Shape and type checks do not depend on data and raise directly in every mode.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch

Check = Tuple[torch.Tensor, str]


class CheckSink:
    def __init__(self, record: bool) -> None:
        self.records: Optional[List[Check]] = [] if record else None

    @property
    def recording(self) -> bool:
        return self.records is not None

    def need(self, ok: Callable[[], torch.Tensor], message: str, host: Optional[Callable[[], bool]] = None) -> None:
        """Require ``ok()`` (a 0-dim bool tensor) to hold; ``host``: the same test evaluated on the
        host (used when not recording)."""
        if self.records is not None:
            self.records.append((ok(), message))
        elif not (host() if host is not None else bool(ok())):
            raise ValueError(message)

    def flush(self) -> None:
        """Raise for the first failed record (one read-back), then forget the records."""
        if self.records:
            run_checks_once(self.records)
            self.records.clear()


def run_checks_once(records: List[Check]) -> None:
    """Evaluate ``(0-dim bool tensor, message)`` checks with one read-back (one device sync);
    ``ValueError`` with the first failed check's message."""
    if not records:
        return
    oks = torch.stack([ok.reshape(()).to(records[0][0].device) for ok, _ in records]).cpu().tolist()
    for ok, (_, msg) in zip(oks, records):
        if not ok:
            raise ValueError(msg)


EAGER = CheckSink(record=False)
