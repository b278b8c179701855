"""Ray Job: preprocess videos into Parquet shards (Ray Data), the input of every training stage.

    ray job submit --working-dir . -- python jobs/preprocess.py \
        --input /data/videos --out /shared/dinet/shards --config configs/multiscale.yaml

The same as ``dinet data prepare`` (options, output and exit status: 0 when at least one video
was prepared, 1 when none was, 2 for bad arguments or config). Each video may come with
``<name>.wav`` (audio), ``<name>.csv`` (OpenFace 2 landmarks) and ``<name>_deepspeech.npy``
next to it. Bad videos are skipped with a reason in the manifest; re-running on the same input
only does what is not done yet. On a cluster ``--out`` must be shared storage.
"""

from __future__ import annotations

import sys

from dinet_platform.cli import app

if __name__ == "__main__":
    app(args=["data", "prepare", *sys.argv[1:]])
