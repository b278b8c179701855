"""The lip-sync Serve application's top-level entry: ``serve_deployments.lipsync:build_app``.

The application lives in the package (:mod:`dinet_platform.serving.deployment`), so it imports
the same way from an editable install, a wheel or a cluster's runtime environment;
``configs/serve.yaml`` points there directly. This module keeps the old import path working.
"""

from dinet_platform.serving.deployment import LipSyncIngress, LipSyncModel, build_app

__all__ = ["LipSyncIngress", "LipSyncModel", "build_app"]
