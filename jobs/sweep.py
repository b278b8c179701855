"""Ray Job: a loss-weight sweep. ``python jobs/sweep.py --config configs/sweep.yaml``."""

from __future__ import annotations

import sys

from dinet_platform.cli import app

if __name__ == "__main__":
    app(args=["sweep", *sys.argv[1:]])
