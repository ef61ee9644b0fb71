"""``python -m modelbus_scorer``: build settings, configure logging, serve."""

from __future__ import annotations

from modelbus_platform.logging import configure_logging
from modelbus_platform.runtime import run

from .bootstrap import build_app
from .config import ScorerSettings


def main() -> None:
    settings = ScorerSettings()
    configure_logging(settings.service_name, settings.log_level, settings.log_json)
    run(build_app(settings), settings.http_host, settings.http_port)


if __name__ == "__main__":
    main()
