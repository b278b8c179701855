"""Config loading: the shipped configs are valid and every bad input names its field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dinet_platform.cli import app
from dinet_platform.config import ConfigError, dump_config, load_config
from dinet_platform.geometry import crop_geometry
from typer.testing import CliRunner

pytestmark = pytest.mark.unit

CONFIGS = Path(__file__).parents[1] / "configs"


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def minimal(**changes) -> dict:
    data = {"stages": [{"mouth_size": 64, "epochs": 1, "batch_size": 2, "lr": 1e-4}]}
    data.update(changes)
    return data


def test_multiscale_config_holds_the_seed_schedule_at_full_width():
    config = load_config(CONFIGS / "multiscale.yaml")
    schedule = [(s.mouth_size, s.epochs, s.batch_size, s.lr) for s in config.stages]
    assert schedule == [
        (64, 20, 16, 1e-4),
        (96, 15, 12, 8e-5),
        (128, 15, 8, 6e-5),
        (160, 10, 6, 4e-5),
    ]
    assert config.model.width == 1.0
    temporal = config.loss.temporal
    assert (temporal.frame_diff, temporal.optical_flow, temporal.mouth_temporal) == (8, 6, 10)
    assert temporal.long_term == 4.0


def test_demo_config_is_cpu_sized():
    config = load_config(CONFIGS / "demo.yaml")
    assert config.model.width < 0.5
    assert not config.training.use_gpu
    assert config.training.steps_per_epoch is not None


def test_defaults_fill_everything_not_given(tmp_path):
    config = load_config(write(tmp_path, minimal()))
    assert config.loss.temporal.frame_diff == 8.0
    assert config.model.variant == "dinet"
    assert config.sync_expert_frames == config.data.clip_len  # the expert judges clips


def test_sync_expert_window_can_be_longer_than_the_training_clips():
    config = load_config(CONFIGS / "demo.yaml")
    assert (config.data.clip_len, config.sync_expert_frames) == (2, 5)


def test_resolved_config_round_trips(tmp_path):
    config = load_config(CONFIGS / "multiscale.yaml")
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


def test_override_is_typed_as_the_field(tmp_path):
    config = load_config(write(tmp_path, minimal()), ["loss.temporal.frame_diff=5"])
    assert config.loss.temporal.frame_diff == 5.0
    assert isinstance(config.loss.temporal.frame_diff, float)
    config = load_config(write(tmp_path, minimal()), ["stages.0.lr=3e-5", "model.width=0.5"])
    assert config.stages[0].lr == 3e-5 and config.model.width == 0.5


@pytest.mark.parametrize(
    ("data", "overrides", "field", "detail"),
    [
        (minimal(modle={"width": 1.0}), [], "modle", "unknown key"),
        (minimal(model={"widht": 1.0}), [], "model.widht", "unknown key"),
        (minimal(), ["loss.temporal.frame_dif=1"], "loss.temporal.frame_dif", "unknown key"),
        (minimal(model={"width": "wide"}), [], "model.width", "'wide'"),
        (minimal(), ["stages.0.epochs=many"], "stages.0.epochs", "'many'"),
        (minimal(), ["loss.temporal.frame_diff=-1"], "loss.temporal.frame_diff", "-1"),
        (minimal(), ["loss.gan=-0.5"], "loss.gan", "-0.5"),
        (minimal(), ["stages.0.mouth_size=66"], "stages.0.mouth_size", "multiple of 4"),
        (
            {
                "stages": [
                    {"mouth_size": 96, "epochs": 1, "batch_size": 2, "lr": 1e-4},
                    {"mouth_size": 64, "epochs": 1, "batch_size": 2, "lr": 1e-4},
                ]
            },
            [],
            "stages",
            "[96, 64]",
        ),
        (minimal(stages=[]), [], "stages", "at least one stage"),
        (minimal(), ["stages.0.lr=0"], "stages.0.lr", "greater than 0"),
        (minimal(), ["serving.max_batch_size=64"], "serving", "max_ongoing_requests"),
        (minimal(), ["model.audio_channels=80"], "(root)", "audio_channels (80)"),
        (minimal(), ["loss.perceptual_kind=vgg19"], "loss", "vgg19_weights"),
    ],
)
def test_bad_input_names_the_field_and_value(tmp_path, data, overrides, field, detail):
    with pytest.raises(ConfigError) as excinfo:
        load_config(write(tmp_path, data), overrides)
    message = str(excinfo.value)
    assert f"- {field}:" in message
    assert detail in message


@pytest.mark.parametrize(
    ("override", "detail"),
    [
        ("frame_diff", "key.path=value"),
        ("stages.x.lr=1", "not a list index"),
        ("stages.3.lr=1", "out of range"),
    ],
)
def test_malformed_override_is_explained(tmp_path, override, detail):
    with pytest.raises(ConfigError, match=detail):
        load_config(write(tmp_path, minimal()), [override])


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("stages: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_cli_validates_and_reports_errors(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["config", "validate", "--config", str(CONFIGS / "multiscale.yaml")])
    assert ok.exit_code == 0, ok.output
    assert "4 stages" in ok.output
    bad = runner.invoke(
        app, ["config", "show", "--config", str(CONFIGS / "demo.yaml"), "--set", "loss.gan=-1"]
    )
    assert bad.exit_code == 2
    assert "loss.gan" in bad.output


@pytest.mark.parametrize(
    ("mouth_size", "crop", "mouth_origin"),
    [(64, (104, 80), (32, 8)), (128, (208, 160), (64, 16)), (256, (416, 320), (128, 32))],
)
def test_crop_geometry_matches_dinet(mouth_size, crop, mouth_origin):
    geometry = crop_geometry(mouth_size)
    assert geometry.crop_shape == crop
    assert (geometry.mouth.top, geometry.mouth.left) == mouth_origin
    assert geometry.mouth.bottom <= crop[0] and geometry.mouth.right <= crop[1]


@pytest.mark.parametrize("bad", [0, -8, 66, 64.0, True])
def test_crop_geometry_rejects_bad_sizes(bad):
    with pytest.raises((ValueError, TypeError)):
        crop_geometry(bad)


def test_config_can_travel_in_an_environment_variable(monkeypatch):
    resolved = dump_config(load_config(CONFIGS / "demo.yaml", ["loss.gan=0.5"]))
    monkeypatch.setenv("DINET_CONFIG", resolved)
    assert load_config("env:DINET_CONFIG").loss.gan == 0.5
    monkeypatch.delenv("DINET_CONFIG")
    with pytest.raises(ConfigError, match=r"\$DINET_CONFIG is not set"):
        load_config("env:DINET_CONFIG")
