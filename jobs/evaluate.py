"""Ray Job / plain entrypoint: evaluate models on held-out videos against baselines.

    python jobs/evaluate.py --model models:/dinet@production --data .dinet/data/shards \
        --config configs/demo.yaml [--model models:/dinet@candidate] [--out DIR]

Writes evaluation.json and comparison.png and records an MLflow evaluation run (see
dinet_platform.evaluation).
"""

from __future__ import annotations

import sys

from dinet_platform.cli import app

if __name__ == "__main__":
    app(args=["evaluate", *sys.argv[1:]])
