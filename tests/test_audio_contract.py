"""The audio-feature contract (issue 19): checkpoints record the features they were trained on,
a public DINet generator is recognised by its layout as DeepSpeech-trained, and every loader
refuses features that do not match with what the model needs and how to provide it:
``train --init-from`` (unless ``--retrain-audio-path``), evaluation, and the HTTP API of a
served DeepSpeech model (in process: FastAPI's test client over the real app and the real
model server, no Ray); ``dinet dub`` is covered in tests/test_dub.py, the real Serve app in
tests/test_serve.py."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from dinet_platform.audio_contract import (
    DEEPSPEECH_NORMALIZATION,
    LOGMEL_NORMALIZATION,
    RECORD_KEY,
    AudioContractError,
    AudioFeatureSpec,
    checkpoint_features,
)
from dinet_platform.cli import app as cli_app
from dinet_platform.config import DINetConfig
from dinet_platform.config.serving import ServingConfig
from dinet_platform.evaluation.data import VideoSet
from dinet_platform.evaluation.evaluate import evaluate, load_model
from dinet_platform.models import DINet, DINetWithAttention
from dinet_platform.models.checkpoints import load_checkpoint, save_checkpoint
from dinet_platform.models.public_dinet import is_public_dinet
from dinet_platform.optimize.stand_in import synthetic_batches
from dinet_platform.registry.loading import load_engine
from dinet_platform.runtime.avatar import Avatar
from dinet_platform.serving import api
from dinet_platform.serving.dub_runner import DubRunner
from dinet_platform.training.stage import check_stage_inputs
from typer.testing import CliRunner

from tests.support import MOUTH, TINY_WIDTH, tiny_config, tiny_state, write_config

pytestmark = pytest.mark.unit


def tiny(audio: str = "logmel", width: float = TINY_WIDTH, **data: Any) -> DINetConfig:
    channels = 29 if audio == "deepspeech" else data.get("n_mels", 29)
    return DINetConfig.model_validate(
        tiny_config(
            f"tiny-{audio}",
            model={"width": width, "audio_channels": channels},
            data={"audio_features": audio, **data},
        )
    )


def full_width(audio: str = "logmel", **data: Any) -> DINetConfig:
    return tiny(audio, width=1.0, **data)


def platform_checkpoint(folder: Path, config: DINetConfig, seed: int = 0) -> Path:
    settle = synthetic_batches(MOUTH, 2, 2, audio_channels=config.model.audio_channels)
    return save_checkpoint(folder, tiny_state(config, seed=seed, settle=settle))


@pytest.fixture(scope="module")
def public_file(tmp_path_factory) -> Path:
    """A public DINet generator as MRzzm/DINet saves it: full width, DataParallel keys under
    ``state_dict.net_g``, named like its training output."""
    torch.manual_seed(0)
    state = DINet().state_dict()
    path = tmp_path_factory.mktemp("public") / "netG_model_epoch_20.pth"
    torch.save(
        {"epoch": 20, "state_dict": {"net_g": {f"module.{k}": v for k, v in state.items()}}}, path
    )
    return path


# --------------------------------------------------------------------------- records


def test_checkpoints_record_their_features_and_old_ones_are_read_from_their_config(tmp_path):
    config = tiny("logmel", n_mels=29)
    state = load_checkpoint(platform_checkpoint(tmp_path / "new", config))
    assert state[RECORD_KEY] == {
        "kind": "logmel",
        "dim": 29,
        "fps": 25,
        "window": 5,
        "sample_rate": 16000,
        "normalization": LOGMEL_NORMALIZATION,
    }
    assert checkpoint_features(state, "new") == AudioFeatureSpec.from_data(config.data)
    old = {k: v for k, v in state.items() if k != RECORD_KEY}  # written before the record
    assert checkpoint_features(old, "old") == AudioFeatureSpec.from_data(config.data)
    # a record that this code no longer computes from the config: the normalisation changed
    drifted = {**state, RECORD_KEY: {**state[RECORD_KEY], "normalization": "log(mel) / 10"}}
    with pytest.raises(AudioContractError, match="feature computation changed"):
        checkpoint_features(drifted, "drifted")


def test_public_dinet_is_recognised_by_layout_not_name(public_file, tmp_path):
    from dinet_platform.models import read_state_dict

    assert is_public_dinet(read_state_dict(public_file))
    assert not is_public_dinet(DINet(width=TINY_WIDTH).state_dict())  # ours, at another width
    assert not is_public_dinet(DINet(audio_channel=40).state_dict())  # 40 log-mel bands
    attention = DINetWithAttention(
        attention=tiny().model.attention.model_copy(update={"spatial": True})
    )
    assert not is_public_dinet(attention.state_dict())
    renamed = tmp_path / "netG_model_epoch_1.pth"  # the name alone proves nothing
    torch.save(DINet(width=TINY_WIDTH).state_dict(), renamed)
    assert not is_public_dinet(read_state_dict(renamed))


# --------------------------------------------------------------------------- train --init-from


def test_init_from_public_dinet_with_logmel_is_refused_unless_audio_is_retrained(
    public_file, prepared_dir
):
    config = full_width("logmel", n_mels=40)
    with pytest.raises(AudioContractError) as refused:
        check_stage_inputs(config, MOUTH, None, init_from=str(public_file), shards=prepared_dir)
    message = str(refused.value)
    for words in (
        "public DINet generator",
        "trained on DeepSpeech features (29 per frame",
        "this config computes log-mel features (40 bands",
        "kind deepspeech vs logmel",
        "data.audio_features: deepspeech",
        "_deepspeech.npy",
        "--retrain-audio-path",
        "training.retrain_audio_path",
    ):
        assert words in message, message

    config.training.retrain_audio_path = True
    inputs = check_stage_inputs(
        config, MOUTH, None, init_from=str(public_file), shards=prepared_dir
    )
    loaded = inputs.init_state["generator"]
    public = {
        k.removeprefix("module."): v
        for k, v in torch.load(public_file, weights_only=True)["state_dict"]["net_g"].items()
    }
    assert loaded["audio_encoder.0.conv.weight"].shape == (128, 40, 5)  # fresh, 40 bands
    assert not torch.equal(
        loaded["audio_encoder.1.conv1.weight"], public["audio_encoder.1.conv1.weight"]
    )
    assert all(
        torch.equal(loaded[k], v) for k, v in public.items() if not k.startswith("audio_encoder.")
    )


def test_init_from_public_dinet_with_deepspeech_data_loads_as_is(public_file, prepared_dir):
    config = full_width("deepspeech")
    inputs = check_stage_inputs(
        config, MOUTH, None, init_from=str(public_file), shards=prepared_dir
    )
    public = torch.load(public_file, weights_only=True)["state_dict"]["net_g"]
    assert torch.equal(
        inputs.init_state["generator"]["audio_encoder.0.conv.weight"],
        public["module.audio_encoder.0.conv.weight"],
    )


def test_init_from_a_platform_checkpoint_on_other_features(tmp_path, prepared_dir):
    logmel = platform_checkpoint(tmp_path / "logmel", tiny("logmel", n_mels=29))
    deepspeech = tiny("deepspeech")
    with pytest.raises(AudioContractError, match="kind logmel vs deepspeech"):
        check_stage_inputs(deepspeech, MOUTH, None, init_from=str(logmel), shards=prepared_dir)
    other_window = tiny("logmel", n_mels=29, audio_window=3)
    with pytest.raises(AudioContractError, match="window 5 vs 3"):
        check_stage_inputs(other_window, MOUTH, None, init_from=str(logmel), shards=prepared_dir)
    deepspeech.training.retrain_audio_path = True
    inputs = check_stage_inputs(deepspeech, MOUTH, None, init_from=str(logmel), shards=prepared_dir)
    assert set(inputs.init_state) == {"generator"}  # its discriminators were None


@pytest.mark.slow
def test_train_command_refuses_the_mismatch_with_exit_code_2(
    public_file, prepared_dir, home, tmp_path
):
    path = write_config(tmp_path, tiny("logmel").model_dump(mode="json"), prepared_dir)
    result = CliRunner().invoke(
        cli_app, ["train", "--config", str(path), "--init-from", str(public_file)]
    )
    assert result.exit_code == 2, result.output
    assert "DeepSpeech" in result.output and "--retrain-audio-path" in result.output


# --------------------------------------------------------------------------- evaluation


def test_evaluation_refuses_a_model_on_data_with_other_features(
    tmp_path, prepared_dir, public_file
):
    videos = VideoSet(prepared_dir, "val")  # log-mel, 29 bands: same size as DeepSpeech
    deepspeech = load_model(
        "ds", platform_checkpoint(tmp_path / "ds", tiny("deepspeech")), source="ds-checkpoint"
    )
    assert deepspeech.features.kind == "deepspeech"
    with pytest.raises(AudioContractError) as refused:
        evaluate([deepspeech], videos, tiny().evaluation, baselines=False)
    message = str(refused.value)
    assert "model 'ds-checkpoint' was trained on DeepSpeech features" in message
    assert "the evaluation data holds log-mel features (29 bands" in message
    assert "evaluate on shards prepared with data.audio_features: deepspeech" in message

    public = load_model("public", public_file, source=str(public_file), fallback=tiny())
    assert public.features == AudioFeatureSpec.public_dinet()
    assert public.config.model.width == 1.0 and public.mouth_size == MOUTH
    with pytest.raises(AudioContractError, match="trained on DeepSpeech"):
        evaluate([public], videos, tiny().evaluation, baselines=False)

    other_rate = load_model(
        "sr", platform_checkpoint(tmp_path / "sr", tiny("logmel", sample_rate=24000)), source="sr"
    )
    with pytest.raises(AudioContractError, match="sample_rate 24000 vs 16000"):
        evaluate([other_rate], videos, tiny().evaluation, baselines=False)


# --------------------------------------------------------------------------- HTTP API


class _Reply:
    by_reference = False

    def __init__(self, value: Any):
        self.value = value

    def __await__(self):
        async def value() -> Any:
            return self.value

        return value().__await__()


class _Method:
    def __init__(self, function):
        self.function = function

    def remote(self, *args: Any) -> _Reply:
        return _Reply(self.function(*args))


class InProcessModel:
    """The model deployment's methods over a real :class:`ModelServer`, called in process."""

    def __init__(self, server, jobs):
        self.server, self.jobs = server, jobs
        self.info = _Method(lambda: {**server.info(), "error": None})
        self.runner = DubRunner(jobs, lambda job_id, checkpoint: server.dub(jobs, job_id,
                                                                            checkpoint), 1, 4)
        self.dub = _Method(lambda job_id: None if self.runner.submit(job_id) else "full")
        self.frames = _Method(self._frames)

    def _frames(self, avatar_id: str, start: int, audio: np.ndarray, paste: bool = False):
        from dinet_platform.serving.model import FrameJob, GeneratedFrames

        (out,), model = self.server.generate([FrameJob(avatar_id, start, audio, paste)])
        return GeneratedFrames(out, model.version, 1)


@pytest.fixture(scope="module")
def deepspeech_api(tmp_path_factory, synth_dir):
    """The real FastAPI app and model server holding a tiny DeepSpeech-trained model."""
    from dinet_platform.serving.app import AppState, create_app
    from dinet_platform.serving.avatars import AvatarStore
    from dinet_platform.serving.dub_jobs import JobStore
    from dinet_platform.serving.model import ModelServer, ServedModel
    from dinet_platform.serving.settings import ServeAppConfig
    from fastapi.testclient import TestClient

    root = tmp_path_factory.mktemp("ds-api")
    engine, info = load_engine(
        str(platform_checkpoint(root / "ckpt", tiny("deepspeech"))), mode="fp32"
    )
    settings = ServeAppConfig(serving=ServingConfig(max_batch_size=4))
    store, jobs = AvatarStore(root / "avatars"), JobStore(root / "jobs")
    server = ModelServer(settings.serving, client=None, store=store)
    server.model = ServedModel(engine, info, "production")
    video = sorted(synth_dir.glob("*.mp4"))[0]
    avatar_id = store.save(
        Avatar.from_video(
            video, mouth_size=MOUTH, data=info.config.data, landmarks=video.with_suffix(".csv")
        )
    )
    application = create_app()
    application.state.dinet = AppState(
        settings=settings,
        token="t" * 24,
        store=store,
        model=InProcessModel(server, jobs),
        jobs=jobs,
    )
    with TestClient(application, headers={"Authorization": "Bearer " + "t" * 24}) as http:
        yield {"http": http, "avatar": avatar_id, "root": root}


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array.astype(np.float32), allow_pickle=False)
    return buffer.getvalue()


def wait_for(http, job: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = http.get(job["status_url"]).json()
        if status["state"] in ("done", "failed"):
            return status
        time.sleep(0.2)
    raise TimeoutError(job)


def test_served_deepspeech_model_says_what_it_needs_and_takes_it(deepspeech_api):
    http, avatar = deepspeech_api["http"], deepspeech_api["avatar"]
    audio = http.get("/v1/model").json()["model"]["audio"]
    assert audio["features"] == "deepspeech" and audio["dim"] == 29
    assert audio["normalization"] == DEEPSPEECH_NORMALIZATION

    # /frames: audio cannot become DeepSpeech features here; features of 29 values can
    speech = 0.3 * np.sin(2 * np.pi * 220 * np.arange(16000) / 16000)
    wav = http.post(
        f"/v1/avatars/{avatar}/frames",
        content=api.pcm_wav(speech, 16000),
        headers={"Content-Type": "audio/wav"},
    )
    assert wav.status_code == 422, wav.text
    error = wav.json()["error"]
    assert error["field"] == "audio_wav"
    assert "trained on DeepSpeech features (29 per frame" in error["message"]
    assert "send them as 'features'" in error["message"]
    features = np.random.default_rng(0).normal(size=(6, 29)).astype(np.float32)
    frames = http.post(
        f"/v1/avatars/{avatar}/frames", json={"features": features.tolist(), "format": "npy"}
    )
    assert frames.status_code == 200, frames.text
    assert np.load(io.BytesIO(frames.content)).shape == (6, 104, 80, 3)
    wrong = http.post(f"/v1/avatars/{avatar}/frames", json={"features": [[0.0] * 40] * 3})
    assert wrong.status_code == 422 and "(frames, 29)" in wrong.json()["error"]["message"]

    # /v1/dub: DeepSpeech features are a required part, checked before any decoding
    files = {"audio": ("speech.wav", api.pcm_wav(speech, 16000), "audio/wav")}
    missing = http.post("/v1/dub", data={"avatar_id": avatar}, files=files)
    assert missing.status_code == 422, missing.text
    assert missing.json()["error"]["field"] == "audio_features"
    assert "upload them as an 'audio_features' file part" in missing.json()["error"]["message"]
    for bad, words in (
        (npy(np.zeros((25, 40))), "shape (25, 40)"),
        (b"not an array", "not a .npy"),
        (npy(np.zeros((10, 29))), "have 10 frames, the speech has 25"),
    ):
        refused = http.post(
            "/v1/dub",
            data={"avatar_id": avatar},
            files={**files, "audio_features": ("f.npy", bad, "x/npy")},
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["field"] == "audio_features"
        assert words in refused.json()["error"]["message"], refused.json()
    jobs_dir = deepspeech_api["root"] / "jobs"
    assert not jobs_dir.exists() or list(jobs_dir.iterdir()) == []  # refusals leave nothing

    ds = np.random.default_rng(1).normal(size=(25, 29))
    accepted = http.post(
        "/v1/dub",
        data={"avatar_id": avatar},
        files={**files, "audio_features": ("speech.npy", npy(ds), "x/npy")},
    )
    assert accepted.status_code == 202, accepted.text
    status = wait_for(http, accepted.json())
    assert status["state"] == "done" and status["frames"] == 25, status
    video = http.get(accepted.json()["video_url"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"


def test_frames_features_of_the_wrong_size_say_what_the_model_takes():
    model = {
        "version": 3,
        "audio": {"features": "logmel", "dim": 29, "fps": 25, "window": 5, "sample_rate": 16000},
    }
    assert api.served_features(model) == AudioFeatureSpec("logmel", 29, 25, 5, 16000, None)
    with pytest.raises(api.ApiError) as refused:
        api.features_from_json([[0.0] * 40], "features", model)
    assert "model version 3 takes log-mel features (29 bands" in refused.value.message
