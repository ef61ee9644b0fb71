"""Fixtures for the scorer tests. Tiny models, their artifacts and registry records are the
shared ones (``modelbus_embedded.testing``; fixtures ``make_model``, ``publish_artifact``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from modelbus_contracts.api import VersionView
from modelbus_embedded.testing import version_view


@pytest.fixture
def make_view() -> Callable[..., VersionView]:
    return version_view
