"""structlog, configured once per process: JSON when not on a terminal, key-value always."""

from __future__ import annotations

import logging
import sys
import time

import structlog


def configure_logging(service: str, level: str = "INFO", json: bool | None = None) -> None:
    if json is None:
        json = not sys.stderr.isatty()
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderer = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    once = OncePerInterval()
    for noisy in ("aiokafka", "faststream", "uvicorn.access", "pymongo"):
        logger = logging.getLogger(noisy)
        logger.setLevel(logging.WARNING)
        if not any(isinstance(f, OncePerInterval) for f in logger.filters):
            logger.addFilter(once)


class OncePerInterval(logging.Filter):
    """Lets the same message (its template: the values may differ) of a library logger through
    once per ``interval_s``, then says how many it held back: a client that retries 30 times a
    second (an unknown topic after a broker restart) writes one line per interval, not 30."""

    def __init__(self, interval_s: float = 30.0, clock=time.monotonic, max_keys: int = 1_000):
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self.max_keys = max_keys
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg)[:200])
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._last[key] = (last[0], last[1] + 1)
            return False
        if len(self._last) >= self.max_keys:
            self._last.clear()
        if last is not None and last[1]:
            record.msg = f"{record.msg} ({last[1]} like it in the last {self.interval_s:.0f} s)"
        self._last[key] = (now, 0)
        return True
