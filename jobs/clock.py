"""The time, as a parameter: a worker's wall clock (for rows) and monotonic clock (for waits).

Tests hand a worker their own clock instead of patching ``time``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone


@dataclass(frozen=True)
class Clock:
    now: Callable[[], datetime] = timezone.now
    monotonic: Callable[[], float] = time.monotonic


REAL = Clock()
