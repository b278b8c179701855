"""Ray Job: train exactly one resolution stage as one Ray Train run.

    python jobs/train_stage.py --config configs/demo.yaml --stage 96 [--init-from RUN_OR_URI]

The stage belongs to the pipeline of its config and data (see dinet_platform.training.pipeline):
it starts from the previous stage's final checkpoint fetched through MLflow, or from
``--init-from`` (an MLflow run id, a checkpoint URI or a public DINet checkpoint file).
"""

from __future__ import annotations

import argparse

from dinet_platform.cli import app

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--stage", type=int, required=True, help="mouth size of the stage")
    parser.add_argument("--init-from")
    parser.add_argument("--shards")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    argv = ["train", "--config", args.config, "--from-stage", str(args.stage),
            "--to-stage", str(args.stage)]
    argv += ["--init-from", args.init_from] if args.init_from else []
    argv += ["--shards", args.shards] if args.shards else []
    for override in args.overrides:
        argv += ["--set", override]
    app(args=argv)
