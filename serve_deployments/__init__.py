"""Ray Serve import paths kept at the repository root (``serve_deployments.lipsync:build_app``);
the applications themselves live in :mod:`dinet_platform.serving`."""
