"""The demo report: one self-contained HTML file from a real tiny pipeline run in MLflow (the
session's trained pipeline, copied into this module's own store)."""

from __future__ import annotations

import base64
import re

import pytest
from dinet_platform.config import load_config
from dinet_platform.evaluation.outputs import format_value, read_report
from dinet_platform.evaluation.runs import run_evaluation
from dinet_platform.pipeline_report import write_report
from dinet_platform.tracking import KIND_TAG, client_for, experiment_id
from dinet_platform.tuning.results import SweepReport, TrialRow

from tests.support import copy_pipeline, merged, use_home, write_config

pytestmark = pytest.mark.ray

PNG = b"\x89PNG\r\n\x1a\n"
IMAGE = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def recorded(trained_pipeline, prepared_dir, tmp_path_factory):
    """A one-stage tiny pipeline (2 epochs, attention maps), its evaluation and a sweep run,
    in a private SQLite store."""
    root = tmp_path_factory.mktemp("report")
    data = merged(trained_pipeline.config, {"evaluation": {"max_frames": 16}})
    with pytest.MonkeyPatch.context() as patch:
        home = use_home(patch, root / "home")
        config = load_config(write_config(root, data, prepared_dir))
        client = client_for(config.tracking)
        pipeline = copy_pipeline(trained_pipeline, client)
        pipeline_run, (stage_run,) = pipeline.run_id, pipeline.stage_run_ids
        evaluation = run_evaluation(
            config, client,
            [("candidate", pipeline_run), ("production", f"runs:/{stage_run}/best_checkpoint")],
            shards=prepared_dir, out_dir=root / "evaluation",
        )
        # A sweep parent run carrying what a sweep logs, written by the sweep's own writer.
        sweep = client.create_run(experiment_id(client, config.tracking.experiment),
                                  run_name="sweep-report", tags={KIND_TAG: "sweep"})
        report = SweepReport(rows=[
            TrialRow("t1", "finished", 2, 0.41, {"loss.temporal.frame_diff": 4.0}),
            TrialRow("t2", "stopped early", 1, 0.37, {"loss.temporal.frame_diff": 9.0}),
        ], epochs_per_trial=2, best_params={"loss.temporal.frame_diff": 4.0}, best_score=0.41)
        report.write(root / "sweep", "name: best\n")
        for path in (root / "sweep").iterdir():
            client.log_artifact(sweep.info.run_id, str(path))
        for key, value in report.summary_metrics().items():
            client.log_metric(sweep.info.run_id, key, value)
        yield {"client": client, "pipeline": pipeline_run, "stage": stage_run,
               "evaluation": evaluation, "sweep": sweep.info.run_id, "root": root,
               "home": home}


def test_report_is_one_self_contained_file_with_every_section(recorded, synth_dir, tmp_path):
    serving = [{"endpoint": "/dub", "requests": 12, "p50_ms": 181.25, "p95_ms": 240.5},
               {"endpoint": "/frames", "requests": 40, "p50_ms": 9.75, "p95_ms": 14.0}]
    path = write_report(recorded["client"], recorded["pipeline"], tmp_path / "r" / "report.html",
                        evaluation_run_id=recorded["evaluation"].run_id,
                        sweep=recorded["sweep"], serving=serving,
                        dubbed=sorted(synth_dir.glob("*.mp4"))[0])
    text = path.read_text()

    # Self-contained: every image is an embedded PNG, nothing is fetched from elsewhere.
    assert not re.search(r'(src|href)="(?!data:)', text)
    images = [base64.b64decode(data) for data in IMAGE.findall(text)]
    assert all(image.startswith(PNG) for image in images)
    # mouth strip, comparison, dubbed frames under the waveform, loss curves, stage 64 sample
    # grid and attention maps, sweep scores
    assert len(images) == 7, len(images)
    # It opens with the verdict, then the mouth over time, generated vs true.
    body = text[text.index("<body>"):]
    assert body.index("class=verdict") < body.index("the mouth over ~1 s") < body.index("<h2>")
    assert "~1 s of its audio above its frames" in text
    assert "stage 64, sample grid" in text and "(epoch_001)" in text  # the last epoch's
    assert "stage 64, attention maps" in text

    # Metrics table: the models and the baselines with the numbers of evaluation.json.
    metrics = read_report(recorded["evaluation"].json_path)["metrics"]
    assert set(metrics) == {"candidate", "production", "paste_reference", "blurred_source",
                            "ground_truth"}
    for entry, values in metrics.items():
        row = re.search(rf"<tr class=\w+><td>{entry}</td>(.*?)</tr>", text)
        assert row, entry
        assert f"<td class=num>{format_value(values['mouth_psnr'])}</td>" in row.group(1)
        assert f"<td class=num>{format_value(values['warp_error'])}</td>" in row.group(1)
    order = [text.index(f"<td>{e}</td>") for e in ("candidate", "production",
                                                    "paste_reference", "ground_truth")]
    assert order == sorted(order)  # models first, then the baselines, then the real video

    # Stage table from the stage run, sweep's best trial from results.csv, serving rows.
    run = recorded["client"].get_run(recorded["stage"])
    assert format_value(run.data.metrics["best_val_mouth_psnr"]) in text
    best = re.search(r"<h3>Best trial</h3><table>(.*?)</table>", text).group(1)
    assert "<td>t1</td>" in best and "<td>4.0</td>" in best and "t2" not in best
    assert "<td>/dub</td><td class=num>12</td><td class=num>181.25</td>" in text
    assert "<th>p95_ms</th>" in text


def test_defaults_and_missing_inputs(recorded, monkeypatch):
    use_home(monkeypatch, recorded["home"])
    path = write_report(recorded["client"], recorded["pipeline"])
    assert path == recorded["home"] / "demo" / "report.html"
    text = path.read_text()
    for missing in ("no evaluation run given", "no sweep in this run",
                    "no serving measurements given"):
        assert missing in text
    assert len(IMAGE.findall(text)) == 3  # loss curves, sample grid, attention maps

    # A stage run is not a pipeline: refused with the reason, nothing written.
    with pytest.raises(ValueError, match="not a pipeline run"):
        write_report(recorded["client"], recorded["stage"], recorded["root"] / "bad.html")
    assert not (recorded["root"] / "bad.html").exists()
    with pytest.raises(ValueError, match="does not exist"):
        write_report(recorded["client"], "0" * 32, recorded["root"] / "bad.html")


def test_held_out_voices_get_their_own_section(recorded, tmp_path):
    evaluation = recorded["evaluation"].run_id
    text = write_report(recorded["client"], recorded["pipeline"], tmp_path / "report.html",
                        evaluation_run_id=evaluation,
                        held_out_voices_run_id=evaluation).read_text()
    first = text.index("<h2>Held-out evaluation: models vs baselines</h2>")
    voices = text.index("<h2>Held-out voices: new speakers in voices no model trained on</h2>")
    assert first < voices
    assert text[voices:].count("<td>paste_reference</td>") == 1  # its own metrics table
    assert "no evaluation run given" not in text
