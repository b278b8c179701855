"""A stage's epochs on the driver's console, read back from the stage's MLflow run.

Rank 0 logs every epoch's metrics to the stage run (:mod:`dinet_platform.training.loop`); the
driver follows that run while ``trainer.fit()`` blocks, prints one line per finished epoch and
moves the step's progress display. Ray Train's own output (and the worker's copy of that line)
goes to the command's log (:mod:`dinet_platform.console_logs`).
"""

from __future__ import annotations

import threading
from types import TracebackType

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from rich.console import Console

import dinet_platform.console_logs as console_logs
from dinet_platform.training.loop import EPOCH_LINE_METRICS, epoch_line


class EpochWatch:
    """``with EpochWatch(...): trainer.fit()``: a line per epoch the run logs meanwhile."""

    def __init__(self, tracking_uri: str, run_id: str, mouth_size: int, epochs: int,
                 console: Console | None = None, interval_s: float = 2.0):
        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self.mouth_size = mouth_size
        self.epochs = epochs
        self.console = console
        self.interval_s = interval_s
        self.last = -1  # the last epoch reported (0-based)
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True,
                                        name=f"epoch-watch-{mouth_size}")

    def __enter__(self) -> EpochWatch:
        done = self._epochs_logged()
        self.last = max(done, default=-1)  # a resumed run: its earlier epochs were reported
        self._show_position()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if exc_type is None:
            self.poll()  # the last epoch may have been logged since the last look

    def _follow(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def _epochs_logged(self) -> list[int]:
        try:
            return [m.step for m in self.client.get_metric_history(self.run_id, "epoch")]
        except (MlflowException, OSError, RuntimeError):  # a store hiccup: look again later
            return []

    def poll(self) -> None:
        """Report every epoch logged since the last report."""
        new = sorted(e for e in set(self._epochs_logged()) if e > self.last)
        if not new:
            return
        histories = {}
        for key in EPOCH_LINE_METRICS:
            try:
                histories[key] = {m.step: m.value
                                  for m in self.client.get_metric_history(self.run_id, key)}
            except (MlflowException, OSError, RuntimeError):
                histories[key] = {}
        for epoch in new:
            metrics = {key: values[epoch] for key, values in histories.items()
                       if epoch in values}
            if "epoch_time_s" in metrics:
                self.times.append(metrics["epoch_time_s"])
            eta = (sum(self.times) / len(self.times) * (self.epochs - epoch - 1)
                   if self.times else float("nan"))
            line = epoch_line(self.mouth_size, epoch, self.epochs, metrics, eta)
            if self.console is not None:  # one line in a pipe or a log; a terminal wraps it
                self.console.print(line, markup=False, highlight=False, soft_wrap=True)
            else:
                console_logs.say(line)
            self.last = epoch
        self._show_position()

    def _show_position(self) -> None:
        done = self.last + 1
        state = f"epoch {done + 1}/{self.epochs}" if done < self.epochs else "checkpoint"
        console_logs.update(f"stage {self.mouth_size}: {state}", completed=done,
                            total=self.epochs)
