"""Ray Serve applications (import paths such as ``serve_deployments.lipsync:app``).

Kept thin: each application parses its config and calls the library's serving code.
"""
