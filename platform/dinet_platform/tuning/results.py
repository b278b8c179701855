"""What a sweep produced: one row per trial, the best trial, and how much ASHA saved."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from dinet_platform.config.sweep import SweepConfig
from dinet_platform.files import atomic_path, write_text

METRIC = "val_score"


@dataclass
class TrialRow:
    trial_id: str
    status: str  # "finished", "stopped early" or "failed"
    epochs: int
    score: float | None  # best val_score over its epochs
    params: dict[str, Any]
    error: str = ""


@dataclass
class SweepReport:
    rows: list[TrialRow]
    epochs_per_trial: int
    best_params: dict[str, Any] = field(default_factory=dict)
    best_score: float | None = None

    @property
    def epochs_saved_fraction(self) -> float:
        """Share of the trial-epochs a full-length sweep would run that ASHA did not need."""
        full = len(self.rows) * self.epochs_per_trial
        return 1.0 - sum(row.epochs for row in self.rows) / full if full else 0.0

    def summary_metrics(self) -> dict[str, float]:
        metrics = {
            "trials": float(len(self.rows)),
            "trials_failed": float(sum(r.status == "failed" for r in self.rows)),
            "trials_stopped_early": float(sum(r.status == "stopped early" for r in self.rows)),
            "trial_epochs_saved_fraction": self.epochs_saved_fraction,
        }
        if self.best_score is not None:
            metrics["best_val_score"] = self.best_score
        return metrics

    def write(self, out_dir: Path, best_config_yaml: str) -> Path:
        """results.csv, scores.png and best_config.yaml into ``out_dir``; returns the YAML."""
        out_dir.mkdir(parents=True, exist_ok=True)
        names = sorted({k for row in self.rows for k in row.params})
        with atomic_path(out_dir / "results.csv") as tmp, tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["trial_id", "status", "epochs", METRIC, *names, "error"])
            for row in self.rows:
                writer.writerow([row.trial_id, row.status, row.epochs, row.score,
                                 *(row.params.get(n) for n in names), row.error])
        self._plot(out_dir / "scores.png", names)
        best = out_dir / "best_config.yaml"
        write_text(best, f"# best trial of the sweep: {METRIC} {self.best_score}\n"
                   + best_config_yaml)
        return best

    def _plot(self, path: Path, names: list[str]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        scored = [row for row in self.rows if row.score is not None]
        figure, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
        for axis, name in zip(axes[0], names, strict=True):
            values = [float(row.params[name]) for row in scored]
            colors = ["tab:blue" if row.status == "finished" else "tab:orange" for row in scored]
            axis.scatter(values, [row.score for row in scored], c=colors)
            axis.set_xlabel(name.split(".")[-1], fontsize=8)
            axis.set_ylabel(METRIC, fontsize=8)
        figure.suptitle("trial parameters vs best val_score (orange: stopped early)", fontsize=9)
        figure.tight_layout()
        figure.savefig(path, dpi=90)
        plt.close(figure)

    def table(self) -> Table:
        table = Table(title=f"sweep: {len(self.rows)} trials, "
                      f"{self.epochs_saved_fraction:.0%} of trial-epochs saved by ASHA")
        for column in ("trial", "status", "epochs", METRIC, "params"):
            table.add_column(column)
        for row in sorted(self.rows, key=lambda r: -(r.score or float("-inf"))):
            params = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in row.params.items())
            score = "" if row.score is None else f"{row.score:.4f}"
            table.add_row(row.trial_id, row.status, str(row.epochs), score, params)
        return table


def summarize(results, sweep: SweepConfig, epochs: int) -> SweepReport:
    """A report from a Tune ``ResultGrid``; ``epochs`` is each trial's full length."""
    rows = []
    for result in results:
        trial_id = str((result.metrics or {}).get("trial_id") or Path(result.path or "?").name)
        frame = result.metrics_dataframe
        iterations = int(frame["training_iteration"].max()) if frame is not None and len(
            frame) else 0
        score = float(frame[METRIC].max()) if frame is not None and METRIC in frame else None
        params = {k: v for k, v in (result.config or {}).items() if k in sweep.space}
        if result.error is not None:
            status = "failed"
        elif iterations < epochs:
            status = "stopped early"
        else:
            status = "finished"
        error = " ".join(str(result.error).split())[:500] if result.error is not None else ""
        rows.append(TrialRow(trial_id, status, iterations, score, params, error))
    report = SweepReport(rows=rows, epochs_per_trial=epochs)
    scored = [row for row in rows if row.score is not None]
    if not scored:
        raise RuntimeError("no trial reported a validation score; see the errors in the table:\n"
                           + "\n".join(f"{r.trial_id}: {r.error}" for r in rows))
    best = max(scored, key=lambda row: row.score)
    report.best_params, report.best_score = best.params, best.score
    return report


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
