"""``dinet optimize`` and ``dinet dub``: thin commands over :mod:`.loading` and :mod:`.dub`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dinet_platform.cli import ConfigOption, SetOption, console, load_or_exit

ModelOption = Annotated[
    str,
    typer.Option("--model", "-m", help="models:/NAME@ALIAS, models:/NAME/N, an MLflow run id, "
                 "a checkpoint directory or an optimized directory."),
]
DataOption = Annotated[
    str | None,
    typer.Option("--data", help="Shards with real frames for int8 calibration and the PSNR "
                 "check (default: the model config's data.shards)."),
]
CompileOption = Annotated[
    bool | None,
    typer.Option("--compile/--no-compile", help="Override the mode's torch.compile switch "
                 "(compiling costs 10-120 s per input shape on a small CPU)."),
]
EVAL_BATCHES = 4


def _fail(exc: BaseException) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}", highlight=False)
    return typer.Exit(2)


def _client(reference: str, cfg):
    """An MLflow client when ``reference`` needs one (registry URI, run id, artifact URI):
    dubbing with a local checkpoint creates no tracking store."""
    if Path(reference).expanduser().exists():
        return None
    from dinet_platform.tracking import client_for

    return client_for(cfg.tracking)


def _content_hash(shards: Path) -> str:
    from dinet_platform.data.shards import load_manifest

    return str(load_manifest(shards, check_files=False).get("content_hash", ""))


def _psnr(output, reference) -> float:
    import torch

    mse = torch.mean((output.float() - reference.float()) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * float(torch.log10(torch.tensor(1.0 / mse)))


def measure_psnr(engine, reference_engine, batches) -> float:
    """PSNR (peak 1) of ``engine``'s outputs against ``reference_engine``'s over ``batches``
    (each frame with its own references, as :class:`CalibrationBatch` es hold them)."""
    import torch

    outputs, references = [], []
    for batch in batches:
        outputs.append(engine(batch.source, batch.references, batch.audio))
        references.append(reference_engine(batch.source, batch.references, batch.audio))
    return _psnr(torch.cat(outputs), torch.cat(references))


def optimize_model(
    model: ModelOption,
    mode: Annotated[str, typer.Option(help="fp32, structure, cache, dynamic_int8, static_int8, "
                                      "compile or all.")] = "all",
    out: Annotated[
        Path | None,
        typer.Option(help="Where to write the optimized directory (default: "
                     "$DINET_HOME/optimized/<name>-v<version>-<mode>)."),
    ] = None,
    register: Annotated[
        bool, typer.Option("--register", help="Register it as a new registry version.")
    ] = False,
    data: DataOption = None,
    compile: CompileOption = None,
    config: ConfigOption = Path("configs/demo.yaml"),
    overrides: SetOption = None,
) -> None:
    """Optimize a model, measure its output PSNR against fp32 on real frames, save it as an
    artifact loadable with torch alone, and optionally register it."""
    from dinet_platform.inference.loading import (
        CALIBRATION_BATCHES,
        default_shards,
        load_engine,
        real_batches,
        save_optimized,
    )
    from dinet_platform.inference.modes import MIN_PSNR_DB
    from dinet_platform.paths import dinet_home
    from dinet_platform.tracking import client_for

    cfg = load_or_exit(config, overrides)
    client = client_for(cfg.tracking) if register else _client(model, cfg)
    try:
        engine, info = load_engine(model, mode=mode, client=client,  # type: ignore[arg-type]
                                   calibration_shards=data, compile=compile)
        if info.optimized_artifact:
            raise ValueError(f"{model} is already an optimized {info.mode!r} artifact: "
                             "optimize its source checkpoint instead")
        baseline, _ = load_engine(info.source, mode="fp32", client=client)
        shards = Path(data) if data else default_shards(info.config)
        batches = real_batches(shards, info.config, info.mouth_size, count=EVAL_BATCHES,
                               skip=CALIBRATION_BATCHES)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from None
    with console.status("measuring PSNR against fp32 on real frames"):
        psnr = measure_psnr(engine, baseline, batches)
    frames = sum(len(b.source) for b in batches)
    tolerance = MIN_PSNR_DB.get(mode)
    name = f"{info.name}-v{info.version}" if info.version is not None else info.name
    target = out or dinet_home() / "optimized" / f"{name}-{mode}"
    details = {"psnr_vs_fp32": psnr, "psnr_frames": frames, "source": info.source,
               "source_version": info.version, "engine": engine.description}
    with console.status(f"saving the artifact to {target}"):
        try:
            save_optimized(engine, target, config=info.config, mouth_size=info.mouth_size,
                           mode=mode, example=batches[0], details=details)
        except RuntimeError as exc:
            raise _fail(exc) from None
        reloaded, loaded_info = load_engine(str(target))
        artifact_psnr = measure_psnr(reloaded, engine, batches[:1])
    table = Table(title=f"dinet optimize {mode}")
    table.add_column("")
    table.add_column("value")
    table.add_row("model", info.source)
    table.add_row("engine", engine.description)
    table.add_row("PSNR vs fp32", f"{psnr:.2f} dB on {frames} real frames"
                  + (f" (tolerance {tolerance:.0f} dB)" if tolerance else ""))
    table.add_row("artifact", f"{target} ({loaded_info.description}, "
                  f"PSNR vs in-process {artifact_psnr:.1f} dB)")
    if register:
        from dinet_platform.registry.store import register_optimized

        try:
            registered = register_optimized(
                cfg, client, target, mode=mode, psnr_vs_fp32=psnr, mouth_size=info.mouth_size,
                source=info.source, source_version=info.version,
                details={"psnr_frames": frames, "engine": engine.description,
                         "calibration_data": _content_hash(shards)})
        except ValueError as exc:
            raise _fail(exc) from None
        state = "already registered as" if registered.existed else "registered"
        table.add_row("registry", f"{state} models:/{registered.name}/{registered.version} "
                      f"(run {registered.run_id})")
    console.print(table)
    if tolerance is not None and psnr < tolerance:
        console.print(f"[yellow]warning:[/yellow] PSNR {psnr:.2f} dB is below the documented "
                      f"{tolerance:.0f} dB for {mode}", highlight=False)


def dub(
    model: ModelOption,
    video: Annotated[Path, typer.Option(help="Face video (any format PyAV reads).")],
    audio: Annotated[Path, typer.Option(help="Speech (any audio file or video with audio).")],
    out: Annotated[Path, typer.Option(help="Output mp4 (H.264 + AAC).")],
    mode: Annotated[
        str | None, typer.Option(help="Optimization of a checkpoint (default: all).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Frames per engine call.")] = 8,
    landmarks: Annotated[
        Path | None, typer.Option(help="OpenFace CSV for the video (default: detect faces).")
    ] = None,
    data: DataOption = None,
    compile: CompileOption = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    device: Annotated[str, typer.Option(help="cpu, or cuda (int8 modes run in bf16 there).")
                      ] = "cpu",
    config: ConfigOption = Path("configs/demo.yaml"),
    overrides: SetOption = None,
) -> None:
    """Dub a face video with speech: frames in batches through the engine, mouths blended
    back, speech muxed into an H.264 mp4."""
    from dinet_platform.data.media import MediaError
    from dinet_platform.inference.dub import dub_video
    from dinet_platform.inference.loading import load_engine

    for role, path in (("video", video), ("audio", audio), ("landmarks", landmarks)):
        if path is not None and not path.is_file():
            raise _fail(FileNotFoundError(f"--{role} {path}: file not found"))
    if out.suffix.lower() != ".mp4":
        raise _fail(ValueError(f"--out {out}: the output is an H.264 mp4, name it *.mp4"))
    import torch

    if device.split(":")[0] not in ("cpu", "cuda") or (
            device.startswith("cuda") and not torch.cuda.is_available()):
        raise _fail(ValueError(f"--device {device}: use cpu, or cuda on a machine with a GPU "
                               f"(CUDA available here: {torch.cuda.is_available()})"))
    cfg = load_or_exit(config, overrides)
    try:
        engine, info = load_engine(model, mode=mode, client=_client(model, cfg),  # type: ignore[arg-type]
                                   calibration_shards=data, compile=compile, device=device)
        console.print(f"model {info.source} ({info.description}, mouth {info.mouth_size})",
                      highlight=False)
        result = dub_video(engine, video, audio, out, model=info, batch_size=batch_size,
                           progress=progress, landmarks=landmarks, console=console)
    except (ValueError, RuntimeError, MediaError, FileNotFoundError) as exc:
        raise _fail(exc) from None
    console.print(result.summary(), highlight=False)
