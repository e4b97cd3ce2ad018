"""One progress bar driven by finished images (on a terminal), or a few plain lines when logged to a file."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str = "images", stream=None, enabled: bool = True):
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done = 0
        self.failed = 0
        self.start = time.monotonic()
        self._last_line = 0.0
        self._last_pct = -1

    def update(self, status: str) -> None:
        self.done += 1
        self.failed += status == "error"
        if not self.enabled:
            return
        t = time.monotonic()
        if self.tty:
            if t - self._last_line >= 0.1 or self.done == self.total:
                self._last_line = t
                self.stream.write("\r" + self.render(t))
                self.stream.flush()
        else:
            pct = self.done * 10 // self.total
            if pct != self._last_pct and (t - self._last_line >= 5 or self.done == self.total):
                self._last_pct, self._last_line = pct, t
                self.stream.write(self.render(t) + "\n")
                self.stream.flush()

    def render(self, t: float) -> str:
        elapsed = t - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        width = 30
        filled = width * self.done // self.total
        bar = "#" * filled + "-" * (width - filled)
        fails = f", {self.failed} failed" if self.failed else ""
        return f"[{bar}] {self.done}/{self.total} {self.label}{fails}  {rate:.2f}/s  ETA {eta:4.0f}s"

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
