"""The model registry: registration, quality gates, promotion, rollback, bad input; against the
embedded SQLite store and against a real ``mlflow server``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from dinet_platform.cli import app
from dinet_platform.config import load_config
from dinet_platform.config.schema import GateConfig
from dinet_platform.models.checkpoints import CHECKPOINT_FILE, load_checkpoint
from dinet_platform.promotion.gates import check_gates, gates_passed
from dinet_platform.promotion.workflow import promote, register_model
from dinet_platform.registry.refs import resolve
from dinet_platform.registry.versions import (
    SOURCE_RUN_TAG,
    list_versions,
    rollback,
)
from dinet_platform.tracking import client_for
from mlflow.exceptions import MlflowException
from typer.testing import CliRunner

from tests.cluster import mlflow_server
from tests.support import TRAINED, copy_pipeline, log_stage_run, merged, use_home, write_config

REGISTRY = merged(TRAINED, {
    # These tests are about the holder gates, promotion and rollback on a barely trained
    # model; the floor (beat the baselines) has tests of its own and is opened here.
    "evaluation": {"max_frames": 24, "gates": {"min_mouth_psnr_gain_db": -100.0,
                                               "min_mouth_open_corr": -1.0,
                                               "min_sync_confidence_gain": -100.0}},
})
NAME = "dinet"


def degraded(state: dict, scale: float = 2.0, seed: int = 0) -> dict:
    """The same checkpoint with Gaussian noise (``scale`` x each tensor's std) on the
    generator's weights. BatchNorm absorbs mild noise, so it takes a strong dose to degrade
    a barely trained model reliably."""
    generator = torch.Generator().manual_seed(seed)
    noisy = {}
    for key, value in state["generator"].items():
        if value.is_floating_point() and value.numel() > 1:
            noise = torch.randn(value.shape, generator=generator) * value.std() * scale
            value = value + noise
        noisy[key] = value
    return {**state, "generator": noisy}


def snapshot(client) -> dict:
    """Everything the registry holds for NAME: versions with tags, and aliases."""
    try:
        model = client.get_registered_model(NAME)
    except MlflowException:
        return {}
    versions = {
        v.version: sorted(v.tags.items()) for v in client.search_model_versions(f"name='{NAME}'")
    }
    return {"aliases": dict(model.aliases), "versions": versions}


def assert_aliases_resolve(client) -> None:
    """No alias names a version that does not exist."""
    model = client.get_registered_model(NAME)
    for alias, version in model.aliases.items():
        assert str(client.get_model_version(NAME, str(version)).version) == str(version), alias


def holder(client, alias: str) -> int | None:
    try:
        return int(client.get_model_version_by_alias(NAME, alias).version)
    except MlflowException:
        return None


@pytest.fixture(scope="module")
def trained(trained_pipeline, prepared_dir, tmp_path_factory):
    """The session's tiny trained pipeline (one stage, 2 epochs of 2 steps on Ray), copied
    into this module's own embedded store."""
    root = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as patch:
        home = use_home(patch, root / "home")
        config = load_config(write_config(root, REGISTRY, prepared_dir))
        client = client_for(config.tracking)
        pipeline = copy_pipeline(trained_pipeline, client)
        state = load_checkpoint(resolve(pipeline.stage_run_ids[-1], client).path)
        yield {"home": home, "config": config, "pipeline": pipeline, "state": state}


@pytest.fixture
def embedded(trained, monkeypatch):
    use_home(monkeypatch, trained["home"])
    return client_for(trained["config"].tracking)


@pytest.mark.ray
def test_gates_refuse_degraded_accept_better_and_rollback(trained, embedded, tmp_path):
    config, client = trained["config"], embedded
    pipeline = trained["pipeline"]

    # Register the pipeline's final stage: version 1, alias candidate, provenance as tags.
    first = register_model(config, client, pipeline.run_id)
    assert (first.version, first.existed) == (1, False)
    assert first.source_run == pipeline.stage_run_ids[-1]
    version = client.get_model_version(NAME, "1")
    tags = version.tags
    assert tags[SOURCE_RUN_TAG] == pipeline.stage_run_ids[-1]
    assert tags["dinet.data_hash"] == client.get_run(pipeline.run_id).data.tags[
        "dinet.data_hash"]
    assert tags["dinet.stages"] == "64" and tags["dinet.mouth_size"] == "64"
    assert TRAINED["name"] in tags["dinet.config"] and tags["dinet.git_commit"]
    assert float(tags["metric.mouth_psnr"]) == pytest.approx(first.metrics["mouth_psnr"],
                                                             rel=1e-4)
    assert holder(client, "candidate") == 1
    # Registering the same run again is idempotent.
    assert register_model(config, client, pipeline.run_id, evaluate=False).existed

    # The artifact: weights + config, no optimizer state, no pickled code.
    local = resolve(f"models:/{NAME}@candidate", client).path
    state = torch.load(local / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    assert state["optimizers"] is None and state["mouth_size"] == 64
    assert (local / "config.yaml").is_file()

    # First promotion: nobody holds production, so the gates have nothing to compare against.
    assert promote(config, client, 1, "production").moved
    assert holder(client, "production") == 1 and holder(client, "previous") is None

    # A deliberately degraded model is refused; production is untouched.
    noisy_run = log_stage_run(client, config, degraded(trained["state"]), tmp_path / "noisy")
    second = register_model(config, client, noisy_run)
    assert second.version == 2 and holder(client, "candidate") == 2
    refused = promote(config, client, 2, "production")
    assert not refused.moved and not gates_passed(refused.gates)
    failed = {g.metric for g in refused.gates if not g.passed}
    assert "mouth_psnr" in failed
    assert holder(client, "production") == 1
    assert client.get_model_version(NAME, "2").tags["dinet.gates.production"] == "refused"
    candidate = refused.evaluation.result.metrics["candidate"]
    production = refused.evaluation.result.metrics["production"]
    assert candidate["mouth_psnr"] < production["mouth_psnr"]
    assert refused.evaluation.png_path.is_file()
    assert_aliases_resolve(client)

    # Forcing needs a reason, and records who and why.
    with pytest.raises(ValueError, match="--reason"):
        promote(config, client, 2, "production", force=True)
    forced = promote(config, client, 2, "production", force=True, reason="hotfix demo")
    assert forced.moved and forced.forced
    assert holder(client, "production") == 2 and holder(client, "previous") == 1
    tags = client.get_model_version(NAME, "2").tags
    assert tags["dinet.promoted.production.reason"] == "hotfix demo"
    assert tags["dinet.promoted.production.forced"] == "true"
    assert tags["dinet.promoted.production.by"]
    assert_aliases_resolve(client)

    # The clean model against the degraded holder: better, so accepted on the gates alone.
    accepted = promote(config, client, 1, "production")
    assert accepted.moved and not accepted.forced and gates_passed(accepted.gates)
    assert holder(client, "production") == 1 and holder(client, "previous") == 2

    # Rollback restores the previous version; a second rollback undoes the first.
    undone = rollback(config, client, "production", reason="check rollback")
    assert (undone.restored, undone.replaced) == (2, 1)
    assert holder(client, "production") == 2 and holder(client, "previous") == 1
    assert rollback(config, client, "production").restored == 1
    assert holder(client, "production") == 1
    assert_aliases_resolve(client)

    rows = {row["version"]: row for row in list_versions(client, NAME)}
    assert "production" in rows[1]["aliases"] and "previous" in rows[2]["aliases"]
    assert rows[2]["gates"]["production"] in {"refused", "forced"}
    assert set(rows[1]["metrics"]) >= {"mouth_psnr", "mouth_ssim", "warp_error"}


@pytest.mark.ray
def test_bad_input_leaves_the_registry_unchanged(trained, embedded, tmp_path):
    config, client = trained["config"], embedded
    if holder(client, "production") is None:  # runs alone: give it something to protect
        register_model(config, client, trained["pipeline"].run_id, evaluate=False)
        promote(config, client, 1, "production")
    before = snapshot(client)
    with pytest.raises(ValueError, match="has no version 99"):
        promote(config, client, 99, "production")
    with pytest.raises(ValueError, match="staging or production"):
        promote(config, client, 1, "prod")
    with pytest.raises(ValueError, match="no alias 'staging'"):
        rollback(config, client, "staging")
    with pytest.raises(ValueError, match="does not exist"):
        register_model(config, client, "f" * 32)
    with pytest.raises(ValueError, match="neither a pipeline nor a training stage"):
        evaluation_run = client.search_runs(
            [client.get_experiment_by_name(config.tracking.experiment).experiment_id],
            "tags.`dinet.kind` = 'evaluation'")[0]
        register_model(config, client, evaluation_run.info.run_id)
    # An evaluation that cannot run (no held-out videos) must not register anything.
    stage = log_stage_run(client, config, trained["state"], tmp_path / "again")
    no_val = tmp_path / "no-val"
    shutil.copytree(config.data.shards, no_val)
    manifest = json.loads((no_val / "manifest.json").read_text())
    for video in manifest["videos"]:
        video["split"] = "train"
    (no_val / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="no held-out"):
        register_model(config, client, stage, shards=no_val)
    assert snapshot(client) == before

    runner = CliRunner()
    config_path = write_config(tmp_path, REGISTRY, Path(config.data.shards))
    for argv in (
        ["registry", "promote", "--version", "99", "--to", "production"],
        ["registry", "rollback", "--alias", "staging"],
        ["registry", "promote", "--version", "1", "--to", "production", "--force"],
        ["evaluate", "--model", f"models:/{NAME}@nonexistent"],
    ):
        result = runner.invoke(app, [*argv, "--config", str(config_path)])
        assert result.exit_code == 2, (argv, result.output)
        assert "error:" in result.output
    assert snapshot(client) == before


@pytest.mark.unit
def test_gate_rules():
    gates = GateConfig(max_mouth_psnr_drop_db=0.5, max_sync_confidence_drop=0.0,
                       max_warp_error_increase=0.1)
    holder_metrics = {"mouth_psnr": 30.0, "mouth_ssim": 0.9, "lse_c": 2.0, "warp_error": 0.01,
                      "mouth_open_corr": 0.8}
    paste = {"mouth_psnr": 20.0, "mouth_ssim": 0.7, "lse_c": 0.5, "warp_error": 0.02,
             "mouth_open_corr": 0.0}
    same = dict(holder_metrics)

    def passed(candidate, holder, config=gates):
        return gates_passed(check_gates(candidate, holder, config, paste))

    assert passed(same, holder_metrics)
    assert passed({**same, "mouth_psnr": 29.6}, holder_metrics)
    assert not passed({**same, "mouth_psnr": 29.4}, holder_metrics)
    assert not passed({**same, "lse_c": 1.99}, holder_metrics)
    assert passed({**same, "warp_error": 0.0109}, holder_metrics)
    assert not passed({**same, "warp_error": 0.0111}, holder_metrics)
    # Identical reconstructions: inf against inf passes, finite against inf does not.
    perfect = {**holder_metrics, "mouth_psnr": float("inf")}
    assert passed(perfect, perfect)
    assert not passed(same, perfect)
    # Without a sync expert the sync gate is skipped, unless it is required.
    no_sync = {k: v for k, v in same.items() if k != "lse_c"}
    results = check_gates(no_sync, no_sync, gates, paste)
    assert gates_passed(results) and any(r.skipped for r in results)
    required = gates.model_copy(update={"require_sync_expert": True})
    assert not passed(no_sync, no_sync, required)
    assert passed(same, None)  # no holder yet: the floor alone


@pytest.mark.unit
def test_the_floor_refuses_what_does_not_beat_the_baselines_even_without_a_holder():
    gates = GateConfig()  # the defaults
    paste = {"mouth_psnr": 19.5, "lse_c": 0.03, "mouth_open_corr": 0.0}
    # What 7636b4f's demo promoted: below the still mouth, and deaf to the audio.
    no_mouth = {"mouth_psnr": 15.3, "lse_c": 0.026, "mouth_open_corr": 0.04}
    results = check_gates(no_mouth, None, gates, paste)
    assert not gates_passed(results)
    assert {r.metric for r in results if not r.passed} == {"floor_mouth_psnr", "floor_audio"}
    # Sharp but still: a better PSNR alone is not enough, the mouth must follow the audio.
    still = {"mouth_psnr": 23.0, "lse_c": 0.02, "mouth_open_corr": 0.05}
    assert [r.metric for r in check_gates(still, None, gates, paste) if not r.passed] == [
        "floor_audio"]
    # One that lip-syncs passes, with or without a sync expert's numbers.
    syncing = {"mouth_psnr": 23.5, "lse_c": 0.3, "mouth_open_corr": 0.7}
    assert gates_passed(check_gates(syncing, None, gates, paste))
    without_expert = {k: v for k, v in syncing.items() if k != "lse_c"}
    assert gates_passed(check_gates(without_expert, None, gates, paste))
    # Nothing measured whether the mouth follows the audio, or no baseline: refused.
    bare = {"mouth_psnr": 30.0}
    assert not gates_passed(check_gates(bare, None, gates, {"mouth_psnr": 19.5}))
    assert not gates_passed(check_gates(syncing, None, gates, None))


@pytest.mark.cluster
def test_registry_against_a_real_mlflow_server(prepared_dir, home, tmp_path, monkeypatch):
    with mlflow_server(tmp_path / "server") as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        config_path = write_config(tmp_path, REGISTRY, prepared_dir)
        config = load_config(config_path)
        client = client_for(config.tracking)
        assert client.tracking_uri == url

        # Two models without Ray: a fresh tiny generator and a degraded copy of it.
        from dinet_platform.models import build_discriminators, build_generator

        torch.manual_seed(0)
        discriminators = build_discriminators(config.model, clip_len=config.data.clip_len)
        clean = {"generator": build_generator(config.model).state_dict(),
                 "discriminators": {k: m.state_dict()
                                    for k, m in discriminators.modules().items()},
                 "optimizers": None, "epoch": 0, "mouth_size": 64,
                 "config": config.model_dump(mode="json"), "metrics": {}}
        runs = [log_stage_run(client, config, clean, tmp_path / "clean"),
                log_stage_run(client, config, degraded(clean), tmp_path / "noisy")]

        runner = CliRunner()
        common = ["--config", str(config_path)]
        for run_id in runs:
            result = runner.invoke(app, ["registry", "register", "--run", run_id, *common])
            assert result.exit_code == 0, result.output
        result = runner.invoke(app, ["registry", "promote", "--version", "1", "--to",
                                     "production", *common])
        assert result.exit_code == 0, result.output
        result = runner.invoke(app, ["registry", "promote", "--version", "2", "--to",
                                     "production", *common])
        assert result.exit_code == 1 and "refused" in result.output, result.output
        assert holder(client, "production") == 1
        result = runner.invoke(app, ["registry", "rollback", "--alias", "production", *common])
        assert result.exit_code == 2 and "nothing to roll back to" in result.output
        result = runner.invoke(app, ["registry", "promote", "--version", "2", "--to",
                                     "production", "--force", "--reason", "server test",
                                     *common])
        assert result.exit_code == 0, result.output
        assert holder(client, "production") == 2 and holder(client, "previous") == 1
        result = runner.invoke(app, ["registry", "rollback", "--alias", "production", *common])
        assert result.exit_code == 0, result.output
        assert holder(client, "production") == 1
        result = runner.invoke(app, ["registry", "list", *common])
        assert result.exit_code == 0 and "production" in result.output, result.output
        assert_aliases_resolve(client)

        # models:/ URIs resolve through the server's registry and artifact proxy.
        local = resolve(f"models:/{NAME}@production", client).path
        state = load_checkpoint(local)
        for key, value in clean["generator"].items():
            torch.testing.assert_close(state["generator"][key], value)
        evaluations = client.search_runs(
            [client.get_experiment_by_name(config.tracking.experiment).experiment_id],
            "tags.`dinet.kind` = 'evaluation'")
        assert evaluations and all(r.info.status == "FINISHED" for r in evaluations)
        assert {a.path for a in client.list_artifacts(evaluations[0].info.run_id)} >= {
            "evaluation.json", "comparison.png"}


@pytest.fixture(scope="module")
def held_out_shards(tmp_path_factory) -> Path:
    """Four 4 s clips of identities no model here trained on, speaking in held-out voices; two
    are the held-out split."""
    from dinet_platform.config.schema import DataConfig
    from dinet_platform.data.prepare import prepare_dataset
    from dinet_platform.synth.videos import synthesize_dataset

    root = tmp_path_factory.mktemp("held-out")
    synthesize_dataset(root / "videos", 4, 4.0, seed=7, speech="tts", voice_pool="held-out")
    prepare_dataset(root / "videos", root / "shards", config=DataConfig(val_fraction=0.5),
                    mouth_size=64, use_ray=False)
    return root / "shards"


@pytest.mark.ray
def test_the_floor_refuses_a_barely_trained_model_and_accepts_the_base_model(
    trained, held_out_shards, home, tmp_path
):
    """With the default gates and no holder: the barely trained model is refused on the
    floor, the committed base model (which lip-syncs) is promoted without forcing."""
    from dinet_platform.demo import BASE_MODEL

    floor = {**TRAINED, "name": "floor", "evaluation": {"max_frames": 100},  # default gates
             "tracking": {"registered_model": "dinet-floor"}}
    config = load_config(write_config(tmp_path, floor, held_out_shards))
    client = client_for(config.tracking)

    barely = log_stage_run(client, config, trained["state"], tmp_path / "barely")
    assert register_model(config, client, barely).version == 1
    refused = promote(config, client, 1, "production")
    assert not refused.moved and refused.holder is None
    failed = {g.metric for g in refused.gates if not g.passed}
    assert failed & {"floor_mouth_psnr", "floor_audio"}, refused.gates

    base = log_stage_run(client, config, load_checkpoint(BASE_MODEL), tmp_path / "base")
    assert register_model(config, client, base).version == 2
    accepted = promote(config, client, 2, "production")
    assert accepted.moved and not accepted.forced, accepted.gates
    metrics = accepted.evaluation.result.metrics
    assert metrics["candidate"]["mouth_psnr"] > metrics["paste_reference"]["mouth_psnr"] + 1.0
    assert metrics["candidate"]["mouth_open_corr"] >= 0.3


# --------------------------------------------------------------------------- races, identity
# Registry bookkeeping on the embedded SQLite store with stand-in versions (no checkpoints) and
# a stand-in evaluation: what is under test is who moves which alias when, not the gates.
