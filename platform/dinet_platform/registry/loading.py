"""Model reference -> inference engine: the one loader of the dub CLI, Serve and the demo.

:func:`load_engine` accepts every way the platform names a model:

- ``models:/NAME@ALIAS`` or ``models:/NAME/N``: a registry version (the alias is resolved to
  its version once, so a concurrent alias move cannot mix two versions up);
- an MLflow run id (a stage run, or a pipeline run for its final stage);
- a local platform checkpoint directory (or ``checkpoint.pt``), or a public DINet ``.pth``
  with ``config`` describing it;
- a local *optimized* directory written by :func:`save_optimized` (what ``dinet optimize``
  writes and registers).

An optimized directory (local, or what an optimized registry version downloads to) is an
inference artifact (:mod:`.artifact`: ``torch.export``/TorchScript programs, read without the
project's model code and without unpickling anything) plus ``optimization.json`` (mode,
mouth size, measured PSNR, provenance) and ``config.yaml`` (the model's resolved config: the
audio-feature and crop settings inputs must be built with). A checkpoint is loaded and run
through :func:`~dinet_platform.optimize.modes.optimize`; static int8 is calibrated on real
training samples from the shards (built by the training loader's own
:class:`~dinet_platform.data.samples.SampleBuilder`, augmentation off).

MLflow is only touched for references that need it (registry URIs and run ids).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dinet_platform.audio_contract import RECORD_KEY, AudioFeatureSpec, check_record
from dinet_platform.config import load_config
from dinet_platform.config.schema import DINetConfig
from dinet_platform.files import replace_dir
from dinet_platform.optimize import MODES
from dinet_platform.optimize.artifact import META_FILE, load_artifact, save_artifact
from dinet_platform.paths import shards_path
from dinet_platform.registry.refs import ResolvedModel, resolve
from dinet_platform.runtime.engine import InferenceEngine, ModelInfo

if TYPE_CHECKING:  # the model code is imported only when a checkpoint is loaded
    from dinet_platform.optimize.modes import Mode, OptimizeOptions
    from dinet_platform.optimize.quantize import CalibrationBatch

DEFAULT_MODE = "all"
OPTIMIZATION_FILE = "optimization.json"
CONFIG_FILE = "config.yaml"
CALIBRATION_BATCHES = 8
CALIBRATION_BATCH_SIZE = 4


def is_optimized(path: str | Path) -> bool:
    path = Path(path)
    return (path / OPTIMIZATION_FILE).is_file() and (path / META_FILE).is_file()


# --------------------------------------------------------------------------- real frames


def real_batches(
    shards: str | Path,
    config: DINetConfig,
    mouth_size: int,
    *,
    count: int = CALIBRATION_BATCHES,
    batch_size: int = CALIBRATION_BATCH_SIZE,
    skip: int = 0,
    seed: int = 0,
) -> list[CalibrationBatch]:
    """``count`` batches of real training samples ``(source, audio, references)`` from the
    shards, built by the training loader (augmentation off), from windows drawn over all
    videos (seeded). ``skip`` leaves out the first ``skip`` batches' windows, so calibration
    and accuracy measurement can use disjoint frames."""
    from dinet_platform.data.samples import SampleBuilder, sample_windows
    from dinet_platform.data.shards import ShardError
    from dinet_platform.optimize.quantize import CalibrationBatch

    try:
        builder = SampleBuilder(
            shards, mouth_size, config.data.clip_len, split="all", config=config.data, seed=seed
        )
    except ShardError as exc:
        raise ValueError(f"real frames for calibration: {exc}") from None
    windows = sample_windows(builder.manifest, "all", config.data.clip_len, seed=seed)
    wanted = windows[skip * batch_size : (skip + count) * batch_size]
    if len(wanted) < batch_size:
        raise ValueError(
            f"shards {shards} hold only {len(windows)} samples: not enough real frames for "
            f"{count} batches of {batch_size} after skipping {skip}"
        )
    batches = []
    for start in range(0, len(wanted) - batch_size + 1, batch_size):
        samples = [builder.build(w) for w in wanted[start : start + batch_size]]
        batches.append(CalibrationBatch(
            source=torch.from_numpy(np.stack([s["source"] for s in samples])),
            audio=torch.from_numpy(np.stack([s["audio"] for s in samples])),
            references=torch.from_numpy(np.stack([s["reference"] for s in samples])),
        ))
    return batches


# --------------------------------------------------------------------------- save


def save_optimized(
    engine: InferenceEngine,
    path: str | Path,
    *,
    config: DINetConfig,
    mouth_size: int,
    mode: str,
    example: CalibrationBatch,
    details: dict[str, Any] | None = None,
) -> Path:
    """Write ``engine`` as an optimized directory (artifact + ``optimization.json`` +
    ``config.yaml``) at ``path``, atomically: a failure leaves any previous one intact.
    ``example`` is a real batch (batch >= 2) at the model's crop size."""
    from dinet_platform.config import dump_config

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging_root = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        staging = staging_root / "optimized"
        info = save_artifact(engine, staging, (example.source, example.audio, example.references))
        meta = {
            "mode": mode,
            "mouth_size": mouth_size,
            "description": engine.description,
            "artifact_format": info.format,
            RECORD_KEY: AudioFeatureSpec.from_data(config.data).as_dict(),
            **(details or {}),
        }
        (staging / OPTIMIZATION_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        (staging / CONFIG_FILE).write_text(dump_config(config))
        replace_dir(staging, path)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    return path


def read_optimized(path: str | Path) -> tuple[dict[str, Any], DINetConfig]:
    """``optimization.json`` and the config of an optimized directory."""
    path = Path(path)
    meta = json.loads((path / OPTIMIZATION_FILE).read_text())
    config = load_config(path / CONFIG_FILE)
    return meta, config


# --------------------------------------------------------------------------- load


def load_engine(
    reference: str,
    *,
    mode: Mode | OptimizeOptions | None = None,
    client: Any = None,
    device: str | torch.device = "cpu",
    calibration_shards: str | Path | None = None,
    calibration: list[CalibrationBatch] | None = None,
    config: DINetConfig | None = None,
    compile: bool | None = None,
    artifact_as_optimized: bool = False,
) -> tuple[InferenceEngine, ModelInfo]:
    """An engine for the model ``reference`` names (see the module doc) and what it is.

    Args:
        mode: optimization of a checkpoint (``None``: :data:`DEFAULT_MODE`). An optimized
            artifact runs as it was optimized; asking it for another mode is an error (use its
            source version), unless ``artifact_as_optimized``: then ``mode`` applies to
            checkpoints only (a server's precision policy, which serves a registered
            optimized version as it was built).
        client: MLflow client for registry URIs and run ids (default: the embedded store or
            ``$MLFLOW_TRACKING_URI``).
        calibration_shards: shards with real frames for static int8 (default: the model
            config's ``data.shards``); ``calibration`` gives the batches directly.
        config: for a bare generator file (which carries no config): its config. A public
            DINet generator (recognised by its layout) takes only the stages from it: it runs
            as full-width DINet on DeepSpeech features at the last stage's mouth size.
        compile: override the mode's ``torch.compile`` switch (``False`` for a process that
            cannot afford a compile per input shape).
    """
    if isinstance(mode, str) and mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    model = resolve(reference, client)
    if is_optimized(model.path):
        return _load_optimized(model, None if artifact_as_optimized else mode, device)
    return _load_checkpoint(model, mode, device, calibration_shards, calibration, config,
                            compile)


def _load_optimized(
    model: ResolvedModel, mode: Mode | OptimizeOptions | None, device: str | torch.device,
) -> tuple[InferenceEngine, ModelInfo]:
    path, source = model.path, model.reference
    meta, config = read_optimized(path)
    check_record(meta.get(RECORD_KEY), config, f"model {source!r}")
    wanted = mode if mode is None or isinstance(mode, str) else mode.describe()
    if wanted is not None and wanted != meta["mode"]:
        raise ValueError(
            f"model {source!r} is an optimized {meta['mode']!r} artifact and cannot run as "
            f"{wanted!r}; load its source ({meta.get('source', 'the checkpoint')}) instead"
        )
    engine = load_artifact(path, device=device)
    info = ModelInfo(
        name=model.name, version=model.version, alias=model.alias, mode=meta["mode"],
        mouth_size=int(meta["mouth_size"]), source=source, description=engine.description,
        optimized_artifact=True, config=config,
        details={k: v for k, v in meta.items() if k not in ("mode", "mouth_size", RECORD_KEY)},
    )
    return engine, info


def _load_checkpoint(
    model: ResolvedModel, mode: Mode | OptimizeOptions | None, device: str | torch.device,
    calibration_shards: str | Path | None, calibration: list[CalibrationBatch] | None,
    config: DINetConfig | None, compile: bool | None,
) -> tuple[InferenceEngine, ModelInfo]:
    from dinet_platform.models.checkpoints import load_generator
    from dinet_platform.optimize.modes import OptimizeOptions, optimize

    loaded = load_generator(model.path, model.reference, fallback=config)
    config = loaded.config  # the checkpoint's own, or the one derived for a public DINet file
    mode = DEFAULT_MODE if mode is None else mode
    options = mode if isinstance(mode, OptimizeOptions) else OptimizeOptions.for_mode(mode)
    if compile is not None:
        options = replace(options, compile=compile)
    if options.static_int8 and calibration is None and torch.device(device).type == "cpu":
        shards = Path(calibration_shards) if calibration_shards else shards_path(config.data.shards)
        calibration = real_batches(shards, config, loaded.mouth_size)
    engine = optimize(loaded.generator, options, calibration=calibration, device=device)
    mode_name = mode if isinstance(mode, str) else options.describe()
    info = ModelInfo(
        name=model.name, version=model.version, alias=model.alias, mode=mode_name,
        mouth_size=loaded.mouth_size, source=model.reference, description=engine.description,
        optimized_artifact=False,
        config=config,
    )
    return engine, info


def info_json(info: ModelInfo) -> str:
    return json.dumps(info.as_dict(), indent=2, default=str)


__all__ = [
    "DEFAULT_MODE",
    "info_json",
    "is_optimized",
    "load_engine",
    "read_optimized",
    "real_batches",
    "save_optimized",
]
