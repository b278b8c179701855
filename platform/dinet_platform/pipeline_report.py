"""The demo report: one self-contained HTML file built from what MLflow recorded.

Everything comes from the tracking store, so the report can be rebuilt for any pipeline run
later: the evaluation run's ``evaluation.json`` (candidate vs production vs the baselines), the
stage runs' metric histories (loss curves drawn with matplotlib), their sample-grid and
attention-map PNGs, the sweep run's ``results.csv``. Only the serving latencies are passed in,
because they are measured by the caller against a live endpoint. Images are embedded as
base64 PNG: the file can be mailed or attached to a ticket and still shows everything.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dinet_platform.config.schema import GateConfig
from dinet_platform.evaluation.evaluate import BASELINES, GROUND_TRUTH, PASTE_REFERENCE
from dinet_platform.evaluation.outputs import (
    LABELS,
    format_value,
    plot_video_with_audio,
    read_report,
)
from dinet_platform.files import write_text
from dinet_platform.media.opening import MediaError
from dinet_platform.paths import dinet_home
from dinet_platform.tracking import KIND_TAG, PARENT_TAG, STAGE_TAG, find_runs, get_run

TABLE_METRICS = ("mouth_psnr", "mouth_ssim", "outside_psnr", "seam_psnr", "warp_error",
                 "frame_diff_error", "temporal_consistency", "lse_c", "lse_d", "sync_offset",
                 "mouth_open_error_px", "mouth_open_corr")
VALIDATION_CURVES = ("val_mouth_psnr", "val_mouth_ssim", "val_temporal_error", "val_score",
                     "val_audio_gain_db")

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.model td:first-child{font-weight:600}img{max-width:100%;border:1px solid #ddd}
.verdict{font-size:1.2em;padding:.4em .6em;background:#f6f6f0;border-left:4px solid #888}
.muted{color:#777}figure{margin:.5em 0 1.5em}figcaption{color:#555;font-size:.9em}
"""


def default_report_path() -> Path:
    return dinet_home() / "demo" / "report.html"


def write_report(
    client: MlflowClient,
    pipeline_run_id: str,
    out_path: str | Path | None = None,
    *,
    evaluation_run_id: str | None = None,
    sweep: str | None = None,
    serving: Sequence[Mapping[str, Any]] | None = None,
    dubbed: str | Path | None = None,
    held_out_voices_run_id: str | None = None,
) -> Path:
    """Write the HTML report of pipeline ``pipeline_run_id`` (default
    ``$DINET_HOME/demo/report.html``) and return its path.

    ``evaluation_run_id``: an evaluation run (``dinet evaluate``, registry promotion) for the
    metrics table; ``sweep``: the sweep's MLflow parent run id; ``serving``: latency rows
    measured against the endpoint, one mapping per row (column name -> value); ``dubbed``: a
    dubbed mp4, shown as frames under its waveform; ``held_out_voices_run_id``: an evaluation
    of the same model on speakers in voices no model trained on (its own section). Sections
    whose input is missing say so instead of failing.
    """
    pipeline = get_run(client, pipeline_run_id)
    if pipeline.data.tags.get(KIND_TAG) != "pipeline":
        raise ValueError(f"MLflow run {pipeline_run_id} is not a pipeline run (dinet.kind="
                         f"{pipeline.data.tags.get(KIND_TAG)!r})")
    stages = sorted(
        find_runs(client, pipeline.info.experiment_id,
                  {PARENT_TAG: pipeline_run_id, KIND_TAG: "stage"}),
        key=lambda run: int(run.data.tags[STAGE_TAG]),
    )
    title = f"DINet platform report: {pipeline.info.run_name}"
    parts = [f"<h1>{_e(title)}</h1>",
             f"<p class=muted>pipeline run {_e(pipeline_run_id)} in {_e(client.tracking_uri)}; "
             f"stages {_e(', '.join(r.data.tags[STAGE_TAG] for r in stages) or 'none')}</p>"]
    with tempfile.TemporaryDirectory(prefix="dinet-report-") as tmp:
        scratch = Path(tmp)
        parts += _evaluation_section(client, evaluation_run_id, scratch)
        if held_out_voices_run_id:
            parts += _evaluation_section(client, held_out_voices_run_id, scratch,
                                         "Held-out voices: new speakers in voices no model "
                                         "trained on")
        parts += _dubbed_section(dubbed, scratch)
        parts += _stages_section(client, stages, scratch)
        parts += _sweep_section(client, sweep, scratch)
    parts += _serving_section(serving)
    document = (f"<!doctype html><html><head><meta charset=utf-8><title>{_e(title)}</title>"
                f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    return write_text(Path(out_path) if out_path else default_report_path(), document)


# ------------------------------------------------------------------------------ sections


def _evaluation_section(client: MlflowClient, run_id: str | None, scratch: Path,
                        title: str = "Held-out evaluation: models vs baselines") -> list[str]:
    parts = [f"<h2>{_e(title)}</h2>"]
    if not run_id:
        return [*parts, "<p class=muted>no evaluation run given</p>"]
    run = get_run(client, run_id)
    report_file = _download(client, run_id, "evaluation.json", scratch)
    if report_file is not None:
        report = read_report(report_file)
        metrics: dict[str, dict[str, float]] = report["metrics"]
        info = report.get("info", {})
        caption = (f"mouth {report.get('mouth_size')}, {len(info.get('videos', []))} held-out "
                   f"videos, {info.get('frames', '?')} frames; sync expert: "
                   f"{info.get('sync_expert_source', 'none')}")
    else:  # the run's logged metrics (<entry>/<metric>) when the JSON is gone
        metrics = {}
        for key, value in run.data.metrics.items():
            entry, _, name = key.partition("/")
            metrics.setdefault(entry, {})[name] = value
        caption = "from the run's logged metrics"
    parts.insert(0, _verdict(metrics))
    entries = _ordered_entries(metrics)
    columns = [m for m in TABLE_METRICS if any(m in metrics[e] for e in entries)]
    rows = []
    for entry in entries:
        kind = "model" if entry not in (*BASELINES, GROUND_TRUTH) else "baseline"
        cells = "".join(f"<td class=num>{_e(format_value(metrics[entry].get(m)))}</td>"
                        for m in columns)
        rows.append(f"<tr class={kind}><td>{_e(entry)}</td>{cells}</tr>")
    header = "".join(f"<th>{_e(LABELS.get(m, m))}</th>" for m in columns)
    parts += [f"<p class=muted>evaluation run {_e(run_id)}: {_e(caption)}</p>",
              f"<table><tr><th>entry</th>{header}</tr>{''.join(rows)}</table>",
              "<p class=muted>paste_reference: a mouth that never moves; blurred_source: true "
              "motion, detail lost; ground_truth: the real video (sync ceiling).</p>"]
    strip = _download(client, run_id, "mouth_strip.png", scratch)
    if strip is not None:
        parts.insert(1, _figure(strip.read_bytes(), "the mouth over ~1 s of a held-out video: "
                                "the real one on top, each model and baseline below"))
    comparison = _download(client, run_id, "comparison.png", scratch)
    if comparison is not None:
        parts.append(_figure(comparison.read_bytes(), "sample mouth per entry and metrics"))
    return parts


def _verdict(metrics: Mapping[str, Mapping[str, float]]) -> str:
    """The report's first line: does the evaluated model beat the still-mouth baseline?"""
    models = [e for e in _ordered_entries(metrics) if e not in (*BASELINES, GROUND_TRUTH)]
    paste = metrics.get(PASTE_REFERENCE)
    if not models or paste is None:
        return "<p class=verdict>No verdict: the evaluation has no model and baseline.</p>"
    name, model = models[0], metrics[models[0]]
    gain = model["mouth_psnr"] - paste["mouth_psnr"]
    corr = model.get("mouth_open_corr")
    follows = corr is not None and corr >= GateConfig().min_mouth_open_corr
    beats = gain >= GateConfig().min_mouth_psnr_gain_db and follows
    words = "beats" if beats else "does NOT beat"
    detail = f"mouth PSNR {model['mouth_psnr']:.1f} dB vs {paste['mouth_psnr']:.1f} ({gain:+.1f})"
    if corr is not None:
        detail += (f"; mouth opening follows the true one with r = {corr:.2f} (still mouth: "
                   f"{paste.get('mouth_open_corr', 0.0):.2f})")
    return (f"<p class=verdict><b>{_e(name)} {words} the baselines</b> on held-out videos: "
            f"{_e(detail)}.</p>")


def _ordered_entries(metrics: Mapping[str, Any]) -> list[str]:
    models = [e for e in metrics if e not in (*BASELINES, GROUND_TRUTH)]
    return models + [e for e in (*BASELINES, GROUND_TRUTH) if e in metrics]


def _dubbed_section(dubbed: str | Path | None, scratch: Path) -> list[str]:
    if dubbed is None:
        return []
    parts = ["<h2>The dubbed video</h2>"]
    try:
        png = plot_video_with_audio(dubbed, scratch / "dubbed.png")
    except MediaError as exc:
        return [*parts, f"<p class=muted>{_e(dubbed)} cannot be shown: {_e(exc)}</p>"]
    return [*parts, _figure(png.read_bytes(), f"{dubbed}: ~1 s of its audio above its frames")]


def _stages_section(client: MlflowClient, stages: list, scratch: Path) -> list[str]:
    parts = ["<h2>Training stages</h2>"]
    if not stages:
        return [*parts, "<p class=muted>no stage runs in this pipeline</p>"]
    rows = []
    for run in stages:
        m = run.data.metrics
        rows.append(
            f"<tr><td>{_e(run.data.tags[STAGE_TAG])}</td><td>{_e(run.info.status)}</td>"
            + "".join(f"<td class=num>{_e(format_value(m.get(k)))}</td>" for k in (
                "best_val_score", "best_val_mouth_psnr", "best_val_mouth_ssim",
                "best_val_temporal_error"))
            + f"<td>{_e(run.info.run_id)}</td></tr>")
    parts.append("<table><tr><th>mouth</th><th>status</th><th>best val score</th>"
                 "<th>mouth PSNR (dB)</th><th>mouth SSIM</th><th>temporal error</th>"
                 f"<th>MLflow run</th></tr>{''.join(rows)}</table>")
    parts.append(_figure(_loss_curves(client, stages),
                         "per stage: training losses per epoch (left, log scale) and "
                         "validation metrics (right)"))
    for run in stages:
        stage = run.data.tags[STAGE_TAG]
        for folder, what in (("samples", "sample grid: input / generated / target"),
                             ("attention", "attention maps")):
            latest = _latest_png(client, run.info.run_id, folder)
            if latest is None:
                continue
            local = _download(client, run.info.run_id, latest, scratch / stage)
            if local is not None:
                parts.append(_figure(local.read_bytes(),
                                     f"stage {stage}, {what} ({Path(latest).stem})"))
    return parts


def _loss_curves(client: MlflowClient, stages: list) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(stages), 2, figsize=(11, 3.2 * len(stages)), dpi=80,
                                squeeze=False)
    for (train_axis, val_axis), run in zip(axes, stages, strict=True):
        stage = run.data.tags[STAGE_TAG]
        names = sorted(k for k in run.data.metrics if k.startswith("train_"))
        for name in names:
            steps, values = _history(client, run.info.run_id, name)
            if values and all(v > 0 for v in values):
                train_axis.plot(steps, values, marker="o", label=name.removeprefix("train_"))
        train_axis.set_yscale("log")
        train_axis.set_title(f"stage {stage}: training losses", fontsize=10)
        for name in VALIDATION_CURVES:
            steps, values = _history(client, run.info.run_id, name)
            if values:
                val_axis.plot(steps, values, marker="o", label=name.removeprefix("val_"))
        val_axis.set_title(f"stage {stage}: validation", fontsize=10)
        for axis in (train_axis, val_axis):
            axis.set_xlabel("epoch", fontsize=8)
            axis.tick_params(labelsize=7)
            if axis.get_lines():
                axis.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def _history(client: MlflowClient, run_id: str, name: str) -> tuple[list[int], list[float]]:
    points = sorted(client.get_metric_history(run_id, name), key=lambda m: (m.step, m.timestamp))
    latest = {m.step: m.value for m in points}  # a resumed epoch's last value wins
    finite = [(s, v) for s, v in sorted(latest.items()) if math.isfinite(v)]
    return [s for s, _ in finite], [v for _, v in finite]


def _sweep_section(client: MlflowClient, sweep: str | None, scratch: Path) -> list[str]:
    parts = ["<h2>Sweep</h2>"]
    if not sweep:
        return [*parts, "<p class=muted>no sweep in this run</p>"]
    run = get_run(client, sweep)
    m = run.data.metrics
    summary = ", ".join(f"{k} {format_value(m[k])}" for k in (
        "trials", "trials_stopped_early", "trials_failed", "trial_epochs_saved_fraction",
        "best_val_score") if k in m)
    parts.append(f"<p class=muted>sweep run {_e(sweep)}: {_e(summary)}</p>")
    results = _download(client, sweep, "results.csv", scratch / "sweep")
    if results is not None:
        with results.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        scored = [r for r in rows if r.get("val_score") not in (None, "", "None")]
        if scored:
            best = max(scored, key=lambda r: float(r["val_score"]))
            skip = {"error"}
            cells = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>"
                            for k, v in best.items() if k not in skip)
            parts.append(f"<h3>Best trial</h3><table>{cells}</table>")
        else:
            parts.append("<p class=muted>no trial finished with a score</p>")
    scores = _download(client, sweep, "scores.png", scratch / "sweep")
    if scores is not None:
        parts.append(_figure(scores.read_bytes(), "each searched parameter against the score"))
    return parts


def _serving_section(serving: Sequence[Mapping[str, Any]] | None) -> list[str]:
    parts = ["<h2>Serving latency</h2>"]
    if not serving:
        return [*parts, "<p class=muted>no serving measurements given</p>"]
    columns: list[str] = []
    for row in serving:
        columns += [k for k in row if k not in columns]
    body = "".join(
        "<tr>" + "".join(_cell(row.get(c)) for c in columns) + "</tr>" for row in serving)
    header = "".join(f"<th>{_e(c)}</th>" for c in columns)
    return [*parts, f"<table><tr>{header}</tr>{body}</table>"]


# ------------------------------------------------------------------------------ helpers


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"<td class=num>{_e(format_value(value))}</td>"
    if isinstance(value, int):
        return f"<td class=num>{value}</td>"
    return f"<td>{_e('-' if value is None else value)}</td>"


def _figure(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f"<figure><img alt=\"{_e(caption)}\" src=\"data:image/png;base64,{data}\">"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _latest_png(client: MlflowClient, run_id: str, folder: str) -> str | None:
    pngs = sorted(a.path for a in client.list_artifacts(run_id, folder)
                  if not a.is_dir and a.path.endswith(".png"))
    return pngs[-1] if pngs else None  # epoch_NNN.png: the last epoch sorts last


def _download(client: MlflowClient, run_id: str, path: str, scratch: Path) -> Path | None:
    """The artifact as a local file, or None when the run has no such artifact."""
    parent, _, name = path.rpartition("/")
    if name not in {Path(a.path).name for a in client.list_artifacts(run_id, parent or None)}:
        return None
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        return Path(client.download_artifacts(run_id, path, str(scratch)))
    except (MlflowException, OSError):
        return None
