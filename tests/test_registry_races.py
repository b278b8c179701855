"""Registry races: concurrent promotions (compare-and-set under a lock), rollback order, and
who acted. In process, on a real SQLite store."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from dinet_platform.config import load_config
from dinet_platform.evaluation.evaluate import PASTE_REFERENCE
from dinet_platform.promotion import workflow
from dinet_platform.promotion.workflow import promote
from dinet_platform.registry.versions import (
    AliasMovedError,
    alias_holder,
    move_alias,
    register_version,
    rollback,
    who,
)
from dinet_platform.tracking import client_for, experiment_id
from mlflow.exceptions import MlflowException

from tests.support import TRAINED, merged, write_config

REGISTRY = merged(TRAINED, {
    # These tests are about the holder gates, promotion and rollback on a barely trained
    # model; the floor (beat the baselines) has tests of its own and is opened here.
    "evaluation": {"max_frames": 24, "gates": {"min_mouth_psnr_gain_db": -100.0,
                                               "min_mouth_open_corr": -1.0,
                                               "min_sync_confidence_gain": -100.0}},
})
NAME = "dinet"


SCORES = {"mouth_psnr": 25.0, "mouth_ssim": 0.9, "lse_c": 0.5, "warp_error": 0.01,
          "mouth_open_corr": 0.8}
BASELINE = {"mouth_psnr": 18.0, "mouth_ssim": 0.8, "lse_c": 0.3, "warp_error": 0.02,
            "mouth_open_corr": 0.0}


def holder(client, alias: str) -> int | None:
    return alias_holder(client, NAME, alias)


def stand_in_versions(client, count: int) -> list[int]:
    """``count`` versions of NAME registered from empty runs."""
    experiment = experiment_id(client, "registry-races")
    numbers = []
    for _ in range(count):
        run_id = client.create_run(experiment).info.run_id
        numbers.append(register_version(client, NAME, f"runs:/{run_id}/model", run_id, {}))
    return numbers


def passing_evaluation(alias: str) -> SimpleNamespace:
    """What promote reads from run_evaluation: the candidate as good as the holder."""
    metrics = {"candidate": SCORES, alias: SCORES, PASTE_REFERENCE: BASELINE}
    return SimpleNamespace(result=SimpleNamespace(metrics=metrics), run_id="stand-in")


@pytest.mark.unit
def test_concurrent_promotions_one_moves_the_alias_the_other_is_refused(home, tmp_path,
                                                                         monkeypatch):
    config = load_config(write_config(tmp_path, REGISTRY))
    client = client_for(config.tracking)
    v1, v2, v3 = stand_in_versions(client, 3)
    move_alias(client, NAME, "production", v1)
    both_gated = threading.Barrier(2, timeout=60)

    def evaluate(config, client, references, **kwargs):
        assert references[1] == ("production", f"models:/{NAME}/{v1}")
        both_gated.wait()  # both promotions have gated against v1 before either moves
        return passing_evaluation("production")

    monkeypatch.setattr(workflow, "run_evaluation", evaluate)
    monkeypatch.setenv("DINET_USER", "alice")
    outcomes, refusals = {}, {}

    def attempt(version: int) -> None:
        try:  # each its own client, as two processes would have
            outcomes[version] = promote(config, client_for(config.tracking), version,
                                        "production")
        except AliasMovedError as exc:
            refusals[version] = exc

    threads = [threading.Thread(target=attempt, args=(v,)) for v in (v2, v3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(outcomes) == 1 and len(refusals) == 1, (outcomes, refusals)
    [(winner, outcome)], [(loser, refusal)] = outcomes.items(), refusals.items()
    assert outcome.moved and outcome.holder == v1
    assert holder(client, "production") == winner and holder(client, "previous") == v1
    message = str(refusal)  # names the version refused, the one it was gated against, the new
    assert f"v{loser}" in message and f"v{v1}" in message and f"now names v{winner}" in message
    tags = client.get_model_version(NAME, str(winner)).tags
    assert tags["dinet.promoted.production.by"] == "alice"
    assert tags["dinet.promoted.production.from_version"] == str(v1)
    assert not any(k.startswith("dinet.promoted") for k in
                   client.get_model_version(NAME, str(loser)).tags)

    # A writer that does not take the lock (the MLflow UI, another home) moving the alias
    # while a promotion evaluates: the re-read before the move refuses it too.
    def evaluate_while_moved(config, client, references, **kwargs):
        client.set_registered_model_alias(NAME, "production", str(v1))
        return passing_evaluation("production")

    monkeypatch.setattr(workflow, "run_evaluation", evaluate_while_moved)
    with pytest.raises(AliasMovedError, match=f"checked against v{winner}: it now names v{v1}"):
        promote(config, client, loser, "production")
    assert holder(client, "production") == v1


@pytest.mark.unit
def test_rollback_moves_previous_first_an_interruption_leaves_production_serving(
        home, tmp_path, monkeypatch):
    config = load_config(write_config(tmp_path, REGISTRY))
    client = client_for(config.tracking)
    v1, v2 = stand_in_versions(client, 2)
    move_alias(client, NAME, "production", v1)
    move_alias(client, NAME, "production", v2)
    assert holder(client, "production") == v2 and holder(client, "previous") == v1

    # The store fails between the two moves.
    flaky = client_for(config.tracking)
    moves = []
    real_move = flaky.set_registered_model_alias

    def fail_second_move(name, alias, version):
        moves.append((alias, int(version)))
        if len(moves) == 2:
            raise MlflowException("tracking server went away")
        return real_move(name, alias, version)

    monkeypatch.setattr(flaky, "set_registered_model_alias", fail_second_move)
    with pytest.raises(MlflowException, match="went away"):
        rollback(config, flaky, "production")
    assert moves == [("previous", v2), ("production", v1)]
    # production still serves v2; the rollback target was overwritten with it, and a second
    # rollback says so instead of "rolling back" v2 to v2.
    assert holder(client, "production") == v2 and holder(client, "previous") == v2
    with pytest.raises(ValueError, match="interrupted rollback"):
        rollback(config, client, "production")

    client.set_registered_model_alias(NAME, "previous", str(v1))
    monkeypatch.setenv("DINET_USER", "bob")
    outcome = rollback(config, client, "production", reason="bad release")
    assert (outcome.restored, outcome.replaced) == (v1, v2)
    assert holder(client, "production") == v1 and holder(client, "previous") == v2
    tags = client.get_model_version(NAME, str(v1)).tags
    assert tags["dinet.rollback.production.by"] == "bob"
    assert tags["dinet.rollback.production.from_version"] == str(v2)


@pytest.mark.unit
def test_who_prefers_an_authenticated_identity_to_the_os_user(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # ~/.mlflow/credentials: none yet
    for key in ("DINET_USER", "MLFLOW_TRACKING_USERNAME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("USER", "mallory")
    assert who() == "mallory"
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "credentials").write_text(
        "[mlflow]\nmlflow_tracking_username = carol\nmlflow_tracking_password = x\n")
    assert who() == "carol"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "dave")
    assert who() == "dave"
    monkeypatch.setenv("DINET_USER", "erin")  # set by an authenticating front end
    assert who() == "erin"
