"""The loader: sample layout at every stage, references, masks, audio windows, augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from dinet_platform.config.schema import AugmentationConfig, DataConfig
from dinet_platform.data import augment
from dinet_platform.data.dataset import build_dataset
from dinet_platform.data.samples import SampleBuilder, ShardDataset, Window, sample_windows
from dinet_platform.geometry import crop_geometry

CLIP = 5
NO_AUG = DataConfig(augmentation=AugmentationConfig(enabled=False))
STRONG = AugmentationConfig(
    color_jitter=0.2, affine_jitter_px=3.0, blur_probability=0.0, references="same"
)


@pytest.mark.unit
@pytest.mark.parametrize("mouth", [64, 96, 128, 160])
def test_sample_layout_at_every_stage(prepared_dir: Path, mouth: int) -> None:
    geometry = crop_geometry(mouth)
    height, width = geometry.crop_shape
    dataset = ShardDataset(prepared_dir, mouth, CLIP, split="train", config=NO_AUG)
    sample = dataset[len(dataset) // 2]
    shapes = {key: tuple(value.shape) for key, value in sample.items()}
    assert shapes == {
        "source": (3, height, width),
        "reference": (15, height, width),
        "audio": (29, 5),
        "target": (3, height, width),
        "clip": (CLIP, 3, height, width),
        "clip_source": (CLIP, 3, height, width),
        "clip_audio": (CLIP, 29, 5),
        "mouth_mask": (1, height, width),
        "mouth_landmarks": (CLIP, 20, 2),
        "video_index": (),
        "frame_index": (),
    }
    for key in ("source", "reference", "target", "clip", "clip_source", "mouth_mask"):
        assert sample[key].dtype == torch.float32
        assert float(sample[key].min()) >= 0.0 and float(sample[key].max()) <= 1.0
    rows, cols = geometry.mouth.slices()
    assert float(sample["mouth_mask"].sum()) == mouth * mouth
    assert float(sample["mouth_mask"][0, rows, cols].min()) == 1.0
    assert float(sample["source"][:, rows, cols].abs().max()) == 0.0
    assert float(sample["target"][:, rows, cols].std()) > 0.01  # the mouth is really there
    keep = 1.0 - sample["mouth_mask"]
    torch.testing.assert_close(sample["source"], sample["target"] * keep)
    torch.testing.assert_close(sample["target"], sample["clip"][0])
    torch.testing.assert_close(sample["clip_source"][0], sample["source"])
    torch.testing.assert_close(sample["audio"], sample["clip_audio"][0])
    # The mask covers every mouth landmark of every clip frame.
    marks = sample["mouth_landmarks"]
    box = geometry.mouth
    assert bool(((marks[..., 0] >= box.left) & (marks[..., 0] < box.right)).all())
    assert bool(((marks[..., 1] >= box.top) & (marks[..., 1] < box.bottom)).all())


@pytest.mark.unit
def test_references_never_near_the_target(prepared_dir: Path) -> None:
    builder = SampleBuilder(prepared_dir, 64, CLIP, split="all", config=NO_AUG, seed=3)
    windows = sample_windows(builder.manifest, "all", CLIP, shuffle=False)
    assert len(windows) > 0
    for window in windows:
        refs = builder.references(window)
        assert len(refs) == 5
        assert np.all(np.abs(refs - window.t) > CLIP), (window, refs)
    sample = builder.build(windows[7])
    target = sample["target"]
    for k in range(5):
        assert not np.array_equal(sample["reference"][3 * k : 3 * k + 3], target)


@pytest.mark.unit
def test_audio_window_is_centred_and_edge_padded(prepared_dir: Path) -> None:
    builder = SampleBuilder(prepared_dir, 64, CLIP, split="all", config=NO_AUG)
    features = builder.reader.column(builder.shard(0), "audio")
    first = builder.build(Window(0, 0))
    np.testing.assert_array_equal(first["audio"], features[[0, 0, 0, 1, 2]].T)
    middle = builder.build(Window(0, 10))
    np.testing.assert_array_equal(middle["audio"], features[8:13].T)
    np.testing.assert_array_equal(middle["clip_audio"][4], features[12:17].T)


@pytest.mark.unit
def test_samples_are_deterministic_given_the_seed(prepared_dir: Path) -> None:
    config = DataConfig(augmentation=STRONG)
    one = SampleBuilder(prepared_dir, 64, CLIP, config=config, seed=1).build(Window(0, 4))
    two = SampleBuilder(prepared_dir, 64, CLIP, config=config, seed=1).build(Window(0, 4))
    other = SampleBuilder(prepared_dir, 64, CLIP, config=config, seed=2).build(Window(0, 4))
    for key in one:
        np.testing.assert_array_equal(one[key], two[key])
    assert not np.array_equal(one["reference"], other["reference"])


def _train_video(builder: SampleBuilder) -> int:
    return next(i for i, v in enumerate(builder.manifest["videos"]) if v["split"] == "train")


@pytest.mark.unit
def test_augmentation_is_one_draw_for_the_whole_sample(prepared_dir: Path) -> None:
    plain = SampleBuilder(prepared_dir, 96, CLIP, config=NO_AUG, seed=5)
    augmented = SampleBuilder(
        prepared_dir, 96, CLIP, config=DataConfig(augmentation=STRONG), seed=5
    )
    window = Window(_train_video(plain), 6)
    raw, out = plain.build(window), augmented.build(window)
    params = augment.sample_params(STRONG, augmented._rng(window, 1), (156, 120))
    assert params.has_warp and params.brightness != 1.0
    # Every clip frame and every reference went through the same parameters.
    expected_clip = augment.apply(torch.from_numpy(raw["clip"]), params).numpy()
    np.testing.assert_allclose(out["clip"], expected_clip, atol=1e-6)
    refs = torch.from_numpy(raw["reference"]).view(5, 3, 156, 120)
    expected_refs = augment.apply(refs, params).reshape(15, 156, 120).numpy()
    np.testing.assert_allclose(out["reference"], expected_refs, atol=1e-6)
    # The mask is applied after augmentation: the mouth box stays exactly zero.
    rows, cols = crop_geometry(96).mouth.slices()
    assert np.abs(out["clip_source"][:, :, rows, cols]).max() == 0.0
    assert not np.allclose(out["clip"], raw["clip"])


@pytest.mark.unit
def test_augmentation_applies_identically_to_identical_frames() -> None:
    frame = torch.rand(1, 3, 52, 40)
    params = augment.sample_params(STRONG, np.random.default_rng(0), (52, 40))
    out = augment.apply(frame.expand(4, -1, -1, -1).contiguous(), params)
    for k in range(1, 4):
        torch.testing.assert_close(out[k], out[0])


@pytest.mark.unit
def test_augmentation_off_when_disabled_and_on_validation(prepared_dir: Path) -> None:
    disabled = SampleBuilder(prepared_dir, 64, CLIP, config=NO_AUG, seed=5)
    window = Window(_train_video(disabled), 3)
    sample = disabled.build(window)
    raw = np.stack(
        [
            disabled.reader.frame(disabled.shard(window.video_index), t, disabled.geometry)
            for t in range(3, 3 + CLIP)
        ]
    )
    expected = torch.from_numpy(raw).permute(0, 3, 1, 2).float().div(255.0).numpy()
    np.testing.assert_array_equal(sample["clip"], expected)
    assert augment.sample_params(NO_AUG.augmentation, np.random.default_rng(0), (8, 8)) == (
        augment.IDENTITY
    )
    val = SampleBuilder(prepared_dir, 64, CLIP, split="val", config=DataConfig(), seed=5)
    assert not val.augment


@pytest.mark.unit
def test_augmented_landmarks_follow_the_warp() -> None:
    params = augment.AugmentParams(dx=2.0, dy=-1.0, angle=0.05, scale=1.02)
    image = torch.zeros(1, 3, 64, 48)
    image[0, :, 30, 20] = 1.0
    moved = augment.apply(image, params)
    y, x = np.unravel_index(int(moved[0, 0].argmax()), (64, 48))
    point = augment.transform_points(np.array([[20.0, 30.0]]), params, 64, 48)[0]
    assert abs(point[0] - x) <= 1 and abs(point[1] - y) <= 1


@pytest.mark.ray
def test_ray_dataset_matches_the_plain_path(ray_local, prepared_dir: Path) -> None:
    dataset = build_dataset(prepared_dir, 64, CLIP, split="val", config=NO_AUG, seed=0)
    rows = dataset.take(6)
    plain = SampleBuilder(prepared_dir, 64, CLIP, split="val", config=NO_AUG, seed=0)
    for row in rows:
        expected = plain.build(Window(int(row["video_index"]), int(row["frame_index"])))
        for key, value in expected.items():
            np.testing.assert_array_equal(np.asarray(row[key]), value)
    batch = next(iter(build_dataset(prepared_dir, 160, CLIP).iter_torch_batches(batch_size=2)))
    assert tuple(batch["clip"].shape) == (2, CLIP, 3, 260, 200)
    assert tuple(batch["reference"].shape) == (2, 15, 260, 200)
    assert batch["source"].dtype == torch.float32


@pytest.mark.unit
def test_windows_cover_every_valid_start_once(prepared_dir: Path) -> None:
    builder = SampleBuilder(prepared_dir, 64, CLIP, split="train", config=NO_AUG)
    windows = sample_windows(builder.manifest, "train", CLIP, seed=0, shuffle=True)
    frames = {i: v["num_frames"] for i, v in enumerate(builder.manifest["videos"])}
    train = [i for i, v in enumerate(builder.manifest["videos"]) if v["split"] == "train"]
    assert len(set(windows)) == len(windows) == sum(frames[i] - CLIP + 1 for i in train)
    assert windows != sample_windows(builder.manifest, "train", CLIP, seed=0, shuffle=False)
    assert windows == sample_windows(builder.manifest, "train", CLIP, seed=0, shuffle=True)


@pytest.mark.ray
def test_validation_cap_spreads_the_clips_over_every_held_out_video(
    ray_local, prepared_dir: Path
) -> None:
    manifest = SampleBuilder(prepared_dir, 64, CLIP, split="val", config=NO_AUG).manifest
    every = sample_windows(manifest, "val", CLIP, seed=0, shuffle=False)
    videos = {w.video_index for w in every}
    capped = NO_AUG.model_copy(update={"val_max_clips": 2 * len(videos)})
    rows = build_dataset(prepared_dir, 64, CLIP, split="val", config=capped).take_all()
    starts = [(int(r["video_index"]), int(r["frame_index"])) for r in rows]
    assert len(starts) == len(set(starts)) == 2 * len(videos)
    assert {v for v, _ in starts} == videos
    assert set(starts) <= {(w.video_index, w.t) for w in every}
    # A cap above the number of clips changes nothing.
    loose = NO_AUG.model_copy(update={"val_max_clips": len(every) + 1})
    assert build_dataset(prepared_dir, 64, CLIP, split="val", config=loose).count() == len(every)
