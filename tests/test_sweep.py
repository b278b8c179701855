"""Ray Tune sweeps: config validation (no Ray) and a real 4-trial sweep on the local Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dinet_platform.config import ConfigError, load_config
from dinet_platform.config.sweep import load_sweep_config
from dinet_platform.tracking import PARENT_TAG, client_for, experiment_id

from tests.support import ATTENTION, tiny_config, use_home

CONFIGS = Path(__file__).parents[1] / "configs"

BASE = tiny_config(
    "sweep-base",
    model=ATTENTION,
    stages=[{"mouth_size": 64, "epochs": 3, "batch_size": 2, "lr": 1e-3}],
    training={"steps_per_epoch": 1},
)


def write_sweep(tmp_path: Path, shards: Path | None = None, **changes) -> Path:
    base = yaml.safe_load(yaml.safe_dump(BASE))
    if shards is not None:
        base["data"]["shards"] = str(shards)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {
        "name": "tiny",
        "base_config": "base.yaml",
        "stage": 64,
        "epochs": 3,  # with 2, ASHA sometimes stopped no trial early
        "num_samples": 4,
        "max_concurrent_trials": 2,
        "space": {
            "loss.temporal.frame_diff": {"type": "loguniform", "low": 1.0, "high": 20.0},
            "model.attention.mouth_region_weight": {"type": "uniform", "low": 1.0, "high": 30},
            "model.attention.spatial": {"type": "choice", "values": [True, False]},
        },
    }
    sweep.update(changes)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


@pytest.mark.unit
def test_shipped_sweep_config_is_valid():
    sweep, base = load_sweep_config(CONFIGS / "sweep.yaml")
    assert sweep.stage in [s.mouth_size for s in base.stages]
    assert {"loss.temporal.frame_diff", "model.attention.mouth_region_weight"} <= set(sweep.space)


@pytest.mark.unit
def test_init_from_resolves_like_base_config(tmp_path, monkeypatch):
    """A local init_from is read relative to the sweep file (as the demo's ../models/base is);
    run ids and URIs pass through untouched."""
    (tmp_path / "models" / "base").mkdir(parents=True)
    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    (tmp_path / "else" / "where").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "else" / "where")  # where ../models/base does not exist
    path = write_sweep(sweeps, init_from="../models/base")
    sweep, _ = load_sweep_config(path)
    assert Path(sweep.init_from).resolve() == (tmp_path / "models" / "base").resolve()
    for reference in ("models:/dinet@production", "0123456789abcdef0123456789abcdef"):
        sweep, _ = load_sweep_config(write_sweep(sweeps, init_from=reference))
        assert sweep.init_from == reference


@pytest.mark.unit
@pytest.mark.parametrize(
    ("space", "detail"),
    [
        ({"loss.temporal.frame_dif": {"type": "uniform", "low": 1, "high": 2}},
         "loss.temporal.frame_dif: unknown key"),
        ({"loss.gan": {"type": "uniform", "low": 3, "high": 3}}, "empty range"),
        ({"loss.gan": {"type": "choice", "values": []}}, "non-empty"),
        ({"loss.temporal.long_term": {"type": "uniform", "low": -1, "high": 2}},
         "space.loss.temporal.long_term = -1"),
        ({"model.attention.spatial": {"type": "choice", "values": ["maybe"]}},
         "model.attention.spatial"),
        ({}, "at least one parameter"),
    ],
)
def test_bad_search_space_is_refused_naming_the_entry(tmp_path, space, detail):
    with pytest.raises(ConfigError) as excinfo:
        load_sweep_config(write_sweep(tmp_path, space=space))
    assert detail in str(excinfo.value)


@pytest.mark.unit
def test_stage_must_be_in_the_base_config(tmp_path):
    with pytest.raises(ConfigError, match="no stage with mouth_size 96"):
        load_sweep_config(write_sweep(tmp_path, stage=96))


def sweep_env(tmp_path: Path, monkeypatch) -> dict[str, str]:
    use_home(monkeypatch, tmp_path / "home")
    return {**os.environ}


def finished_trials(client, experiment: str) -> int:
    runs = client.search_runs([experiment], "tags.`dinet.kind` = 'trial'")
    return sum(run.info.status == "FINISHED" for run in runs)


@pytest.mark.ray
def test_interrupted_sweep_resumes_then_stops_weak_trials_and_writes_best_config(
    ray_local, prepared_dir, tmp_path, monkeypatch
):
    from dinet_platform.tuning.sweep import run_sweep

    env = sweep_env(tmp_path, monkeypatch)
    path = write_sweep(tmp_path, shards=prepared_dir)
    sweep, base = load_sweep_config(path)
    client = client_for(base.tracking)
    experiment = experiment_id(client, base.tracking.experiment)

    # Interrupt a real `dinet sweep` (Ctrl-C) once its first trial has finished.
    log = (tmp_path / "sweep.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "dinet_platform", "sweep", "--config", str(path)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 900
        while finished_trials(client, experiment) < 1 and process.poll() is None:
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.5)
        assert process.poll() is None, "the sweep ended before it could be interrupted"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=300) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    assert "run the same command again to resume" in (tmp_path / "sweep.log").read_text()

    # The same sweep again: restored, not restarted; Ctrl-C reaches the caller afterwards.
    handler = signal.getsignal(signal.SIGINT)
    result = run_sweep(sweep, base, client)
    assert signal.getsignal(signal.SIGINT) is handler
    report = result.report
    assert len(report.rows) == 4
    assert all(row.status != "failed" for row in report.rows)
    assert any(row.status == "stopped early" for row in report.rows)
    assert 0 < report.epochs_saved_fraction < 1
    best = load_config(result.best_config_path)
    assert best.loss.temporal.frame_diff == pytest.approx(
        report.best_params["loss.temporal.frame_diff"])
    assert best.training.num_workers == base.training.num_workers  # trial resources not leaked

    parents = client.search_runs([experiment], "tags.`dinet.kind` = 'sweep'")
    assert [p.info.run_id for p in parents] == [result.run_id]
    assert parents[0].info.status == "FINISHED"
    children = client.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{result.run_id}'")
    assert len({run.info.run_name for run in children}) == 4
    assert {a.path for a in client.list_artifacts(result.run_id)} >= {
        "best_config.yaml", "results.csv", "scores.png"}
    assert client.get_metric_history(children[0].info.run_id, "val_score")


@pytest.mark.ray
def test_failing_trial_is_retried_recorded_failed_and_the_sweep_goes_on(
    ray_local, prepared_dir, tmp_path, monkeypatch
):
    from dinet_platform.tuning.sweep import run_sweep

    sweep_env(tmp_path, monkeypatch)
    # batch 4096 cannot be filled from the test shards: that trial fails in every attempt.
    path = write_sweep(
        tmp_path, shards=prepared_dir, searcher="random", num_samples=1, epochs=1,
        max_failures=1, overrides={"training.max_failures": 0},
        space={"stages.0.batch_size": {"type": "grid", "values": [2, 4096]}},
    )
    sweep, base = load_sweep_config(path)
    client = client_for(base.tracking)
    result = run_sweep(sweep, base, client)

    statuses = {row.params["stages.0.batch_size"]: row.status for row in result.report.rows}
    assert statuses == {2: "finished", 4096: "failed"}
    assert next(row.error for row in result.report.rows if row.status == "failed")
    assert load_config(result.best_config_path).stages[0].batch_size == 2
    experiment = experiment_id(client, base.tracking.experiment)
    trials = client.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{result.run_id}'")
    assert sorted(run.info.status for run in trials) == ["FAILED", "FINISHED"]
