"""Data benchmark: generation and preprocessing throughput, and loader samples/s.

    .venv/bin/python bench/data.py [--videos 4] [--seconds 4] [--size 256] [--out FILE.json]

Measured side by side in one run on a local 2-CPU Ray:

* generation: synthetic clips written per wall second (video seconds / s);
* preprocessing: ``prepare_dataset`` through Ray Data and in-process (video seconds / s);
* loader: training samples/s at mouth 64 and 160 through the Ray Data path
  (``iter_torch_batches``, whole passes: the first with cold Ray workers, then a warm one) and
  the plain PyTorch path (``DataLoader`` over ``ShardDataset``, 0 and 2 worker processes,
  after a few warm-up batches).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import markdown_table, write_json


def _loader_rate(batches, limit: int) -> tuple[float, int]:
    """Samples/s over up to ``limit`` samples of an iterable of batches."""
    count, start = 0, time.perf_counter()
    for batch in batches:
        count += len(batch["source"])
        if count >= limit:
            break
    return count / (time.perf_counter() - start), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--samples", type=int, default=160, help="samples per loader run")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", help="write results as JSON here")
    parser.add_argument("--workdir", help="keep generated files here (default: a temp dir)")
    args = parser.parse_args()

    import ray
    import torch
    from dinet_platform.config.schema import AugmentationConfig, DataConfig
    from dinet_platform.data.dataset import build_dataset
    from dinet_platform.data.prepare import prepare_dataset
    from dinet_platform.data.samples import ShardDataset
    from dinet_platform.synth.videos import synthesize_dataset

    work = Path(args.workdir or tempfile.mkdtemp(prefix="dinet-bench-data-"))
    video_seconds = args.videos * args.seconds
    rows: list[dict] = []

    start = time.perf_counter()
    synthesize_dataset(work / "videos", args.videos, args.seconds, seed=0, size=args.size)
    took = time.perf_counter() - start
    rows.append({"stage": "generate (synth)", "path": "in-process", "seconds": took,
                 "rate": video_seconds / took, "unit": "video s / s"})

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    runs = (
        ("ray data (2 CPUs), cold workers", True, False),
        ("ray data (2 CPUs), warm workers", True, True),
        ("in-process (1 CPU)", False, False),
    )
    for path, use_ray, force in runs:
        out = work / f"shards-{'ray' if use_ray else 'local'}"
        if not force:
            shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        report = prepare_dataset(work / "videos", out, mouth_size=160, use_ray=use_ray, force=force)
        took = time.perf_counter() - start
        rows.append({"stage": "preprocess (mouth 160)", "path": path, "seconds": took,
                     "rate": video_seconds / took, "unit": "video s / s",
                     "frames": report.manifest["counts"]["frames"]})
    shards = work / "shards-ray"

    config = DataConfig(augmentation=AugmentationConfig())  # default, gentle augmentation on
    for mouth in (64, 160):
        dataset = build_dataset(shards, mouth, config.clip_len, config=config)
        # Pass 1 starts Ray workers (imports, empty shard caches); later passes are what every
        # further epoch of a training run sees.
        for label in ("cold (1st pass)", "warm (3rd pass)"):
            if label.startswith("warm"):
                for _ in range(2):
                    _loader_rate(dataset.iter_torch_batches(batch_size=args.batch_size), 10**9)
            rate, count = _loader_rate(
                dataset.iter_torch_batches(batch_size=args.batch_size), 10**9
            )
            rows.append({"stage": f"load mouth {mouth}", "path": f"ray data (2 CPUs), {label}",
                         "rate": rate, "unit": "samples / s", "samples": count})
        for workers in (0, 2):
            plain = ShardDataset(shards, mouth, config.clip_len, config=config)
            loader = torch.utils.data.DataLoader(
                plain, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                persistent_workers=workers > 0,
            )
            _loader_rate(loader, min(args.samples, 4 * args.batch_size))  # warm-up
            rate, count = _loader_rate(loader, args.samples)
            rows.append({"stage": f"load mouth {mouth}",
                         "path": f"plain torch ({workers} workers)", "rate": rate,
                         "unit": "samples / s", "samples": count})
    ray.shutdown()

    print(markdown_table(rows, ["stage", "path", "rate", "unit", "seconds"]))
    write_json(args.out, {
        "benchmark": "data",
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "videos": args.videos,
        "seconds_per_video": args.seconds,
        "frame_size": args.size,
        "batch_size": args.batch_size,
        "results": rows,
    })
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
