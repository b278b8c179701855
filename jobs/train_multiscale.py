"""Ray Job: the whole multiscale pipeline (every stage in order) on the cluster it runs on.

    python jobs/train_multiscale.py --config configs/multiscale.yaml [--from-stage 96]
"""

from __future__ import annotations

import sys

from dinet_platform.cli import app

if __name__ == "__main__":
    app(args=["train", *sys.argv[1:]])
