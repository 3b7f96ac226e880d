"""A text progress bar on stderr for the long phases of a benchmark run.

The plan is known up front as a list of steps with a rough cost each (seconds,
from rate hints), so the bar can show the share of the whole run done and an
estimate of what is left; the estimate is scaled by how the finished steps
compared with their guesses. Inside a step, the driver's ``@progress`` lines
(jobs finished, samples taken) show as ``done/total``.

On a terminal the bar is redrawn in place; otherwise (a log file, CI) one line
is printed per step and at most every ``quiet_every`` seconds within a step.
"""

from __future__ import annotations

import sys
import threading
import time


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    def __init__(self, total_cost: float, stream=None, width: int = 24, quiet_every: float = 30.0):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total_cost = max(total_cost, 1e-9)
        self.width = width
        self.quiet_every = quiet_every
        self.started = time.monotonic()
        self.done_cost = 0.0  # guessed cost of the finished steps
        self.done_actual = 0.0  # what they really took
        self.step_label = ""
        self.step_cost = 0.0
        self.step_started = self.started
        self.detail = ""
        self._last_quiet = 0.0
        self._lock = threading.Lock()
        self._drawn = False

    # -- steps -------------------------------------------------------------------------

    def start(self, label: str, cost: float) -> None:
        with self._lock:
            self.step_label, self.step_cost, self.detail = label, cost, ""
            self.step_started = time.monotonic()
            self._draw(force=True)

    def update(self, done: int, total: int) -> None:
        """Within the current step: ``done`` of ``total`` (jobs, samples)."""
        with self._lock:
            self.detail = f"{done:,}/{total:,}"
            self._draw()

    def finish(self) -> None:
        with self._lock:
            self.done_cost += self.step_cost
            self.done_actual += time.monotonic() - self.step_started
            self.step_label, self.step_cost, self.detail = "", 0.0, ""

    def note(self, message: str) -> None:
        """A line of its own above the bar (the bar is redrawn under it)."""
        with self._lock:
            self._clear()
            print(message, file=self.stream, flush=True)
            self._draw(force=True)

    def close(self) -> None:
        with self._lock:
            self._clear()

    # -- drawing ---------------------------------------------------------------------------

    def _fraction(self) -> float:
        running = min(time.monotonic() - self.step_started, self.step_cost) if self.step_label else 0.0
        return min(1.0, (self.done_cost + running) / self.total_cost)

    def _eta(self) -> float | None:
        if self.done_cost <= 0:
            return None
        scale = self.done_actual / self.done_cost
        running = time.monotonic() - self.step_started if self.step_label else 0.0
        left = (self.total_cost - self.done_cost) * scale - running
        return max(left, 0.0)

    def _line(self) -> str:
        fraction = self._fraction()
        filled = int(fraction * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        eta = self._eta()
        parts = [f"[{bar}] {fraction * 100:3.0f}%", f"elapsed {_clock(time.monotonic() - self.started)}"]
        if eta is not None:
            parts.append(f"left ~{_clock(eta)}")
        if self.step_label:
            parts.append(self.step_label + (f" {self.detail}" if self.detail else ""))
        return "  ".join(parts)

    def _draw(self, force: bool = False) -> None:
        if self.tty:
            line = self._line()
            self.stream.write("\r\033[K" + line[: 200])
            self.stream.flush()
            self._drawn = True
            return
        now = time.monotonic()
        if force or now - self._last_quiet >= self.quiet_every:
            self._last_quiet = now
            print(self._line(), file=self.stream, flush=True)

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn = False
