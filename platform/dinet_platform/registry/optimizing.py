"""Optimizing a model for deployment: ``dinet optimize`` and the demo both call
:func:`export_optimized`.

Load the reference through :func:`~.loading.load_engine` in the requested mode, measure its
output PSNR against the fp32 model on real frames from the shards (kept apart from the
calibration frames), save it as an artifact loadable with torch alone, check the saved artifact
reproduces the in-process engine, and optionally register it as a new registry version tagged
with its mode and measured accuracy drop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dinet_platform.config import DINetConfig
from dinet_platform.metrics import output_psnr
from dinet_platform.optimize.modes import MIN_PSNR_DB
from dinet_platform.paths import dinet_home, shards_path
from dinet_platform.registry.loading import (
    CALIBRATION_BATCHES,
    ModelInfo,
    load_engine,
    real_batches,
    save_optimized,
)

EVAL_BATCHES = 4


@dataclass
class OptimizeOutcome:
    info: ModelInfo
    engine_description: str
    psnr_vs_fp32: float
    frames: int
    artifact: Path
    artifact_description: str
    artifact_psnr: float
    """The saved artifact against the in-process engine it was saved from."""
    tolerance_db: float | None
    registered: Any = None
    """:mod:`~dinet_platform.registry.optimized` outcome when registered."""

    @property
    def within_tolerance(self) -> bool:
        return self.tolerance_db is None or self.psnr_vs_fp32 >= self.tolerance_db


def measure_psnr(engine, reference_engine, batches) -> float:
    """PSNR (peak 1) of ``engine``'s outputs against ``reference_engine``'s over ``batches``
    (each frame with its own references, as :class:`CalibrationBatch` es hold them)."""
    outputs, references = [], []
    for batch in batches:
        outputs.append(engine(batch.source, batch.references, batch.audio))
        references.append(reference_engine(batch.source, batch.references, batch.audio))
    return output_psnr(torch.cat(outputs), torch.cat(references))


def _content_hash(shards: Path) -> str:
    from dinet_platform.data.shards import load_manifest

    return str(load_manifest(shards, check_files=False).get("content_hash", ""))


def export_optimized(
    reference: str,
    mode: str,
    *,
    client: Any = None,
    data: str | Path | None = None,
    compile: bool | None = None,
    out: Path | None = None,
    register: DINetConfig | None = None,
) -> OptimizeOutcome:
    """Optimize ``reference`` in ``mode`` (see the module docstring); ``register``: the config
    whose registry receives the optimized version (None: do not register)."""
    engine, info = load_engine(reference, mode=mode, client=client,  # type: ignore[arg-type]
                               calibration_shards=data, compile=compile)
    if info.optimized_artifact:
        raise ValueError(f"{reference} is already an optimized {info.mode!r} artifact: "
                         "optimize its source checkpoint instead")
    baseline, _ = load_engine(info.source, mode="fp32", client=client)
    shards = Path(data) if data else shards_path(info.config.data.shards)
    batches = real_batches(shards, info.config, info.mouth_size, count=EVAL_BATCHES,
                           skip=CALIBRATION_BATCHES)
    psnr = measure_psnr(engine, baseline, batches)
    frames = sum(len(b.source) for b in batches)
    name = f"{info.name}-v{info.version}" if info.version is not None else info.name
    target = out or dinet_home() / "optimized" / f"{name}-{mode}"
    details = {"psnr_vs_fp32": psnr, "psnr_frames": frames, "source": info.source,
               "source_version": info.version, "engine": engine.description}
    save_optimized(engine, target, config=info.config, mouth_size=info.mouth_size, mode=mode,
                   example=batches[0], details=details)
    reloaded, loaded_info = load_engine(str(target))
    outcome = OptimizeOutcome(
        info=info, engine_description=engine.description, psnr_vs_fp32=psnr, frames=frames,
        artifact=target, artifact_description=loaded_info.description,
        artifact_psnr=measure_psnr(reloaded, engine, batches[:1]),
        tolerance_db=MIN_PSNR_DB.get(mode))
    if register is not None:
        from dinet_platform.registry.optimized import register_optimized

        outcome.registered = register_optimized(
            register, client, target, mode=mode, psnr_vs_fp32=psnr, mouth_size=info.mouth_size,
            source=info.source, source_version=info.version,
            details={"psnr_frames": frames, "engine": engine.description,
                     "calibration_data": _content_hash(shards)})
    return outcome
