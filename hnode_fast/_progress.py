"""Per-epoch progress of :func:`hf.fit`: a tqdm bar when stderr is a terminal, otherwise one
plain log line per epoch (so a redirected log is not filled with bar redraws)."""

from __future__ import annotations

import sys
from typing import Any, Dict, Optional, TextIO


def is_terminal(stream: TextIO) -> bool:
    """``stream.isatty()``, False for streams without it."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty()) if callable(isatty) else False


def terminal_bar(total: int, desc: str, stream: Optional[TextIO] = None) -> Optional[Any]:
    """A tqdm bar on ``stream`` (default ``sys.stderr``) when it is a terminal, else ``None``."""
    stream = stream if stream is not None else sys.stderr
    if not is_terminal(stream):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=stream)


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
        self.tty = is_terminal(self.stream)
        self.bar = terminal_bar(self.total, desc, self.stream) if self.enabled else None

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
