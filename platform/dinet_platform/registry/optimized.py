"""Optimized models in the registry: ``dinet optimize --register``.

An optimized version is a directory of torch.export/TorchScript programs plus JSON/YAML
(nothing pickled), logged to its own ``optimization`` run and registered as a new version of
the same registered model, tagged with its mode and its measured PSNR against fp32. No alias
is moved: promotion stays a decision (``dinet registry promote``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from dinet_platform.config import DINetConfig
from dinet_platform.metrics import PSNR_CAP_DB
from dinet_platform.registry.versions import (
    SOURCE_RUN_TAG,
    all_versions,
    register_version,
    require_version,
    tag_text,
)
from dinet_platform.tracking import KIND_TAG, experiment_id

OPTIMIZED_ARTIFACT = "optimized_model"
OPTIMIZATION_PREFIX = "dinet.optimization."


@dataclass
class OptimizedRegistration:
    name: str
    version: int
    run_id: str
    existed: bool = False


def register_optimized(
    config: DINetConfig,
    client: MlflowClient,
    directory: str | Path,
    *,
    mode: str,
    psnr_vs_fp32: float,
    mouth_size: int,
    source: str,
    source_version: int | None = None,
    details: dict[str, Any] | None = None,
) -> OptimizedRegistration:
    """Register an optimized inference directory (``dinet optimize``: torch.export/TorchScript
    programs + JSON/YAML, nothing pickled) as a new version of
    ``tracking.registered_model``, tagged ``dinet.optimization.{mode, psnr_vs_fp32,
    source_version, source}``. The directory is logged to a finished ``optimization`` run
    (the version's source run, which also records the PSNR as a metric). No alias is moved.
    Registering the same optimization again (same source, mode, engine and calibration data,
    ``details["calibration_data"]``) returns the existing version (``existed``). Neither the
    programs' bytes (TorchScript mangles names per process) nor the measured PSNR (int8
    calibration ranges move with float summation order under threading: ~0.3 dB between
    runs) can serve as the key."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"optimized model directory {directory} does not exist")
    name = config.tracking.registered_model
    psnr_text = "inf" if psnr_vs_fp32 == float("inf") else f"{psnr_vs_fp32:.4f}"
    engine = str((details or {}).get("engine", ""))
    data = str((details or {}).get("calibration_data", ""))
    identity = hashlib.sha256(f"{source}|{mode}|{engine}|{data}".encode()).hexdigest()[:32]
    for existing in all_versions(client, name):
        if existing.tags.get(f"{OPTIMIZATION_PREFIX}key") == identity:
            return OptimizedRegistration(name, int(existing.version), existing.run_id or "", True)
    source_tags: dict[str, str] = {}
    if source_version is not None:
        source_tags = dict(require_version(client, name, source_version).tags)
    run = client.create_run(
        experiment_id(client, config.tracking.experiment), run_name=f"optimize-{mode}",
        tags={KIND_TAG: "optimization", f"{OPTIMIZATION_PREFIX}mode": mode,
              f"{OPTIMIZATION_PREFIX}source": source},
    )
    run_id = run.info.run_id
    try:
        client.log_metric(run_id, "psnr_vs_fp32", min(psnr_vs_fp32, PSNR_CAP_DB))
        for key, value in (details or {}).items():
            client.set_tag(run_id, f"{OPTIMIZATION_PREFIX}{key}", tag_text(value))
        client.log_artifacts(run_id, str(directory), OPTIMIZED_ARTIFACT)
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    carried = ("dinet.config", "dinet.data_hash", "dinet.stages", "dinet.variant", "dinet.width")
    tags = {
        **{key: source_tags[key] for key in carried if key in source_tags},
        f"{OPTIMIZATION_PREFIX}mode": mode,
        f"{OPTIMIZATION_PREFIX}psnr_vs_fp32": psnr_text,
        f"{OPTIMIZATION_PREFIX}source_version": str(source_version or ""),
        f"{OPTIMIZATION_PREFIX}source": source,
        f"{OPTIMIZATION_PREFIX}key": identity,
        SOURCE_RUN_TAG: run_id,
        "dinet.mouth_size": str(mouth_size),
    }
    number = register_version(
        client, name, f"runs:/{run_id}/{OPTIMIZED_ARTIFACT}", run_id, tags, alias=None,
        description=f"{mode} optimization of {source} (mouth {mouth_size}, PSNR vs fp32 "
                    f"{psnr_text} dB); loads with torch alone")
    return OptimizedRegistration(name, number, run_id)
