"""The Ray Data loader: prepared shards -> a dataset of training samples for Ray Train.

::

    ds = build_dataset(shards_dir, mouth_size=64, clip_len=5, split="train", config=cfg.data)
    trainer = TorchTrainer(..., datasets={"train": ds})
    # in the train loop:
    for batch in ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=4): ...

The dataset's rows are *windows* ``(video, t)`` (pre-indexed from the manifest, see
:mod:`.samples`); ``map_batches`` turns a block of windows into samples with the same
:class:`~.samples.SampleBuilder` the plain-PyTorch :class:`~.samples.ShardDataset` uses. Each
Ray worker process keeps one builder (and its shard cache) per dataset configuration, so
repeated batches and epochs reuse open files and decoded frames.

References and augmentation parameters are a deterministic function of ``(seed, video, t)``:
pass a different ``seed`` (e.g. ``seed + epoch``) when building the dataset for a new epoch to
draw new ones.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dinet_platform.config.schema import DataConfig
from dinet_platform.data.samples import SampleBuilder, Window, sample_windows
from dinet_platform.data.shards import load_manifest, manifest_path

if TYPE_CHECKING:
    import ray.data

_BUILDERS: dict[str, SampleBuilder] = {}


def _builder(spec: str) -> SampleBuilder:
    """One builder per process and configuration (the shard cache lives in it)."""
    if spec not in _BUILDERS:
        args = json.loads(spec)
        _BUILDERS[spec] = SampleBuilder(
            args["shards"],
            args["mouth_size"],
            args["clip_len"],
            split=args["split"],
            config=DataConfig.model_validate(args["config"]),
            seed=args["seed"],
        )
    return _BUILDERS[spec]


def _build_batch(batch: dict[str, np.ndarray], spec: str) -> dict[str, np.ndarray]:
    builder = _builder(spec)
    samples = [
        builder.build(Window(int(v), int(t)))
        for v, t in zip(batch["video_index"], batch["t"], strict=True)
    ]
    return {key: np.stack([s[key] for s in samples]) for key in samples[0]}


def build_dataset(
    shards: str | Path,
    mouth_size: int,
    clip_len: int,
    split: str = "train",
    config: DataConfig | None = None,
    seed: int = 0,
    *,
    shuffle: bool | None = None,
    block_size: int = 8,
    num_cpus: float = 1.0,
) -> ray.data.Dataset:
    """A Ray dataset of samples at ``mouth_size`` (rows as in :mod:`.samples`).

    ``shuffle`` defaults to True for "train" and False otherwise; augmentation applies to the
    train split only (and only if ``config.augmentation.enabled``). ``block_size`` windows are
    built per task batch; ``num_cpus`` is reserved per task.
    """
    import ray.data

    config = config or DataConfig()
    manifest = load_manifest(shards)
    shuffle = split == "train" if shuffle is None else shuffle
    # Training windows are shuffled one by one, so a batch mixes videos: blocks of one video
    # made most batches a single identity and voice, and the model learned the average mouth.
    windows = sample_windows(manifest, split, clip_len, seed=seed, shuffle=shuffle, block_size=1)
    if split == "val" and config.val_max_clips and len(windows) > config.val_max_clips:
        step = len(windows) / config.val_max_clips
        windows = [windows[int(i * step)] for i in range(config.val_max_clips)]
    if not windows:
        raise ValueError(
            f"no {split!r} samples in {manifest_path(shards).parent}: "
            f"{manifest['counts']['videos_ok']} usable video(s), clip_len {clip_len}"
        )
    # Fail here, on the driver, for a bad mouth size or feature mismatch.
    SampleBuilder(
        shards, mouth_size, clip_len, split=split, config=config, seed=seed, manifest=manifest
    )
    spec = json.dumps(
        {
            "shards": str(manifest_path(shards).parent.resolve()),
            "mouth_size": mouth_size,
            "clip_len": clip_len,
            "split": split,
            "config": config.model_dump(mode="json"),
            "seed": seed,
        },
        sort_keys=True,
    )
    items: list[dict[str, Any]] = [{"video_index": w.video_index, "t": w.t} for w in windows]
    blocks = max(1, math.ceil(len(items) / (block_size * 4)))
    dataset = ray.data.from_items(items, override_num_blocks=blocks)
    return dataset.map_batches(
        _build_batch,
        fn_kwargs={"spec": spec},
        batch_size=block_size,
        batch_format="numpy",
        num_cpus=num_cpus,
    )
