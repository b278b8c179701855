"""What the tests share that is not a fixture: the tiny model and its configs, an isolated
``DINET_HOME``, a tiny registered model version, and private copies of a trained pipeline.

Fixtures live in tests/conftest.py. Test modules import shared helpers from here (and the
cluster helpers from tests/cluster.py), never from each other. Nothing here imports pytest:
the benches use the registry helpers too (bench/serve.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import torch
import yaml

TINY_WIDTH = 0.125
"""Width multiplier of every network in the tests: a tiny model, quick on 2 CPU cores."""
TINY_MODEL = {"width": TINY_WIDTH, "discriminator_width": TINY_WIDTH, "syncnet_width": TINY_WIDTH}
MOUTH = 64
"""The mouth size tiny models are made for (the smallest stage: a 104x80 crop)."""
TINY_STAGE = {"mouth_size": MOUTH, "epochs": 1, "batch_size": 2, "lr": 1e-3}
TINY_TRAINING = {"num_workers": 2, "cpus_per_worker": 0.5, "steps_per_epoch": 2,
                 "max_failures": 0}
"""Two Ray Train workers on the session's 2-CPU local Ray, two optimizer steps an epoch."""
ATTENTION = {"variant": "dinet_attention",
             "attention": {"mouth_focused": True, "reduction": 4, "positions": ["appearance"]}}


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes``: nested dicts merge, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def tiny_config(name: str, **sections: Any) -> dict[str, Any]:
    """A config (as YAML data) for tiny models: one stage at mouth 64, 3-frame clips; each
    keyword is a section merged over that (``model={"variant": ...}``, ``training=...``)."""
    base = {"name": name, "model": TINY_MODEL, "stages": [TINY_STAGE], "data": {"clip_len": 3}}
    return merged(base, sections)


PIPELINE = tiny_config(
    "tiny",
    model=ATTENTION,
    stages=[
        {"mouth_size": 64, "epochs": 2, "batch_size": 2, "lr": 1e-3},
        # lr ~ 0: stage 96 must end where stage 64 ended if it started from its weights.
        {"mouth_size": 96, "epochs": 1, "batch_size": 2, "lr": 1e-12},
    ],
    training={**TINY_TRAINING, "max_failures": 1},
)
"""Two stages on Ray: what the training tests (hand-over, resumption) and the cluster tests
train."""

TRAINED = tiny_config(
    "tiny-trained",
    model=ATTENTION,
    stages=[{"mouth_size": 64, "epochs": 2, "batch_size": 2, "lr": 1e-3}],
    training=TINY_TRAINING,
)
"""The session's one trained pipeline (conftest ``trained_pipeline``): one stage at mouth 64,
two epochs of two steps, attention maps logged. Barely trained: it beats no baseline."""


def write_config(folder: Path, data: dict[str, Any], shards: Path | None = None) -> Path:
    """``data`` (with ``data.shards`` set when given) as ``folder/<name>.yaml``."""
    data = copy.deepcopy(data)
    if shards is not None:
        data.setdefault("data", {})["shards"] = str(shards)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def use_home(patch, home: Path) -> Path:
    """Point ``$DINET_HOME`` at ``home`` and drop ``$MLFLOW_TRACKING_URI`` through ``patch`` (a
    ``pytest.MonkeyPatch``): the embedded SQLite store and all local state go under ``home``."""
    patch.setenv("DINET_HOME", str(home))
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


def randomize_batchnorm(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial running stats and affine parameters, so folding has something to fold."""
    generator = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
    return module.eval()


# --------------------------------------------------------------------------- registered models


def tiny_state(config, *, seed: int = 0, mouth: int = MOUTH, settle=None) -> dict[str, Any]:
    """A checkpoint state of a freshly initialised generator for ``config`` (a DINetConfig),
    its BatchNorm statistics settled on ``settle`` (calibration batches) when given."""
    from dinet_platform.models import build_generator
    from dinet_platform.optimize.stand_in import settle_batchnorm

    torch.manual_seed(seed)  # before the build: the weights must not depend on earlier tests
    generator = build_generator(config.model)
    if settle is not None:
        settle_batchnorm(generator, settle)
    return {"generator": generator.state_dict(), "discriminators": None, "optimizers": None,
            "epoch": 0, "mouth_size": mouth, "config": config.model_dump(mode="json"),
            "metrics": {}}


def log_stage_run(client, config, state: dict[str, Any], folder: Path) -> str:
    """A finished stage run holding ``state`` as its checkpoint (as a pipeline stage leaves
    it); its run id."""
    from dinet_platform.models.checkpoints import save_checkpoint
    from dinet_platform.training.stage import start_stage_run

    run_id = start_stage_run(client, config, state["mouth_size"])
    save_checkpoint(folder, {k: v for k, v in state.items() if k != "format"})
    client.log_artifacts(run_id, str(folder), "checkpoint")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def register_state(client, config, state: dict[str, Any], folder: Path, *,
                   evaluate: bool = False) -> int:
    """``state`` logged as a finished stage run and registered as a new version of
    ``config.tracking.registered_model`` (alias ``candidate``); its version number."""
    from dinet_platform.promotion.workflow import register_model

    run_id = log_stage_run(client, config, state, folder)
    return register_model(config, client, run_id, evaluate=evaluate).version


# --------------------------------------------------------------------------- trained stores


@dataclass(frozen=True)
class TrainedPipeline:
    """A trained pipeline: the ``DINET_HOME`` whose store holds it, its config (YAML data) and
    its runs."""

    home: Path
    config: dict[str, Any]
    run_id: str
    stage_run_ids: tuple[str, ...]


def copy_pipeline(trained: TrainedPipeline, client) -> TrainedPipeline:
    """``trained``'s pipeline run and stage runs recorded again, as new runs (tags, params,
    metric histories, artifacts, status and times), in the embedded store of ``client``
    under the current ``$DINET_HOME``: a module changes its own copy (registry versions and
    aliases, artifacts logged to the runs, new runs), never the session's store.

    New run ids, not a copy of the store's files: MLflow remembers, per run id and process-
    wide, where a run's artifacts live, so a copied store would log into the original."""
    from dinet_platform.paths import dinet_home
    from dinet_platform.tracking import experiment_id
    from mlflow import MlflowClient
    from mlflow.entities import Param

    source = MlflowClient(tracking_uri=f"sqlite:///{trained.home / 'mlflow.db'}")
    ids: dict[str, str] = {}

    def moved(value: str) -> str:  # run ids in tags and params name the copies
        for old, new in ids.items():
            value = value.replace(old, new)
        return value

    for old_id in (trained.run_id, *trained.stage_run_ids):  # parents before children
        run = source.get_run(old_id)
        experiment = experiment_id(client, source.get_experiment(run.info.experiment_id).name)
        tags = {key: moved(value) for key, value in run.data.tags.items()}
        new_id = client.create_run(experiment, start_time=run.info.start_time, tags=tags,
                                   run_name=run.info.run_name).info.run_id
        ids[old_id] = new_id
        params = [Param(key, moved(value)) for key, value in run.data.params.items()]
        metrics = [m for key in run.data.metrics for m in source.get_metric_history(old_id, key)]
        for start in range(0, len(params), 100):
            client.log_batch(new_id, params=params[start:start + 100])
        for start in range(0, len(metrics), 1000):
            client.log_batch(new_id, metrics=metrics[start:start + 1000])
        artifacts = Path(url2pathname(urlparse(run.info.artifact_uri).path))
        if artifacts.is_dir():
            client.log_artifacts(new_id, str(artifacts))
        client.set_terminated(new_id, run.info.status, end_time=run.info.end_time)
    return TrainedPipeline(home=dinet_home(), config=trained.config,
                           run_id=ids[trained.run_id],
                           stage_run_ids=tuple(ids[run] for run in trained.stage_run_ids))


# ----------------------------------------------------------------------------- the Serve app

SERVE = tiny_config("tiny-serve")
SERVE_TOKEN = "test-token-0123456789abcdef"


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {SERVE_TOKEN}"}


def check(response, status: int, field: str, words: str = "") -> None:
    """An API error: its status, the field it names and words of its message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    assert words in error["message"], error


def upload(http, video: Path, landmarks: Path | None):
    files = {"video": (video.name, video.read_bytes(), "video/mp4")}
    if landmarks is not None:
        files["landmarks"] = (landmarks.name, landmarks.read_bytes(), "text/csv")
    return http.post("/v1/avatars", files=files)


def features(n: int, seed: int):
    """``n`` frames of random 29-dim audio features (what the tiny served model takes)."""
    import numpy as np

    return np.random.default_rng(seed).normal(size=(n, 29)).astype(np.float32)


def frames_npy(http, avatar_id: str, feats, start: int = 0):
    return http.post(f"/v1/avatars/{avatar_id}/frames",
                     json={"features": feats.tolist(), "start": start, "format": "npy"})


def schemathesis_run(url: str, folder: Path, examples: int, token: str | None, *,
                     seed: int = 0, ids: dict[str, str] | None = None,
                     methods: str = "all"):
    """``st run`` (schemathesis) against the app at ``url``: ``examples`` per operation, with
    the bearer ``token`` (or none), ``ids`` filling path parameters (an avatar and a job that
    exist, so the fuzzer reaches the parsers behind them; ``methods="no-delete"`` keeps them,
    ``"delete"`` runs only the DELETEs, after). Every request and answer is kept in
    ``folder/requests.har``. Fails on a 5xx or an answer the OpenAPI does not describe."""
    import os
    import subprocess
    import sys

    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "schemathesis.toml"
    config.write_text("[parameters]\n" + "".join(
        f'"path.{name}" = "{value}"\n' for name, value in (ids or {}).items()))
    command = [str(Path(sys.executable).with_name("st")), "--config-file", str(config), "run",
               f"{url}/openapi.json", "--url", url,
               "--checks", "not_a_server_error,response_schema_conformance,"
               "content_type_conformance,status_code_conformance",
               "--max-examples", str(examples), "--seed", str(seed), "--workers", "2",
               "--request-timeout", "60", "--suppress-health-check", "all",
               "--phases", "examples,coverage,fuzzing", "--no-color",
               "--report", "har", "--report-har-path", str(folder / "requests.har")]
    if token:
        command += ["--header", f"Authorization: Bearer {token}"]
    if methods != "all":
        command += ["--exclude-method" if methods == "no-delete" else "--include-method",
                    "DELETE"]
    return subprocess.run(command, capture_output=True, text=True, timeout=3600, cwd=folder,
                          env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"})


def replica_pid(deployment: str) -> int:
    """The process id of a live replica of ``deployment`` on the Ray this process uses."""
    import ray
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address,
                         filters=[("state", "=", "ALIVE")], limit=1000, detail=True)
    return next(actor.pid for actor in actors if deployment in actor.class_name)


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Tones switched on and off under noise: features that change from frame to frame."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    voiced = np.sin(2 * np.pi * 3.3 * t) > 0
    tone = 0.3 * np.sin(2 * np.pi * (180 + 40 * np.sin(2 * np.pi * 0.7 * t)) * t)
    return (tone * voiced + 0.02 * rng.normal(size=len(t))).astype(np.float32)
