"""``dinet optimize`` and ``dinet dub``: thin commands over :mod:`.loading` and :mod:`.dub`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dinet_platform.cli.common import (
    ConfigOption,
    SetOption,
    console,
    fail,
    load_or_exit,
    logged,
)

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


def _client(reference: str, cfg):
    """An MLflow client when ``reference`` needs one (registry URI, run id, artifact URI):
    dubbing with a local checkpoint creates no tracking store."""
    if Path(reference).expanduser().exists():
        return None
    from dinet_platform.tracking import client_for

    return client_for(cfg.tracking)


def optimize_command(
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
    from dinet_platform.registry.optimizing import export_optimized
    from dinet_platform.tracking import client_for

    cfg = load_or_exit(config, overrides)
    try:
        with logged("optimize", f"optimizing {model} ({mode}), measuring it on real frames"):
            client = client_for(cfg.tracking) if register else _client(model, cfg)
            outcome = export_optimized(model, mode, client=client, data=data,
                                         compile=compile, out=out,
                                         register=cfg if register else None)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise fail(exc) from None
    tolerance = outcome.tolerance_db
    table = Table(title=f"dinet optimize {mode}")
    table.add_column("")
    table.add_column("value")
    table.add_row("model", outcome.info.source)
    table.add_row("engine", outcome.engine_description)
    table.add_row("PSNR vs fp32", f"{outcome.psnr_vs_fp32:.2f} dB on {outcome.frames} real "
                  "frames" + (f" (tolerance {tolerance:.0f} dB)" if tolerance else ""))
    table.add_row("artifact", f"{outcome.artifact} ({outcome.artifact_description}, "
                  f"PSNR vs in-process {outcome.artifact_psnr:.1f} dB)")
    if outcome.registered is not None:
        registered = outcome.registered
        state = "already registered as" if registered.existed else "registered"
        table.add_row("registry", f"{state} models:/{registered.name}/{registered.version} "
                      f"(run {registered.run_id})")
    console.print(table)
    if not outcome.within_tolerance:
        console.print(f"[yellow]warning:[/yellow] PSNR {outcome.psnr_vs_fp32:.2f} dB is below "
                      f"the documented {tolerance:.0f} dB for {mode}", highlight=False)


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
    audio_features: Annotated[
        Path | None,
        typer.Option(help="DeepSpeech features of --audio, a .npy of shape (frames, 29) at the "
                     "video frame rate (DINet's compute_audio_feature), for a model trained on "
                     "them (a public DINet checkpoint); default: <audio>_deepspeech.npy if it "
                     "exists. Log-mel models compute their features from --audio."),
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
    from dinet_platform.media.opening import MediaError
    from dinet_platform.registry.loading import load_engine
    from dinet_platform.runtime.dub import dub_video

    for role, path in (("video", video), ("audio", audio), ("landmarks", landmarks),
                       ("audio-features", audio_features)):
        if path is not None and not path.is_file():
            raise fail(FileNotFoundError(f"--{role} {path}: file not found"))
    if out.suffix.lower() != ".mp4":
        raise fail(ValueError(f"--out {out}: the output is an H.264 mp4, name it *.mp4"))
    import torch

    if device.split(":")[0] not in ("cpu", "cuda") or (
            device.startswith("cuda") and not torch.cuda.is_available()):
        raise fail(ValueError(f"--device {device}: use cpu, or cuda on a machine with a GPU "
                               f"(CUDA available here: {torch.cuda.is_available()})"))
    cfg = load_or_exit(config, overrides)
    try:
        engine, info = load_engine(model, mode=mode, client=_client(model, cfg),  # type: ignore[arg-type]
                                   calibration_shards=data, compile=compile, device=device,
                                   config=cfg)
        console.print(f"model {info.source} ({info.description}, mouth {info.mouth_size})",
                      highlight=False)
        result = dub_video(engine, video, audio, out, model=info, batch_size=batch_size,
                           progress=progress, landmarks=landmarks, console=console,
                           audio_features=audio_features)
    except (ValueError, RuntimeError, MediaError, FileNotFoundError) as exc:
        raise fail(exc) from None
    console.print(result.summary(), highlight=False)
