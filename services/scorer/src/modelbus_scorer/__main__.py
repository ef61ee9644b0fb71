"""``python -m modelbus_scorer``: run the scorer service."""

from __future__ import annotations

from modelbus_platform.kit import run_service

from .bootstrap import SPEC

if __name__ == "__main__":
    run_service(SPEC)
