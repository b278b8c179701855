"""Running the Serve app on the Ray this process uses: ``dinet serve`` and the demo."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from dinet_platform.paths import PROJECT_ROOT
from dinet_platform.serving.settings import APP_NAME, ServeAppConfig


@contextmanager
def serve_app(settings: ServeAppConfig) -> Iterator[str]:
    """Start Serve on ``serving.host:port``, deploy the app (not waiting for readiness) and
    yield its URL; Serve is shut down on exit, also on errors and Ctrl-C."""
    from ray import serve

    if str(PROJECT_ROOT) not in sys.path:  # serve_deployments/ lives at the repository root
        sys.path.insert(0, str(PROJECT_ROOT))
    from serve_deployments.lipsync import build_app

    serving = settings.serving
    serve.start(http_options={"host": serving.host, "port": serving.port})
    try:
        serve.run(build_app(settings.model_dump(mode="json")), name=APP_NAME, route_prefix="/",
                  blocking=False)
        yield f"http://{serving.host}:{serving.port}"
    finally:
        serve.shutdown()
