"""``python -m modelbus_monitor``: run the monitor service."""

from __future__ import annotations

from modelbus_platform.kit import run_service

from .bootstrap import SPEC

if __name__ == "__main__":
    run_service(SPEC)
