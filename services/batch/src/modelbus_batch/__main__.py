"""``python -m modelbus_batch``: build settings, configure logging, serve."""

from __future__ import annotations

from modelbus_platform.logging import configure_logging
from modelbus_platform.runtime import run

from .bootstrap import build_app
from .config import BatchSettings


def main() -> None:
    settings = BatchSettings()
    configure_logging(settings.service_name, settings.log_level, settings.log_json)
    run(build_app(settings), settings.http_host, settings.http_port)


if __name__ == "__main__":
    main()
