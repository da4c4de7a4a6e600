"""A warning about a recurring problem, logged at most once per interval with how many it stands for.

Bad items in a catalog, examples the trainer leaves out, outputs over a size limit: each may
recur on every request or batch, and one line per occurrence would bury the log. Every
occurrence is counted (``count``); a line goes out at most every ``every_s`` seconds and says
how many occurrences it stands for.
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """``warn(msg, n)`` notes ``n`` occurrences and logs ``prefix + msg`` if ``every_s`` passed
    since the last line (naming the occurrences held back since). Thread-safe."""

    def __init__(self, logger: logging.Logger, prefix: str = "", every_s: float = 60.0) -> None:
        self.logger, self.prefix, self.every_s = logger, prefix, every_s
        self.count = 0  # occurrences over the object's life
        self._last = float("-inf")
        self._held = 0  # occurrences since the last line
        self._lock = threading.Lock()

    def warn(self, msg: str, n: int = 1) -> bool:
        """Note ``n`` occurrences; True if this call logged."""
        with self._lock:
            self.count += n
            self._held += n
            now = time.monotonic()
            if now - self._last < self.every_s:
                return False
            self._last, held, self._held = now, self._held, 0
        more = f" ({held - n} more since the last such warning)" if held > n else ""
        self.logger.warning("%s%s%s", self.prefix, msg, more)
        return True
