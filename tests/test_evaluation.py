"""Evaluation metrics on constructed cases, the sync expert, the evaluation job and its CLI."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dinet_platform.cli import app
from dinet_platform.config import load_config
from dinet_platform.config.schema import EvaluationConfig, TemporalWeights
from dinet_platform.data.samples import ShardDataset
from dinet_platform.evaluation.data import VideoSet
from dinet_platform.evaluation.evaluate import (
    BLURRED_SOURCE,
    GROUND_TRUTH,
    PASTE_REFERENCE,
    evaluate,
)
from dinet_platform.evaluation.outputs import read_report
from dinet_platform.evaluation.runs import find_sync_expert, run_evaluation, run_train_syncnet
from dinet_platform.evaluation.sync_expert import audio_track, mouth_crops, sync_scores
from dinet_platform.evaluation.video_metrics import (
    LipReader,
    image_sums,
    summarize,
    temporal_sums,
    true_opening,
)
from dinet_platform.geometry import crop_geometry
from dinet_platform.losses.temporal import TemporalConsistencyLoss
from dinet_platform.models import build_generator
from dinet_platform.models.checkpoints import save_checkpoint
from dinet_platform.models.syncnet import SyncNet, clip_audio_track
from dinet_platform.tracking import KIND_TAG, client_for, experiment_id
from dinet_platform.training.stage import check_stage_inputs
from typer.testing import CliRunner

from tests.support import TINY_WIDTH, tiny_config, tiny_state, use_home, write_config

pytestmark = pytest.mark.unit

CLIP_LEN = 5
EVAL = tiny_config(
    "tiny-eval",
    data={"clip_len": CLIP_LEN},
    # A tiny expert: enough to find a shifted mouth on the 1.6 s test clips.
    syncnet={"steps": 300, "batch_size": 32, "lr": 1e-3, "max_shift": 6, "min_accuracy": 0.0},
    evaluation={"sync_offsets": 6, "max_frames": 40},
)


@pytest.fixture(scope="module")
def trained(prepared_dir, tmp_path_factory):
    """One sync expert trained by the job (MLflow run + registry) in a private home."""
    root = tmp_path_factory.mktemp("eval-home")
    with pytest.MonkeyPatch.context() as patch:
        use_home(patch, root / "home")
        config = load_config(write_config(root, EVAL, prepared_dir))
        client = client_for(config.tracking)
        outcome = run_train_syncnet(config, client)
        expert, source = find_sync_expert(config, client)
        yield {"root": root, "config": config, "outcome": outcome, "expert": expert,
               "source": source, "home": root / "home"}


@pytest.fixture
def expert_home(trained, monkeypatch) -> Path:
    """The module's store, where the sync expert is registered."""
    return use_home(monkeypatch, trained["home"])


def tiny_checkpoint(folder: Path, config, seed: int = 0) -> Path:
    return save_checkpoint(folder, tiny_state(config, seed=seed))


@pytest.mark.slow
def test_evaluation_core_imports_neither_ray_nor_mlflow():
    code = ("import sys, dinet_platform.evaluation.evaluate, dinet_platform.evaluation.outputs, "
            "dinet_platform.promotion.gates; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'mlflow'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------- constructed cases


def test_identical_video_scores_perfectly(prepared_dir):
    video = VideoSet(prepared_dir, "val").video(0, 64)
    real = video.float_frames()
    metrics = summarize(image_sums(real, real, 64).merge(temporal_sums(real, real.clone())))
    assert math.isinf(metrics["mouth_psnr"]) and math.isinf(metrics["outside_psnr"])
    assert math.isinf(metrics["seam_psnr"])
    assert metrics["mouth_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["warp_error"] == 0.0
    assert metrics["frame_diff_error"] == 0.0
    assert metrics["temporal_consistency"] == 1.0

    # A frozen output (the first frame repeated) has no consistency with the real motion, and
    # only the mouth changed: outside the mouth it is almost perfect.
    frozen = real.clone()
    rows, cols = slice(32, 96), slice(8, 72)
    frozen[..., rows, cols] = real[:1, :, rows, cols]
    worse = summarize(image_sums(frozen, real, 64).merge(temporal_sums(frozen, real)))
    assert worse["mouth_psnr"] < 40 and math.isinf(worse["outside_psnr"])
    assert worse["warp_error"] > 0 and worse["temporal_consistency"] < 0.9


def test_warp_error_is_the_temporal_loss_flow_term(prepared_dir):
    video = VideoSet(prepared_dir, "val").video(0, 64)
    real = video.float_frames(0, 6)
    torch.manual_seed(0)
    generated = (real + 0.05 * torch.randn_like(real)).clamp(0, 1)
    ours = summarize(temporal_sums(generated, real))
    terms = TemporalConsistencyLoss(TemporalWeights())(generated[None], real[None])
    # The loss pools reliable pixels over all pairs; we average per pair: equal within a few %.
    assert ours["warp_error"] == pytest.approx(float(terms.optical_flow), rel=0.05)
    assert ours["frame_diff_error"] == pytest.approx(float(terms.frame_diff), rel=1e-4)


class _OracleExpert(SyncNet):
    """Embeds a clip by the values it carries: frame t's pixels and audio are both t / 100,
    so the face of frames t.. matches exactly the audio of frames t.. ."""

    def __init__(self) -> None:
        super().__init__(frames=3, audio_channels=2, width=TINY_WIDTH)

    def embed_face(self, mouth_clip):
        values = mouth_clip.mean(dim=(2, 3, 4))
        return torch.nn.functional.normalize(torch.cat([values, torch.ones_like(values)], 1))

    def embed_audio(self, audio):
        values = audio[:, 0]
        return torch.nn.functional.normalize(torch.cat([values, torch.ones_like(values)], 1))


def test_sync_offset_sign_convention_is_exact():
    frames, shift = 30, 3
    values = torch.arange(frames, dtype=torch.float32) / 100
    mouths = values.view(-1, 1, 1, 1).expand(frames, 3, 8, 8)
    features = values.view(-1, 1).expand(frames, 2).contiguous()
    in_sync = sync_scores(_OracleExpert(), mouths, features, max_offset=5)
    assert in_sync.offset == 0 and in_sync.lse_d == pytest.approx(0, abs=1e-6)
    assert in_sync.lse_c > 0
    # Lips that show the sound of 3 frames later: the audio must be shifted by +3 to match.
    ahead = sync_scores(_OracleExpert(), mouths[shift:], features[: frames - shift], 5)
    assert ahead.offset == shift
    behind = sync_scores(_OracleExpert(), mouths[: frames - shift], features[shift:], 5)
    assert behind.offset == -shift


def test_lip_reader_reads_the_mouth_opening(prepared_dir):
    video = VideoSet(prepared_dir, "val").video(0, 64)
    real = video.float_frames()
    reader = LipReader(real, video.landmarks)
    truth = true_opening(video.landmarks)
    assert truth.max() > 8  # the clip does open its mouth
    read = reader.openings(real, video.landmarks, 64)
    error = (read - truth).abs().mean()
    frozen = reader.openings(real[:1].expand_as(real), video.landmarks, 64)
    assert error < 3.0  # px at mouth 64 (about 5 % of the mouth box)
    assert (frozen - truth).abs().mean() > 1.5 * error


# --------------------------------------------------------------------------- the sync expert


def test_sync_expert_pairs_audio_exactly_as_training(prepared_dir):
    dataset = ShardDataset(prepared_dir, 64, CLIP_LEN, split="val")
    video = VideoSet(prepared_dir, "val").video(0, 64)
    for index in (0, 7, len(dataset) - 1):
        sample = dataset[index]
        t = int(sample["frame_index"])
        expected = clip_audio_track(sample["clip_audio"][None])[0]
        assert torch.equal(audio_track(video.features, t, CLIP_LEN), expected)
        assert torch.equal(video.float_frames(t, t + CLIP_LEN), sample["clip"])


@pytest.mark.slow
def test_trained_expert_is_registered_and_finds_a_shifted_mouth(trained, prepared_dir):
    outcome, config = trained["outcome"], trained["config"]
    assert 0.0 <= outcome.metrics["val_accuracy"] <= 1.0 and outcome.metrics["val_pairs"] > 0
    assert outcome.version == 1 and outcome.production
    assert trained["source"] == "models:/dinet-syncnet/1"
    client = client_for(config.tracking)
    version = client.get_model_version_by_alias("dinet-syncnet", "production")
    assert float(version.tags["metric.val_accuracy"]) == pytest.approx(
        outcome.metrics["val_accuracy"], rel=1e-4)
    run = client.get_run(outcome.run_id)
    assert run.data.tags[KIND_TAG] == "syncnet" and "val_accuracy" in run.data.metrics
    # The registered expert is usable as the training sync loss, by URI or by run id.
    for reference in ("models:/dinet-syncnet@production", outcome.run_id):
        with_sync = config.model_copy(update={"loss": config.loss.model_copy(
            update={"sync": 0.1, "sync_expert": reference})})
        inputs = check_stage_inputs(with_sync, 64, client)
        assert inputs.sync_expert is not None and len(inputs.sync_expert) > 10

    expert = trained["expert"]
    found: dict[str, dict[int, int]] = {}
    distance: dict[int, list[float]] = {}  # held-out: per shift, the distance at each offset
    for split in ("train", "val"):
        video = VideoSet(prepared_dir, split).video(0, 64)
        mouths, features = mouth_crops(video.float_frames(), 64), video.features
        found[split] = {}
        for shift in (-4, 0, 4):
            if shift > 0:  # the lips show the sound of `shift` frames later
                pair = (mouths[shift:], features[: len(features) - shift])
            elif shift < 0:
                pair = (mouths[:shift], features[-shift:])
            else:
                pair = (mouths, features)
            scores = sync_scores(expert, *pair, max_offset=6)
            found[split][shift] = scores.offset
            if split == "val":
                distance[shift] = scores.distances
    # Exact on a clip it trained on.
    assert found["train"] == {-4: -4, 0: 0, 4: 4}, found
    # On the held-out clip a 300-step expert trained on three 1.6 s clips is only roughly
    # right: its distance over offsets is periodic like the speech, and which minimum wins over
    # +-6 frames depends on the CPU's float order (clean clones found {4: 6}, and {4: -6} on an
    # AMD EPYC, whose curve still had its minimum at +4 within the shifts tried). What it must
    # get right there: aligned audio reads as nearly aligned, and each shifted pair is closest
    # at its own shift among the shifts tried (offset k is at index k + 6).
    assert abs(found["val"][0]) <= 2, found
    for shift, curve in distance.items():
        assert min((-4, 0, 4), key=lambda k: curve[k + 6]) == shift, (shift, curve)


# --------------------------------------------------------------------------- the evaluation job


@pytest.mark.slow
def test_evaluation_run_compares_models_with_baselines(
    trained, prepared_dir, expert_home, tmp_path
):
    config = trained["config"]
    client = client_for(config.tracking)
    checkpoint = tiny_checkpoint(tmp_path / "model", config)
    outcome = run_evaluation(config, client, [("model", str(checkpoint))],
                             out_dir=tmp_path / "out")
    result = outcome.result
    assert set(result.metrics) == {"model", PASTE_REFERENCE, BLURRED_SOURCE, GROUND_TRUTH}
    truth = result.metrics[GROUND_TRUTH]
    assert math.isinf(truth["mouth_psnr"]) and truth["warp_error"] == 0.0
    for name in ("model", PASTE_REFERENCE, BLURRED_SOURCE):
        metrics = result.metrics[name]
        assert {"mouth_psnr", "mouth_ssim", "outside_psnr", "seam_psnr", "warp_error",
                "temporal_consistency", "lse_c", "lse_d", "sync_offset",
                "mouth_open_error_px"} <= set(metrics)
        assert metrics["mouth_psnr"] < 60
    # The paste baseline leaves everything outside the mouth untouched.
    assert math.isinf(result.metrics[PASTE_REFERENCE]["outside_psnr"])

    report = read_report(outcome.json_path)
    assert math.isinf(report["metrics"][GROUND_TRUTH]["mouth_psnr"])
    json.loads(outcome.json_path.read_text())  # strict JSON (no Infinity tokens)
    assert outcome.png_path.stat().st_size > 10_000
    run = client.get_run(outcome.run_id)
    assert run.data.tags[KIND_TAG] == "evaluation" and run.info.status == "FINISHED"
    assert run.data.metrics[f"{GROUND_TRUTH}/mouth_psnr"] == 100.0
    assert run.data.metrics["model/mouth_psnr"] == pytest.approx(
        result.metrics["model"]["mouth_psnr"])
    assert run.data.tags["dinet.eval.sync_expert"] == "models:/dinet-syncnet/1"
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id)}
    assert {"evaluation.json", "comparison.png", "mouth_strip.png", "config.yaml"} <= artifacts

    # The strip: the same frames of the first held-out video for every entry, the lower face
    # with the mouth box; the real row is the real video.
    frames = result.info["strip_frames"]
    assert len(frames) == 12 and frames == sorted(frames)
    assert set(result.strips) == set(result.metrics)
    assert len({strip.shape for strip in result.strips.values()}) == 1
    truth = torch.from_numpy(result.strips[GROUND_TRUTH]).float() / 255
    box = crop_geometry(result.mouth_size).mouth
    top = max(box.top - result.mouth_size // 8, 0)
    assert top + truth.shape[1] >= box.bottom
    real = VideoSet(prepared_dir, "val").video(0, result.mouth_size).float_frames()[frames]
    expected = real[:, :, top : top + truth.shape[1]].permute(0, 2, 3, 1)
    assert torch.allclose(truth, expected, atol=0.5 / 255 + 1e-6)
    assert outcome.json_path.with_name("mouth_strip.png").stat().st_size > 5_000


@pytest.mark.slow
def test_models_of_other_sizes_are_measured_at_one_size(prepared_dir, tmp_path):
    config = load_config(write_config(tmp_path, EVAL, prepared_dir))
    small = tiny_checkpoint(tmp_path / "m64", config)
    wider = config.model_copy(update={"stages": [config.stages[0].model_copy(
        update={"mouth_size": 96})]})
    big = save_checkpoint(tmp_path / "m96", {
        "generator": build_generator(config.model).state_dict(), "discriminators": {},
        "optimizers": None, "epoch": 0, "mouth_size": 96,
        "config": wider.model_dump(mode="json"), "metrics": {}})
    from dinet_platform.evaluation.evaluate import load_model

    models = [load_model("a", small, "a"), load_model("b", big, "b")]
    videos = VideoSet(prepared_dir, "val", max_frames=12)
    result = evaluate(models, videos, EvaluationConfig(), None, baselines=False)
    assert result.mouth_size == 96
    assert set(result.metrics) == {"a", "b", GROUND_TRUTH}
    assert "lse_c" not in result.metrics["a"]  # no expert: no sync metrics


@pytest.mark.slow
def test_evaluate_command_and_bad_input(trained, prepared_dir, expert_home, tmp_path):
    config_path = write_config(tmp_path, EVAL, prepared_dir)
    client = client_for(trained["config"].tracking)
    experiment = experiment_id(client, trained["config"].tracking.experiment)
    before = len(client.search_runs([experiment]))
    runner = CliRunner()

    checkpoint = tiny_checkpoint(tmp_path / "model", trained["config"])
    result = runner.invoke(app, ["evaluate", "--model", str(checkpoint), "--config",
                                 str(config_path), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli" / "comparison.png").is_file()
    assert "mouth PSNR" in result.output and "paste_reference" in result.output

    # Unknown model URI: a clear error, exit 2, no run recorded.
    result = runner.invoke(app, ["evaluate", "--model", "models:/dinet@nowhere",
                                 "--config", str(config_path)])
    assert result.exit_code == 2
    assert "no alias 'nowhere'" in result.output
    result = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "missing"),
                                 "--config", str(config_path)])
    assert result.exit_code == 2 and "missing" in result.output

    # Evaluation data without held-out videos.
    no_val = tmp_path / "no-val"
    shutil.copytree(prepared_dir, no_val)
    manifest = json.loads((no_val / "manifest.json").read_text())
    for video in manifest["videos"]:
        video["split"] = "train"
    (no_val / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["evaluate", "--model", str(checkpoint), "--data", str(no_val),
                                 "--config", str(config_path)])
    assert result.exit_code == 2
    assert "no held-out" in result.output
    result = runner.invoke(app, ["train-syncnet", "--data", str(no_val), "--config",
                                 str(config_path)])
    assert result.exit_code == 2 and "no held-out" in result.output
    assert len(client.search_runs([experiment])) == before + 1  # only the good evaluation
