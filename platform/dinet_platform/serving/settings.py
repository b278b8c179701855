"""The serve app's typed settings, read from a Ray Serve config file.

``configs/serve.yaml`` is a Ray Serve config file (what ``serve deploy`` takes) whose
application ``args`` hold the platform's settings: ``serving`` (:class:`ServingConfig`) and
``tracking`` (:class:`TrackingConfig`). ``dinet serve`` and the ``serve deploy`` app builder
both validate those args here, so a bad field is refused the same way on a laptop and on a
cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from dinet_platform.config.base import Strict
from dinet_platform.config.loader import ConfigError, read_yaml, set_field, validate
from dinet_platform.config.schema import TrackingConfig
from dinet_platform.config.serving import ServingConfig
from dinet_platform.media.opening import MediaLimits
from dinet_platform.paths import dinet_home

APP_NAME = "dinet"


class ServeAppConfig(Strict):
    serving: ServingConfig = Field(default_factory=ServingConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


def validate_args(args: dict[str, Any] | None, source: str = "serve args") -> ServeAppConfig:
    return validate(ServeAppConfig, args or {}, source, "serve settings")


def load_serve_config(path: str | Path, overrides: dict[str, Any] | None = None
                      ) -> ServeAppConfig:
    """The settings of the ``dinet`` application in a Ray Serve config file; ``overrides``
    (``{"serving": {"port": 8001}}``, from command-line flags) replace single fields."""
    doc = read_yaml(path, "serve config")
    apps = doc.get("applications")
    if not isinstance(apps, list) or not apps:
        raise ConfigError(f"{path}: a Ray Serve config needs an 'applications' list")
    app = next((a for a in apps if isinstance(a, dict) and a.get("name") == APP_NAME), apps[0])
    args = dict(app.get("args") or {})
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            set_field(args, f"{section}.{key}", value)
    return validate_args(args, source=str(path))


def avatar_dir(serving: ServingConfig) -> Path:
    if serving.avatar_dir:
        return Path(serving.avatar_dir).expanduser().resolve()
    return dinet_home() / "serve" / "avatars"


def jobs_dir(serving: ServingConfig) -> Path:
    """Dub jobs live next to the avatars (the same shared storage on a cluster)."""
    return avatar_dir(serving).parent / "dub-jobs"


SOURCE_FRAMES_PER_FRAME = 10
"""Decoded frames an upload may have per frame it is used at (a 250 fps clip for 25 fps)."""


def media_limits(serving: ServingConfig, max_frames: int) -> MediaLimits:
    """The bounds every uploaded image, video and speech file is held to."""
    return MediaLimits(max_pixels_per_frame=serving.max_frame_pixels, max_frames=max_frames,
                       max_source_frames=SOURCE_FRAMES_PER_FRAME * max_frames,
                       max_decoded_bytes=serving.max_decoded_video_bytes,
                       max_audio_seconds=serving.max_dub_audio_s)
