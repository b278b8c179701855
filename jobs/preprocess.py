"""Ray Job: preprocess videos into Parquet shards (Ray Data), the input of every training stage.

    ray job submit --working-dir . -- python jobs/preprocess.py \
        --input /data/videos --out /shared/dinet/shards --config configs/multiscale.yaml

Each video may come with ``<name>.wav`` (audio), ``<name>.csv`` (OpenFace 2 landmarks) and
``<name>_deepspeech.npy`` next to it. Bad videos are skipped with a reason in the manifest;
re-running on the same input only does what is not done yet. On a cluster ``--out`` must be
shared storage. Exit status: 0 when at least one video was prepared, 1 when none was, 2 for
bad arguments or config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dinet_platform.config import ConfigError, load_config
from dinet_platform.config.schema import DataConfig
from dinet_platform.data.prepare import prepare_dataset
from dinet_platform.paths import dinet_home


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", nargs="+", required=True, help="video folders or files")
    parser.add_argument("--out", help="output folder [data.shards or $DINET_HOME/data/shards]")
    parser.add_argument("--config", help="YAML config (data section and stage sizes)")
    parser.add_argument("--mouth-size", type=int, help="stored crop size [largest stage or 160]")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--local", action="store_true", help="no Ray: process in this process")
    parser.add_argument("--force", action="store_true", help="re-process finished videos")
    args = parser.parse_args(argv)

    data, stages = DataConfig(), [160]
    try:
        if args.config:
            config = load_config(args.config, args.overrides)
            data, stages = config.data, [stage.mouth_size for stage in config.stages]
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    missing = [path for path in args.input if not Path(path).exists()]
    if missing:
        print(f"error: input not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    out = Path(args.out or data.shards or dinet_home() / "data" / "shards")
    try:
        report = prepare_dataset(
            args.input,
            out,
            config=data,
            mouth_size=args.mouth_size or max(stages),
            use_ray=not args.local,
            force=args.force,
            log=print,
        )
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    manifest = report.manifest
    for skipped in manifest["skipped"]:
        print(f"skipped {skipped['video_id']}: {skipped['reason']}")
    print(json.dumps({"out": str(report.out_dir), **manifest["counts"],
                      "processed": len(report.processed), "already_done": len(report.reused),
                      "seconds": round(report.seconds, 2),
                      "content_hash": manifest["content_hash"]}, indent=2))
    return 0 if manifest["counts"]["videos_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
