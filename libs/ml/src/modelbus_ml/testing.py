"""Stand-ins for hostile models, for tests of the isolated checks (``onnx.vet_import_isolated``):
module-level so that a spawned child process can import them."""

from __future__ import annotations

import os
import time
from typing import Any


def crash(*args: Any) -> None:
    """What a model that segfaults its runtime does to the process."""
    os.abort()


def hang(*args: Any) -> None:
    time.sleep(3600)


def hog(*args: Any) -> None:
    """Allocate far more than any sane limit."""
    blocks = []
    while True:
        blocks.append(bytearray(256 << 20))
