"""Ray Job entrypoint for the end-to-end demo: ``ray job submit -- python jobs/demo.py``."""

from __future__ import annotations

import sys

from dinet_platform.cli import app

if __name__ == "__main__":
    app(args=["demo", *sys.argv[1:]])
