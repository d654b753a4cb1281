"""Per-epoch progress of :func:`hf.fit`: a tqdm bar when stderr is a terminal, otherwise one
plain log line per epoch (so a redirected log is not filled with bar redraws)."""

from __future__ import annotations

import sys
from typing import Dict, Optional, TextIO


class Progress:
    """``update(rec)`` once per epoch with the epoch's record; ``close()`` at the end.

    Args:
        enabled: False: silent.
        total: number of epochs.
        desc: label (the bar's description / the log lines' prefix).
        stream: where to write (default ``sys.stderr``); a bar is used only if it is a tty.
    """

    def __init__(self, enabled: bool, total: int, desc: str, stream: Optional[TextIO] = None) -> None:
        self.enabled = bool(enabled)
        self.total = int(total)
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.bar = None
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty()) if callable(isatty) else False
        if self.enabled and self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=desc, leave=False, dynamic_ncols=True, file=self.stream)

    @staticmethod
    def _fields(rec: Dict[str, float]) -> Dict[str, str]:
        return {
            "loss": f"{rec['loss']:.4g}",
            "val": f"{rec['val']:.4g}",
            "sparsity": f"{rec['sparsity']:.2f}",
            "nfe": f"{rec['nfe']:.0f}",
        }

    def update(self, rec: Dict[str, float]) -> None:
        if not self.enabled:
            return
        f = self._fields(rec)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(**f)
        else:
            line = " ".join(f"{k}={v}" for k, v in f.items())
            print(f"{self.desc}: epoch {int(rec['epoch']) + 1}/{self.total} {line}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
