"""Running the Serve app on the Ray this process uses: ``dinet serve`` and the demo."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dinet_platform.serving.settings import APP_NAME, ServeAppConfig


@contextmanager
def serve_app(settings: ServeAppConfig) -> Iterator[str]:
    """Start Serve on ``serving.host:port``, deploy the app (not waiting for readiness) and
    yield its URL; Serve is shut down on exit, also on errors and Ctrl-C."""
    from ray import serve

    from dinet_platform.serving.deployment import build_app

    serving = settings.serving
    serve.start(http_options={"host": serving.host, "port": serving.port})
    try:
        serve.run(build_app(settings.model_dump(mode="json")), name=APP_NAME, route_prefix="/",
                  blocking=False)
        yield f"http://{serving.host}:{serving.port}"
    finally:
        serve.shutdown()
