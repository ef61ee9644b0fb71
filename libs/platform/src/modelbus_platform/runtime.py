"""Run a service: one process, one event loop, uvicorn serving the app whose lifespan starts the
bus and stores. ``python -m modelbus_<service>`` calls ``run``."""

from __future__ import annotations

from typing import Any

import uvicorn


def run(app: Any, host: str, port: int) -> None:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()
