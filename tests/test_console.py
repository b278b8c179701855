"""The quiet console: Ray's and MLflow's output goes to a log file under ``$DINET_HOME/logs``,
the platform's lines stay on the console, and a failure shows its cause (the error, the log's
last lines and its path) without ``--verbose``."""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
import subprocess
import sys

import dinet_platform.console_logs as console_logs
import pytest
from rich.console import Console
from typer.testing import CliRunner

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def not_verbose(monkeypatch):
    monkeypatch.delenv(console_logs.VERBOSE_ENV, raising=False)


def _console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200, color_system=None), buffer


def _the_log(home) -> str:
    (path,) = (home / "logs").glob("*-step.log")
    return path.read_text()


def test_everything_the_process_prints_goes_to_the_log_and_the_console_keeps_its_lines(home):
    console, shown = _console()
    # A handler made before the capture holds the stream it was given (Ray's and MLflow's
    # loggers are set up at import, with the sys.stderr of then): file descriptor 2.
    handler = logging.StreamHandler(os.fdopen(2, "w", buffering=1, closefd=False))
    logger = logging.getLogger("tests.console.ray-like")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with console_logs.captured(console, "step") as path:
            print("python print")
            print("python stderr", file=sys.stderr)
            os.write(1, b"fd 1 write\n")
            os.write(2, b"fd 2 write\n")
            logger.warning("a library logger")
            subprocess.run([sys.executable, "-c", "print('child process')"], check=True)
            console.print("the platform's own line")
    finally:
        logger.removeHandler(handler)
        handler.close()
    log = _the_log(home)
    for text in ("python print", "python stderr", "fd 1 write", "fd 2 write",
                 "a library logger", "child process"):
        assert text in log
        assert text not in shown.getvalue()
    assert "the platform's own line" in shown.getvalue()
    assert "the platform's own line" not in log
    assert path is not None and path.parent == home / "logs"
    assert str(path) in shown.getvalue()  # its path, printed once when the step starts
    assert shown.getvalue().count(str(path)) == 1
    # Everything is back where it was.
    assert sys.stdout is not None and "captured" not in repr(sys.stdout)
    assert console_logs.log_path() is None


def test_a_failure_shows_the_error_the_logs_last_lines_and_its_path(home, capfd):
    console, shown = _console()
    with pytest.raises(RuntimeError, match="worker died"), \
            console_logs.captured(console, "step") as path:
        for number in range(1, 31):
            print(f"library line {number:02d}")
        raise RuntimeError("worker died")
    out = shown.getvalue()
    tail = [f"library line {n:02d}" for n in range(11, 31)]
    assert all(line in out for line in tail), out
    assert "library line 10" not in out  # only the last 20 lines of the log
    assert f"full log: {path}" in out
    log = path.read_text()
    assert "library line 01" in log and "RuntimeError: worker died" in log  # the traceback
    # File descriptors 1 and 2 point where they did before.
    os.write(1, b"after the step\n")
    assert "after the step" in capfd.readouterr().out


def test_ctrl_c_and_a_chosen_exit_status_print_no_tail(home):
    console, shown = _console()
    with pytest.raises(KeyboardInterrupt), console_logs.captured(console, "step"):
        print("noise")
        raise KeyboardInterrupt
    assert "noise" not in shown.getvalue() and "log:" in shown.getvalue()


def test_verbose_prints_everything_and_writes_no_log(home, capfd, monkeypatch):
    monkeypatch.setenv(console_logs.VERBOSE_ENV, "1")
    console, _ = _console()
    with console_logs.captured(console, "step") as path:
        print("straight to stdout")
    assert path is None
    assert "straight to stdout" in capfd.readouterr().out
    assert not (home / "logs").exists()


def test_tail_keeps_what_a_progress_bar_showed_last_without_colour_codes(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("first\n\nDownloading: 0%\rDownloading: 50%\rDownloading: 100%\n"
                   "last\x1b[32m [repeated 3x]\x1b[0m\n")
    assert console_logs.tail(log, 2) == ["Downloading: 100%", "last [repeated 3x]"]
    assert console_logs.tail(log) == ["first", "Downloading: 100%", "last [repeated 3x]"]


def test_progress_nests_and_lines_go_above_it():
    buffer = io.StringIO()
    console = Console(file=buffer, width=120, force_terminal=True, color_system=None)
    with console_logs.progress(console, "outer step", total=3):
        with console_logs.progress(console, "inner stage", total=2):
            console_logs.update(completed=1)
            console_logs.say("a platform line")
        console_logs.update(advance=1)
    assert "a platform line" in buffer.getvalue()
    console_logs.update("nothing active: a no-op")


def test_the_cli_fails_with_the_error_and_the_log_tail(home):
    from dinet_platform.cli import app

    result = CliRunner().invoke(app, ["train", "--config", "configs/demo.yaml",
                                      "--shards", str(home / "missing")])
    assert result.exit_code == 2, result.output
    assert "error: training data" in result.output
    match = re.search(r"full log: (\S+\.log)", result.output)
    assert match, result.output
    log = match.group(1)
    assert log.startswith(str(home / "logs"))
    assert os.path.isfile(log)
    # MLflow's own lines (creating its store) are in the log, shown here as its tail.
    with open(log) as file:
        assert "mlflow" in file.read().lower()
    assert "Ray, MLflow and worker output:" in result.output


def test_the_sweep_prints_a_line_per_trial_and_pickles_with_the_tuner_state():
    from types import SimpleNamespace

    from dinet_platform.tuning.sweep import TrialProgress

    callback = pickle.loads(pickle.dumps(TrialProgress(2, 2)))
    assert (callback.total, callback.epochs) == (2, 2)
    first, second = (SimpleNamespace(trial_id=name, status="RUNNING", config={
        "loss.temporal.frame_diff": 0.5}, last_result={"val_score": 1.25,
                                                       "training_iteration": epochs})
        for name, epochs in (("aaa", 1), ("bbb", 2)))
    console, shown = _console()
    with console_logs.progress(console, "sweep", total=2):
        callback.on_trial_complete(1, [first, second], first)  # Tune marks it afterwards
        first.status = "TERMINATED"
        callback.on_trial_complete(2, [first, second], second)
    assert shown.getvalue().splitlines() == [
        "trial 1/2 aaa: frame_diff=0.5: val_score 1.250 after 1/2 epoch(s) (stopped early by "
        "ASHA)",
        "trial 2/2 bbb: frame_diff=0.5: val_score 1.250 after 2/2 epoch(s)"]


def test_the_driver_prints_each_epoch_the_stage_run_logs(home):
    from dinet_platform.training.progress import EpochWatch
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    console, shown = _console()
    with EpochWatch(uri, run_id, 64, epochs=2, console=console, interval_s=60) as watch:
        for epoch in (0, 1):
            client.log_batch(run_id, metrics=[
                Metric(key, value, 0, epoch) for key, value in
                {"epoch": epoch, "train_g_total": 0.5, "val_mouth_psnr": 20.0 + epoch,
                 "val_mouth_ssim": 0.8, "val_temporal_error": 0.01, "epoch_time_s": 3.0}.items()])
            watch.poll()
    lines = shown.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["[stage 64] epoch 1/2",
                                                        "[stage 64] epoch 2/2"]
    assert "mouth PSNR 21.00 dB" in lines[1]
