"""Ray Job / plain entrypoint: train the sync expert on prepared shards and register it.

    python jobs/train_syncnet.py --config configs/demo.yaml [--data SHARDS] [--no-register]

Reports held-out accuracy at telling in-sync from shifted pairs; the expert is logged to MLflow
(``checkpoint/syncnet.pt``) and registered as ``syncnet.registered_model`` (see
dinet_platform.evaluation.sync_expert).
"""

from __future__ import annotations

import sys

from dinet_platform.cli import app

if __name__ == "__main__":
    app(args=["train-syncnet", *sys.argv[1:]])
