"""The audio-feature contract: which features a model was trained on, and one check of them.

A generator only works on the features it was trained on. Log-mel and DeepSpeech features both
have 29 values per frame by default, so a mix-up loads without a shape error and quietly
produces a mouth that ignores the speech. Every loader therefore compares what the model needs
with what it is about to feed it, through :func:`check_features`, and refuses a mismatch with
a message that says what the model needs and how to provide it (:func:`how_to_provide`):

- ``dinet train --init-from``: the checkpoint vs the training config's ``data``;
- evaluation: each model vs the held-out shards' manifest;
- ``dinet dub``, ``/v1/dub`` and ``/frames``: the model vs the features given or computed;
- every checkpoint load (and so Serve): the checkpoint's record vs what this code computes
  from its config (catches a changed normalisation).

What a model needs (:class:`AudioFeatureSpec`) comes from, in this order:

1. the record ``checkpoint.pt["audio_features"]``, written by every
   :func:`~dinet_platform.models.checkpoints.save_checkpoint` (and ``optimization.json`` of
   an optimized artifact);
2. for a platform checkpoint written before the record existed: its stored config's ``data``
   (every platform checkpoint carries its config, so nothing is guessed);
3. for a bare state dict with the public DINet layout (MRzzm/DINet's ``netG_model_epoch_*.pth``
   or ``clip_training_DINet_256mouth.pth``: exactly DINet's parameter names and shapes at full
   width, 29 audio input channels), recognised by its keys and shapes (never by its file
   name) in :func:`~dinet_platform.models.public_dinet.is_public_dinet`: DeepSpeech, 29 per
   frame at 25 fps, 5-frame windows, which is all DINet's code can train on. A bare state
   dict of another layout (our generator at another width, say) has no known features: the
   config given with it decides. (A bare state dict of a full-width log-mel generator of ours
   would be taken for DINet's: the platform never writes one; its checkpoints carry their
   config and record.)

Plain Python + PyTorch: no Ray, MLflow or HTTP here (the serving layer only borrows texts).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dinet_platform.config.schema import DataConfig, DINetConfig
from dinet_platform.media.audio_features import (
    DEEPSPEECH_DIM,
    DEEPSPEECH_SUFFIX,
    LOGMEL_OFFSET,
    LOGMEL_SCALE,
)

RECORD_KEY = "audio_features"
"""Key of the record in ``checkpoint.pt`` and ``optimization.json``."""

LOGMEL_NORMALIZATION = f"(log(mel power + 1e-5) - ({LOGMEL_OFFSET:g})) / {LOGMEL_SCALE:g}"
DEEPSPEECH_NORMALIZATION = "none: DeepSpeech v0.1 logits as DINet's compute_audio_feature writes"

PUBLIC_DINET_FPS = 25
PUBLIC_DINET_WINDOW = 5
"""DINet's window: features of frames t-2..t+2 for frame t (``ds_feature[i - 5 : i]``
generating frame ``i - 3`` in its ``inference.py``), which :func:`audio_window` reproduces."""

RETRAIN_FLAG = "--retrain-audio-path"
RETRAIN_KEY = "training.retrain_audio_path"

Loader = Literal["train", "evaluate", "dub", "serve-dub", "serve-frames"]


class AudioContractError(ValueError):
    """Features that do not match what the model was trained on; the message is user-facing."""


@dataclass(frozen=True)
class AudioFeatureSpec:
    """The audio features a model takes: one description for checkpoints, data and servers.

    ``None`` in a field means "not known here" (a data manifest does not know the model's
    window); unknown fields are not compared."""

    kind: Literal["logmel", "deepspeech"]
    dim: int
    """Values per frame."""
    fps: int
    """Feature vectors per second: one per video frame."""
    window: int | None
    """Frames per model input, centred on the generated frame."""
    sample_rate: int | None
    """Audio rate log-mel is computed at (``None`` for DeepSpeech: supplied, not computed)."""
    normalization: str | None

    @classmethod
    def from_data(cls, data: DataConfig) -> AudioFeatureSpec:
        """What a ``data`` config computes with this code."""
        if data.audio_features == "deepspeech":
            return cls(
                "deepspeech",
                DEEPSPEECH_DIM,
                data.fps,
                data.audio_window,
                None,
                DEEPSPEECH_NORMALIZATION,
            )
        return cls(
            "logmel",
            data.n_mels,
            data.fps,
            data.audio_window,
            data.sample_rate,
            LOGMEL_NORMALIZATION,
        )

    @classmethod
    def from_config(cls, config: DINetConfig | Mapping[str, Any]) -> AudioFeatureSpec:
        if not isinstance(config, DINetConfig):
            config = DINetConfig.model_validate(config)
        return cls.from_data(config.data)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> AudioFeatureSpec:
        try:
            return cls(
                kind=record["kind"],
                dim=int(record["dim"]),
                fps=int(record["fps"]),
                window=record.get("window"),
                sample_rate=record.get("sample_rate"),
                normalization=record.get("normalization"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AudioContractError(
                f"unreadable audio-feature record {dict(record)}: {exc}"
            ) from None

    @classmethod
    def from_manifest(cls, features: Mapping[str, Any]) -> AudioFeatureSpec:
        """What prepared shards hold (their manifest's ``features``; no window, and no
        normalisation recorded)."""
        return cls(
            kind=features["kind"],
            dim=int(features["dim"]),
            fps=int(features["fps"]),
            window=None,
            sample_rate=features.get("sample_rate"),
            normalization=None,
        )

    @classmethod
    def public_dinet(cls) -> AudioFeatureSpec:
        return cls(
            "deepspeech",
            DEEPSPEECH_DIM,
            PUBLIC_DINET_FPS,
            PUBLIC_DINET_WINDOW,
            None,
            DEEPSPEECH_NORMALIZATION,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        parts = [f"{self.fps} frames/s"]
        if self.window is not None:
            parts.append(f"{self.window}-frame windows")
        if self.kind == "logmel":
            rate = f" of {self.sample_rate} Hz audio" if self.sample_rate else ""
            head = f"log-mel features ({self.dim} bands{rate}, "
        else:
            head = f"DeepSpeech features ({self.dim} per frame, "
        return head + ", ".join(parts) + ")"

    def differences(self, other: AudioFeatureSpec) -> list[str]:
        """``"field: self's vs other's"`` for every field both know and that differs."""
        out = []
        for name in ("kind", "dim", "fps", "window", "sample_rate", "normalization"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if name == "sample_rate" and "deepspeech" in (self.kind, other.kind):
                continue  # DeepSpeech features are supplied: no rate to agree on
            if name == "normalization" and self.kind != other.kind:
                continue  # follows from the kind
            if mine is not None and theirs is not None and mine != theirs:
                out.append(f"{name} {mine} vs {theirs}")
        return out


def how_to_provide(
    needed: AudioFeatureSpec, loader: Loader, speech_sidecar: str | None = None
) -> str:
    """How a user gives ``loader`` the features a model needs (``speech_sidecar``: the dub's
    ``<audio>_deepspeech.npy`` by name)."""
    ds = needed.kind == "deepspeech"
    frames = f"shape (frames, {needed.dim}), one row per video frame at {needed.fps} fps"
    data_keys = (
        f"data.audio_features: deepspeech, data.fps: {needed.fps}"
        if ds
        else f"data.audio_features: logmel, data.n_mels: {needed.dim}, data.sample_rate: "
        f"{needed.sample_rate}, data.fps: {needed.fps}"
    )
    if needed.window is not None:
        data_keys += f", data.audio_window: {needed.window}"
    sidecar = (
        f"<name>{DEEPSPEECH_SUFFIX} next to each video ({frames}; what DINet's "
        "compute_audio_feature writes)"
    )
    if loader == "train":
        return f"train with {data_keys} on shards prepared with them" + (
            f" (`dinet data prepare` reads {sidecar})" if ds else ""
        )
    if loader == "evaluate":
        return f"evaluate on shards prepared with {data_keys}" + (
            f" (from {sidecar})" if ds else ""
        )
    if loader == "dub":
        if ds:
            return (
                f"pass --audio-features FILE.npy ({frames}; DINet's compute_audio_feature "
                f"of the speech), or put it next to the speech as "
                f"{speech_sidecar or '<audio>' + DEEPSPEECH_SUFFIX}"
            )
        return "leave out --audio-features: the log-mel features are computed from --audio"
    if loader == "serve-dub":
        if ds:
            return f"upload them as an 'audio_features' file part: a .npy of {frames}"
        return "send only 'audio': the log-mel features are computed from it"
    if ds:
        return f"send them as 'features': a list of per-frame vectors of {needed.dim} values"
    return (
        f"send 'audio_wav' (PCM WAV at {needed.sample_rate} Hz), or 'features' of "
        f"{needed.dim} log-mel bands per frame computed as training did"
    )


def check_features(
    needed: AudioFeatureSpec,
    given: AudioFeatureSpec,
    *,
    model: str,
    given_as: str,
    loader: Loader,
    alternative: str = "",
) -> None:
    """Refuse ``given`` features for a model trained on ``needed`` unless they agree.

    Raises :class:`AudioContractError`: "<model> was trained on <needed>, but <given_as>
    <given> (<differences>). <how to provide what it needs>[; <alternative>]"."""
    differences = needed.differences(given)
    if differences:
        raise AudioContractError(
            f"{model} was trained on {needed.describe()}, but {given_as} {given.describe()} "
            f"({'; '.join(differences)}). To give it what it needs: "
            f"{how_to_provide(needed, loader)}" + (f"; {alternative}" if alternative else "")
        )


def missing_features(
    needed: AudioFeatureSpec, *, model: str, loader: Loader, speech_sidecar: str | None = None
) -> str:
    """The refusal when a model needs features that cannot be computed from audio here."""
    how = how_to_provide(needed, loader, speech_sidecar)
    return (
        f"{model} was trained on {needed.describe()}, which this platform cannot compute "
        f"from audio (no DeepSpeech model is shipped): {how}"
    )


# --------------------------------------------------------------------------- checkpoints


def checkpoint_features(state: Mapping[str, Any], source: str) -> AudioFeatureSpec:
    """What a platform checkpoint's generator needs (see the module doc): its record, checked
    against what this code computes from its stored config, or (older checkpoints, written
    before the record) that computation."""
    config = DINetConfig.model_validate(state["config"])
    record = state.get(RECORD_KEY)
    check_record(record, config, f"checkpoint {source}")
    return AudioFeatureSpec.from_record(record) if record else AudioFeatureSpec.from_config(config)


def check_record(record: Mapping[str, Any] | None, config: DINetConfig, source: str) -> None:
    """A stored record (checkpoint or optimized artifact) against what this code computes
    from the config stored with it: a change in how features are made refuses the model."""
    if record is None:
        return
    recorded = AudioFeatureSpec.from_record(record)
    differences = recorded.differences(AudioFeatureSpec.from_config(config))
    if differences:
        raise AudioContractError(
            f"{source} was trained on {recorded.describe()} ({recorded.normalization}), but "
            f"this code computes {AudioFeatureSpec.from_config(config).describe()} from its "
            f"config ({'; '.join(differences)}): the feature computation changed since it was "
            "trained. Run it with the code it was trained with, or train it again"
        )


# --------------------------------------------------------------------------- feature files


def npy_shape(source: bytes | str | Path, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` from its header alone (nothing else is read)."""
    try:
        if isinstance(source, bytes):
            handle: Any = io.BytesIO(source)
        else:
            handle = open(source, "rb")  # noqa: SIM115 - closed below
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        finally:
            handle.close()
    except (OSError, ValueError, EOFError) as exc:
        raise AudioContractError(f"{name}: not a .npy array file ({exc})") from None
    return tuple(shape), dtype


def check_feature_file(
    shape: tuple[int, ...],
    dtype: np.dtype,
    needed: AudioFeatureSpec,
    name: str,
    max_frames: int | None = None,
) -> None:
    """A features file's header against the model's features, before its data is read."""
    squeezed = tuple(s for s in shape if s != 1) if len(shape) > 2 else shape
    if len(squeezed) != 2 or squeezed[1] != needed.dim or squeezed[0] < 1:
        raise AudioContractError(
            f"{name} has shape {shape}; the model takes {needed.describe()}: "
            f"shape (frames, {needed.dim}), one row per video frame"
        )
    if dtype.kind not in "fiu":
        raise AudioContractError(f"{name} holds {dtype}, not numbers")
    if max_frames is not None and squeezed[0] > max_frames:
        raise AudioContractError(f"{name} has {squeezed[0]} frames; at most {max_frames}")
