"""The main job behind ``make demo``: the platform end to end at the demo config.

Synthetic talking faces -> Ray Data shards -> every stage trained as its own Ray Train run
(MLflow parent + child runs) -> a short Ray Tune sweep -> the sync expert -> evaluation against
baselines -> registry: register, promote through the gates -> int8 optimization -> Ray Serve
over HTTP (an avatar, a dubbed held-out clip) -> ``report.html``.

Every step is idempotent, so a second run reuses what is still valid: the same videos and
shards, the pipeline run whose stages already finished, the finished sweep, the registered
version, the sync expert already in production.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.table import Table

import dinet_platform.console_logs as console_logs
from dinet_platform.config import DINetConfig
from dinet_platform.config.sweep import load_sweep_config
from dinet_platform.data.prepare import prepare_dataset
from dinet_platform.paths import PROJECT_ROOT, dinet_home, shards_path
from dinet_platform.ray_runtime import ray_session
from dinet_platform.synth.videos import synthesize_dataset
from dinet_platform.tracking import client_for
from dinet_platform.training.pipeline import run_pipeline

DEMO_VIDEOS = 8
DEMO_SECONDS = 4.0
HELD_OUT_VOICE_VIDEOS = 3
HELD_OUT_VOICE_SEED = 1000
"""Added to the training seed: identities neither the base model nor the demo trained on."""
DEMO_SWEEP = PROJECT_ROOT / "configs" / "demo_sweep.yaml"
BASE_MODEL = PROJECT_ROOT / "models" / "base"
"""The base model the demo fine-tunes (``configs/base.yaml``; provenance in the folder):
learning to follow the audio from scratch takes ~2,000 steps, 40 times the demo's budget."""


class DemoRefused(RuntimeError):
    """The demo's model failed the promotion gates: the demo stops before serving it."""


@dataclass
class DemoState:
    """What the steps produced, for the later steps and the report."""

    config: DINetConfig
    client: MlflowClient
    home: Path
    shards: Path
    videos: list[Path] = field(default_factory=list)
    pipeline_run: str = ""
    sweep_run: str | None = None
    version: int | None = None
    evaluation_run: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def out_dir(self) -> Path:
        return self.home / "demo"


def _step(state: DemoState, console: Console, title: str, action: Callable[[], None]) -> None:
    heading = f"{len(state.timings) + 1}. {title}"
    console.rule(heading)
    console_logs.mark(heading)  # where the step starts in the log
    started = time.perf_counter()
    with console_logs.progress(console, title):
        action()
    state.timings[title] = time.perf_counter() - started


def run_demo(config: DINetConfig, console: Console, sweep_config: Path = DEMO_SWEEP) -> DemoState:
    started = time.perf_counter()
    home = dinet_home()
    state = DemoState(config, client_for(config.tracking), home, shards_path(config.data.shards))

    _step(state, console, "synthetic talking faces", lambda: synthesize(state, console))
    with ray_session():
        _step(state, console, "preprocessing (Ray Data -> Parquet shards)",
              lambda: prepare(state, console))
        _step(state, console, "multiscale training (one Ray Train run per stage)",
              lambda: train(state, console))
        _step(state, console, "sweep (Ray Tune, ASHA + Optuna)",
              lambda: sweep(state, console, sweep_config))
    _step(state, console, "sync expert", lambda: sync_expert(state, console))
    _step(state, console, "evaluate, register, promote through the gates",
          lambda: register_and_promote(state, console))
    if "refused" in state.outputs:
        # Nothing holds @production: serving it would serve a model that does not work.
        _step(state, console, "report", lambda: report(state, console))
        raise DemoRefused(f"the trained model does not beat the baselines, so it was not "
                          f"promoted and is not served: {state.outputs['refused']}. "
                          f"Report: {state.outputs.get('report')}")
    _step(state, console, "held-out voices: sentences in voices no model trained on",
          lambda: evaluate_held_out_voices(state, console))
    _step(state, console, "int8 optimization (registered as its own version)",
          lambda: optimize_int8(state, console))
    _step(state, console, "Ray Serve over HTTP: an avatar, a dubbed held-out clip",
          lambda: serve_and_dub(state, console))
    _step(state, console, "report", lambda: report(state, console))

    console.rule("done")
    table = Table("step", "seconds", title="demo timings")
    for title, seconds in state.timings.items():
        table.add_row(title, f"{seconds:.0f}")
    console.print(table)
    console.print(f"finished in {time.perf_counter() - started:.0f}s; everything is under {home}")
    console.print(f"dubbed held-out clip (with audio): {state.outputs.get('dubbed')}")
    console.print(f"report: {state.outputs.get('report')}")
    console.print(f"pipeline MLflow run: {state.pipeline_run}")
    console.print(f"browse the runs: mlflow ui --backend-store-uri {state.client.tracking_uri}")
    return state


def synthesize(state: DemoState, console: Console) -> None:
    """Real speech (espeak-ng sentences, train voices) for training and the gates, plus clips
    of new identities speaking in the held-out voices, for the held-out-voice evaluation."""
    videos = state.out_dir / "videos"
    seed = state.config.training.seed
    state.videos = synthesize_dataset(videos, DEMO_VIDEOS, DEMO_SECONDS, seed=seed,
                                      speech="tts")
    synthesize_dataset(held_out_voice_dir(state), HELD_OUT_VOICE_VIDEOS, DEMO_SECONDS,
                       seed=HELD_OUT_VOICE_SEED + seed, speech="tts", voice_pool="held-out")
    console.print(f"{len(state.videos)} clips of {DEMO_SECONDS:g}s of speech in {videos}; "
                  f"{HELD_OUT_VOICE_VIDEOS} in held-out voices in {held_out_voice_dir(state)}")


def held_out_voice_dir(state: DemoState) -> Path:
    return state.out_dir / "held_out_voices"


def held_out_voice_shards(state: DemoState) -> Path:
    return state.shards.parent / f"{state.shards.name}-held-out-voices"


def prepare(state: DemoState, console: Console) -> None:
    largest = max(stage.mouth_size for stage in state.config.stages)
    report = prepare_dataset(state.out_dir / "videos", state.shards, config=state.config.data,
                             mouth_size=largest, log=console.print)
    counts = report.manifest["counts"]
    console.print(f"{counts['videos_ok']} videos ({counts['train_videos']} train, "
                  f"{counts['val_videos']} held out), {counts['frames']} frames in {state.shards}")
    voices = prepare_dataset(held_out_voice_dir(state), held_out_voice_shards(state),
                             config=state.config.data, mouth_size=largest, log=console.print)
    console.print(f"{voices.manifest['counts']['videos_ok']} held-out-voice videos in "
                  f"{held_out_voice_shards(state)}")


def train(state: DemoState, console: Console) -> None:
    console.print(f"starting from the base model {BASE_MODEL} (see its provenance.json)")
    result = run_pipeline(state.config, state.client, shards=state.shards,
                          init_from=str(BASE_MODEL), console=console)
    state.pipeline_run = result.run_id


def sweep(state: DemoState, console: Console, path: Path) -> None:
    from dinet_platform.tuning.sweep import run_sweep

    sweep_config, base = load_sweep_config(path)
    result = run_sweep(sweep_config, base, state.client, console=console)
    state.sweep_run = result.run_id
    state.outputs["sweep"] = {"run_id": result.run_id, "best_params": result.report.best_params,
                              "best_score": result.report.best_score,
                              "best_config": str(result.best_config_path)}


def sync_expert(state: DemoState, console: Console) -> None:
    from dinet_platform.evaluation.runs import SYNC_ALIAS, run_train_syncnet

    configured = state.config.evaluation.sync_expert
    if configured:
        console.print(f"using the configured sync expert {configured} (evaluation.sync_expert)")
        return
    name = state.config.syncnet.registered_model
    try:
        version = state.client.get_model_version_by_alias(name, SYNC_ALIAS)
        console.print(f"reusing the sync expert {name} version {version.version} "
                      f"(@{SYNC_ALIAS})")
        return
    except MlflowException:
        pass
    outcome = run_train_syncnet(state.config, state.client, shards=state.shards,
                                console=console)
    console.print(f"sync expert: held-out accuracy {outcome.metrics['val_accuracy']:.3f}, "
                  f"registered as {outcome.uri}"
                  + ("" if outcome.production else " (below min_accuracy: not used)"))


def register_and_promote(state: DemoState, console: Console) -> None:
    from dinet_platform.promotion.gates import summary
    from dinet_platform.promotion.workflow import promote, register_model
    from dinet_platform.registry.versions import PRODUCTION, alias_holder

    registration = register_model(state.config, state.client, state.pipeline_run,
                                  shards=state.shards, console=console)
    state.version = registration.version
    name = registration.name
    if registration.evaluation is not None:
        state.evaluation_run = registration.evaluation.run_id
    console.print(f"registered {name} version {registration.version} (@candidate)")
    if alias_holder(state.client, name, PRODUCTION) == registration.version:
        # A re-run: report the evaluation that promoted it (or registered it).
        tags = state.client.get_model_version(name, str(registration.version)).tags
        state.evaluation_run = (tags.get(f"dinet.gates.{PRODUCTION}.eval_run")
                                or tags.get("dinet.eval_run") or state.evaluation_run)
        console.print(f"version {registration.version} already holds @{PRODUCTION}")
        return
    outcome = promote(state.config, state.client, registration.version, PRODUCTION,
                      shards=state.shards, console=console)
    state.evaluation_run = outcome.evaluation.run_id if outcome.evaluation else None
    verdict = "promoted" if outcome.moved else "refused by the gates"
    console.print(f"{name} version {registration.version} -> @{PRODUCTION}: {verdict}; "
                  f"{summary(outcome.gates)}")
    if not outcome.moved:
        state.outputs["refused"] = summary([g for g in outcome.gates if not g.passed])


def evaluate_held_out_voices(state: DemoState, console: Console) -> None:
    """The promoted model on new identities speaking in voices (accents and espeak variants)
    that neither it nor the base model heard, against the same baselines as the gates."""
    from dinet_platform.evaluation.runs import run_evaluation

    name = state.config.tracking.registered_model
    evaluation = state.config.evaluation.model_copy(update={"split": "all"})
    config = state.config.model_copy(update={"evaluation": evaluation})
    outcome = run_evaluation(config, state.client, [("production", f"models:/{name}/"
                                                     f"{state.version}")],
                             shards=held_out_voice_shards(state),
                             tags={"dinet.evaluation.set": "held-out voices"}, console=console)
    metrics = outcome.result.metrics
    state.outputs["held_out_voices"] = {"run_id": outcome.run_id, "metrics": metrics}
    model, paste = metrics["production"], metrics["paste_reference"]
    console.print(f"held-out voices: mouth PSNR {model['mouth_psnr']:.2f} dB (paste_reference "
                  f"{paste['mouth_psnr']:.2f}), mouth_open_corr "
                  f"{model.get('mouth_open_corr', float('nan')):.2f} (paste "
                  f"{paste.get('mouth_open_corr', float('nan')):.2f}); run {outcome.run_id}")


def optimize_int8(state: DemoState, console: Console) -> None:
    """Static int8 of the production version, measured against fp32 on real frames and
    registered as a version of its own (Serve loads ``@production`` and quantizes the same way
    on load; this artifact is what a torch-only deployment would ship)."""
    from dinet_platform.registry.optimizing import export_optimized

    name = state.config.tracking.registered_model
    outcome = export_optimized(f"models:/{name}/{state.version}", "static_int8",
                                 client=state.client, data=state.shards,
                                 register=state.config)
    state.outputs["optimized"] = {
        "version": outcome.registered.version, "psnr_vs_fp32": outcome.psnr_vs_fp32,
        "artifact": str(outcome.artifact), "engine": outcome.engine_description}
    console.print(f"static int8 of version {state.version}: {outcome.psnr_vs_fp32:.1f} dB PSNR vs "
                  f"fp32 on {outcome.frames} real frames; registered as {name} version "
                  f"{outcome.registered.version} ({outcome.artifact})")


def held_out_videos(shards: Path) -> list[Path]:
    from dinet_platform.data.shards import load_manifest

    return [Path(v["video"]) for v in load_manifest(shards)["videos"] if v["split"] == "val"]


def serve_and_dub(state: DemoState, console: Console) -> None:
    """Serve ``@production`` on the local Ray, make an avatar of one held-out clip and dub it
    with the speech of a held-out voice, all over HTTP; time the live frames route."""
    import secrets

    from dinet_platform.ray_runtime import free_port
    from dinet_platform.serving.client import LipSyncClient
    from dinet_platform.serving.local import serve_app
    from dinet_platform.serving.settings import load_serve_config

    face = held_out_videos(state.shards)[0]
    speech = held_out_videos(held_out_voice_shards(state))[0]
    token = secrets.token_urlsafe(24)
    token_file = state.out_dir / "api_token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    os.environ["DINET_API_TOKEN_FILE"] = str(token_file)
    os.environ.pop("DINET_API_TOKEN", None)
    port = free_port()
    settings = load_serve_config(PROJECT_ROOT / "configs" / "serve.yaml", {"serving": {
        "host": "127.0.0.1", "port": port, "model_name": state.config.tracking.registered_model,
        "calibration_shards": str(state.shards)}, "tracking": {
        "tracking_uri": state.client.tracking_uri}})
    url = f"http://127.0.0.1:{port}"
    with ray_session(), serve_app(settings), LipSyncClient(url, token, timeout=600) as client:
        _wait_ready(client, console)
        served = client.model()["model"]
        console.print(f"serving {served['name']} version {served['version']} "
                      f"(@{served['alias']}, {served['mode']}) at {url}")
        avatar = client.create_avatar(face, _landmarks(face))
        console.print(f"avatar {avatar} from {face.name}")
        state.outputs["serving"] = measure_frames_route(client, avatar, speech, state)
        out = client.dub(speech, state.out_dir / "dubbed.mp4", avatar_id=avatar)
        state.outputs["dubbed"] = str(out)
        console.print(f"dubbed {face.name} with the speech of {speech.name}: {out}")


def _landmarks(video: Path) -> Path | None:
    csv = video.with_suffix(".csv")
    return csv if csv.is_file() else None


def _wait_ready(client: Any, console: Console, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    # In the step's progress display (a status of its own would be a second live display).
    console_logs.update("waiting for the model deployment (int8 calibration on real frames)")
    while not client.ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"Serve did not become ready in {timeout_s:.0f}s")
        time.sleep(1.0)
    console_logs.update("calling the deployment over HTTP")


def measure_frames_route(client: Any, avatar: str, speech: Path, state: DemoState,
                         window: int = 8, requests: int = 8) -> list[dict[str, Any]]:
    """Latency of ``/v1/avatars/{id}/frames`` for ``window``-frame audio windows, one caller
    and then ``requests`` concurrent callers (which Serve batches)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from dinet_platform.runtime.dub import load_speech

    features = load_speech(speech, state.config.data).features
    windows = [features[i * window:(i + 1) * window] for i in range(requests)]
    windows = [w for w in windows if len(w) == window]

    def call(index: int) -> float:
        started = time.perf_counter()
        client.frames(avatar, windows[index], start=index * window)
        return time.perf_counter() - started

    call(0)  # warm-up: the replica builds the avatar's reference features once
    rows = []
    for concurrency in (1, len(windows)):
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            latencies = list(pool.map(call, range(len(windows))))
        elapsed = time.perf_counter() - started
        rows.append({"concurrency": concurrency, "requests": len(windows),
                     "frames_per_request": window,
                     "frames_per_s": round(len(windows) * window / elapsed, 1),
                     "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
                     "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1)})
    return rows


def report(state: DemoState, console: Console) -> None:
    from dinet_platform.pipeline_report import write_report

    path = write_report(state.client, state.pipeline_run, state.out_dir / "report.html",
                        evaluation_run_id=state.evaluation_run, sweep=state.sweep_run,
                        serving=state.outputs.get("serving"),
                        dubbed=state.outputs.get("dubbed"),
                        held_out_voices_run_id=state.outputs.get("held_out_voices", {}
                                                                 ).get("run_id"))
    state.outputs["report"] = str(path)
    console.print(f"report: {path}")
