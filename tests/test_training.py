"""Multiscale training on a real local Ray with 2 CPU workers, tracked in a real MLflow store."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from dinet_platform.cli import app
from dinet_platform.config import load_config
from dinet_platform.models.checkpoints import load_checkpoint
from dinet_platform.tracking import PARENT_TAG, client_for, experiment_id
from dinet_platform.training.pipeline import run_pipeline
from dinet_platform.training.stage import check_stage_inputs
from typer.testing import CliRunner

from tests.support import PIPELINE, write_config


def artifact_paths(client, run_id: str, path: str = "") -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


@pytest.mark.ray
def test_pipeline_hands_weights_from_stage_to_stage_and_resumes(
    ray_local, prepared_dir, home, tmp_path
):
    config = load_config(write_config(tmp_path, PIPELINE, prepared_dir))
    client = client_for(config.tracking)

    # "Interrupted" after the first stage: only 64 ran.
    first = run_pipeline(config, client, to_stage=64)
    assert [s.mouth_size for s in first.stages] == [64]
    # Re-run: stage 64 is skipped, only 96 runs, from 64's final weights.
    second = run_pipeline(config, client)
    assert second.run_id == first.run_id
    assert [(s.mouth_size, s.skipped) for s in second.stages] == [(64, True), (96, False)]

    stage64, stage96 = second.stages
    weights = {}
    for outcome in (stage64, stage96):
        local = client.download_artifacts(outcome.run_id, "checkpoint", str(tmp_path / str(
            outcome.mouth_size)))
        state = load_checkpoint(local)
        assert state["mouth_size"] == outcome.mouth_size
        weights[outcome.mouth_size] = state["generator"]
    params = [k for k in weights[64] if "running_" not in k and "num_batches" not in k]
    for key in params:
        torch.testing.assert_close(weights[96][key], weights[64][key], atol=1e-6, rtol=0)

    # MLflow: one parent, two finished children with per-epoch metrics and artifacts.
    experiment = experiment_id(client, config.tracking.experiment)
    children = client.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{first.run_id}'")
    assert sorted(r.data.tags["dinet.stage"] for r in children) == ["64", "96"]
    assert all(r.info.status == "FINISHED" for r in children)
    assert client.get_run(first.run_id).info.status == "FINISHED"
    history = client.get_metric_history(stage64.run_id, "val_mouth_psnr")
    assert sorted(m.step for m in history) == [0, 1]
    assert len(client.get_metric_history(stage64.run_id, "val_audio_gain_db")) == 2
    files = artifact_paths(client, stage64.run_id)
    assert {"config.yaml", "checkpoint/checkpoint.pt", "samples/epoch_000.png",
            "attention/epoch_001.png"} <= files
    run = client.get_run(stage96.run_id)
    assert run.data.params["init_from"] == stage64.run_id
    assert run.data.metrics["best_val_mouth_ssim"] > 0


def train_worker_pids() -> list[int]:
    """PIDs of live Ray Train worker processes (Ray titles them ``ray::RayTrainWorker...``)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"RayTrainWorker" in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process ended while we looked
            continue
    return sorted(pids)


@pytest.mark.ray
def test_killed_worker_resumes_from_last_checkpoint(ray_local, prepared_dir, home, tmp_path):
    faulty = {**PIPELINE, "name": "faulty",
              "stages": [{"mouth_size": 64, "epochs": 3, "batch_size": 2, "lr": 1e-3}]}
    path = write_config(tmp_path, faulty, prepared_dir)
    config = load_config(path)
    client = client_for(config.tracking)
    experiment = experiment_id(client, config.tracking.experiment)
    outcome: dict = {}
    worker = threading.Thread(
        target=lambda: outcome.update(result=run_pipeline(config, client)), daemon=True
    )
    worker.start()

    deadline = time.monotonic() + 600
    killed = None
    while killed is None and time.monotonic() < deadline and worker.is_alive():
        runs = client.search_runs([experiment], "tags.`dinet.kind` = 'stage'")
        if runs and client.get_metric_history(runs[0].info.run_id, "epoch")[-1:] and any(
            m.value >= 1 for m in client.get_metric_history(runs[0].info.run_id, "epoch")
        ):
            workers = train_worker_pids()
            if workers:
                killed = workers[-1]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    assert killed is not None, "the stage ended before a worker could be killed"
    worker.join(timeout=600)
    assert not worker.is_alive()

    stage = outcome["result"].stages[0]
    epochs = client.get_metric_history(stage.run_id, "epoch")
    assert {m.value for m in epochs} == {0.0, 1.0, 2.0}
    resumed = client.get_metric_history(stage.run_id, "resumed_from_epoch")
    assert resumed and resumed[-1].value >= 1
    state = load_checkpoint(client.download_artifacts(stage.run_id, "checkpoint",
                                                      str(tmp_path / "ckpt")))
    assert state["epoch"] == 2
    running = client.search_runs([experiment], "attributes.status = 'RUNNING'")
    assert running == []


@pytest.mark.unit
def test_bad_inputs_fail_before_any_worker_starts(prepared_dir, home, tmp_path):
    config = load_config(write_config(tmp_path, PIPELINE, prepared_dir))
    client = client_for(config.tracking)
    with pytest.raises(ValueError, match="training data"):
        check_stage_inputs(config, 64, client, shards=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="does not exist"):
        check_stage_inputs(config, 64, client, init_from="0" * 32)
    wider = load_config(write_config(tmp_path, {**PIPELINE, "name": "wider"}, prepared_dir),
                        ["model.width=0.25"])
    from dinet_platform.models import build_generator

    checkpoint = tmp_path / "other_width.pth"
    torch.save(build_generator(wider.model).state_dict(), checkpoint)
    with pytest.raises(ValueError, match="does not fit"):
        check_stage_inputs(config, 64, client, init_from=str(checkpoint))
    with pytest.raises(ValueError, match="no stage with mouth size 80"):
        check_stage_inputs(config, 80, client)


@pytest.mark.unit
def test_train_command_reports_bad_input_with_exit_code(prepared_dir, home, tmp_path):
    path = write_config(tmp_path, PIPELINE, tmp_path / "missing-shards")
    result = CliRunner().invoke(app, ["train", "--config", str(path)])
    assert result.exit_code == 2
    assert "training data" in result.output


@pytest.mark.unit
def test_pipeline_key_follows_only_what_training_depends_on():
    from dinet_platform.config import DINetConfig
    from dinet_platform.training.pipeline import pipeline_key

    base = DINetConfig.model_validate(PIPELINE)
    key = pipeline_key(base, "data-1")
    unrelated = base.model_copy(deep=True)
    unrelated.syncnet.steps += 1
    unrelated.serving.max_batch_size = 4
    unrelated.evaluation.sync_offsets += 1
    unrelated.tracking.experiment = "elsewhere"
    assert pipeline_key(unrelated, "data-1") == key
    changed = base.model_copy(deep=True)
    changed.loss.temporal.frame_diff += 1.0
    assert pipeline_key(changed, "data-1") != key
    assert pipeline_key(base, "data-2") != key


class LocalShard:
    """A Ray Train dataset shard's ``iter_torch_batches``, over a plain ``ShardDataset``;
    ``on_epoch`` is called each time an epoch starts reading it."""

    def __init__(self, dataset, on_epoch=None):
        self.dataset = dataset
        self.on_epoch = on_epoch

    def iter_torch_batches(self, batch_size: int, device=None, drop_last: bool = False):
        if self.on_epoch:
            self.on_epoch()
        yield from torch.utils.data.DataLoader(self.dataset, batch_size=batch_size,
                                               drop_last=drop_last)


@pytest.mark.cluster
def test_an_mlflow_outage_mid_stage_costs_logging_not_the_epoch(prepared_dir, home, tmp_path,
                                                                monkeypatch):
    """The worker function of a stage, run in this process as Ray Train's rank 0 (its Ray Train
    calls stood in for), logging to a real ``mlflow server`` that stops when the second epoch
    starts: both epochs still report their checkpoint, and the lost logging is a warning."""
    import contextlib

    import ray.train
    import ray.train.torch
    from dinet_platform.data.samples import ShardDataset
    from dinet_platform.training import loop
    from mlflow import MlflowClient

    from tests.cluster import mlflow_server
    from tests.support import tiny_config

    config = load_config(write_config(tmp_path, tiny_config(
        "outage", stages=[{"mouth_size": 64, "epochs": 2, "batch_size": 2, "lr": 1e-3}],
        training={"num_workers": 1, "steps_per_epoch": 1}), prepared_dir))
    server = contextlib.ExitStack()
    uri = server.enter_context(mlflow_server(tmp_path / "mlflow"))
    try:
        client = MlflowClient(uri)
        run_id = client.create_run(experiment_id(client, "outage")).info.run_id
        seen = {"epochs": 0, "reports": []}

        def logged_epochs() -> list[int]:
            return sorted(m.step for m in client.get_metric_history(run_id, "epoch"))

        def report(metrics, checkpoint=None):
            seen["reports"].append((int(metrics["epoch"]), sorted(os.listdir(checkpoint.path))))
            if len(seen["reports"]) == 1:
                seen["logged_at_first_report"] = logged_epochs()

        def epoch_starts():
            seen["epochs"] += 1
            if seen["epochs"] == 2:  # the server goes away as the second epoch starts
                seen["logged_before_outage"] = logged_epochs()
                server.close()

        def shard(split):
            dataset = ShardDataset(prepared_dir, 64, config.data.clip_len, split, config.data)
            return LocalShard(torch.utils.data.Subset(dataset, range(min(4, len(dataset)))),
                              epoch_starts if split == "train" else None)

        class Rank0:
            def get_world_rank(self):
                return 0

        monkeypatch.setattr(ray.train, "get_context", Rank0)
        monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
        monkeypatch.setattr(ray.train, "get_dataset_shard", shard)
        monkeypatch.setattr(ray.train, "report", report)
        monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cpu"))
        monkeypatch.setattr(ray.train.torch, "prepare_model", lambda model: model)
        with pytest.warns(loop.TrackingWarning) as caught:
            loop.train_loop_per_worker({
                "config": config.model_dump(mode="json"), "mouth_size": 64,
                "mlflow": {"tracking_uri": uri, "run_id": run_id}})
    finally:
        server.close()
    # Both epochs reported a checkpoint; the first before it was logged, then logged.
    assert [(epoch, "checkpoint.pt" in files) for epoch, files in seen["reports"]] == [
        (0, True), (1, True)]
    assert seen["logged_at_first_report"] == [] and seen["logged_before_outage"] == [0]
    [warning] = [w for w in caught if issubclass(w.category, loop.TrackingWarning)]
    message = str(warning.message)
    assert "epoch 1" in message and run_id in message and "training continues" in message
