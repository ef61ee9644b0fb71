"""Trainer test setup: makes the shared helpers in ``trainer_fixtures.py`` importable."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
