"""Ray Tune sweeps over the temporal and attention loss weights.

Each trial is a driver function that applies its sampled parameters to the base config and
builds and fits the *same* TorchTrainer a pipeline stage uses (``make_trainer``), reporting to
Tune through ``TuneReportCallback`` (the Ray 2.60 Tune + Train pattern). ASHA stops weak trials
early on the per-epoch ``val_score`` (see :mod:`dinet_platform.training.validation`); Optuna's
TPE proposes the next trials from the finished ones. MLflow gets a sweep parent run and, through
Ray's ``MLflowLoggerCallback`` on the Tuner, one child run per trial with its params and
per-epoch metrics. At the end the best trial's config is written as a ready-to-train YAML, with
a results table (CSV) and a scatter plot of each parameter against the score.

A sweep is identified by a hash of its sweep config, base config and data: re-running the same
command after an interruption restores the Tune experiment (``Tuner.restore``) and continues.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.tune as tune
from mlflow.tracking import MlflowClient
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from rich.console import Console

import dinet_platform.console_logs as console_logs
from dinet_platform.config import DINetConfig, dump_config
from dinet_platform.config.sweep import Distribution, SweepConfig, trial_config
from dinet_platform.data.shards import load_manifest
from dinet_platform.paths import dinet_home, ray_storage_path, shards_path
from dinet_platform.ray_runtime import ray_session
from dinet_platform.tracking import KIND_TAG, PARENT_TAG, experiment_id, find_runs
from dinet_platform.training.stage import (
    StageInputs,
    check_stage_inputs,
    make_trainer,
)
from dinet_platform.tuning.results import METRIC, SweepReport, summarize

SWEEP_TAG = "dinet.sweep_key"


@dataclass
class SweepResult:
    run_id: str
    key: str
    report: SweepReport
    best_config_path: Path


def search_space(space: dict[str, Distribution]) -> dict[str, Any]:
    samplers = {
        "uniform": lambda d: tune.uniform(d.low, d.high),
        "loguniform": lambda d: tune.loguniform(d.low, d.high),
        "randint": lambda d: tune.randint(int(d.low), int(d.high)),
        "choice": lambda d: tune.choice(d.values),
        "grid": lambda d: tune.grid_search(d.values),
    }
    return {key: samplers[d.type](d) for key, d in space.items()}


def trial_training_config(sweep: SweepConfig, base: dict[str, Any], params: dict) -> DINetConfig:
    """A trial's config: the base with the sampled params, at the sweep's trial resources."""
    resources = sweep.resources
    fixed = {
        "training.num_workers": resources.num_workers,
        "training.cpus_per_worker": resources.cpus_per_worker,
        "training.loader_cpus": resources.loader_cpus,
        "training.use_gpu": resources.use_gpu,
    }
    if sweep.epochs is not None:
        index = [s["mouth_size"] for s in base["stages"]].index(sweep.stage)
        fixed[f"stages.{index}.epochs"] = sweep.epochs
    return trial_config(base, {**params, **fixed}, source="trial")


class TrialProgress(tune.Callback):
    """The sweep on the console: a line per finished trial and the step's progress display
    (Tune's own status tables go to the command's log). It holds nothing but numbers, so the
    Tuner's saved state (which keeps its callbacks) pickles and restores it."""

    def __init__(self, total: int, epochs: int):
        self.total = total
        self.epochs = epochs

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        score = result.get(METRIC)
        shown = f", {METRIC} {score:.3f}" if isinstance(score, int | float) else ""
        console_logs.update(f"trial {trial.trial_id}: epoch {result.get('training_iteration')}"
                            f"/{self.epochs}{shown}", completed=_finished(trials),
                            total=self.total)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._report(trials, trial, "")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._report(trials, trial, f"failed (see the log; Tune's error file "
                                    f"{getattr(trial, 'error_file', None) or 'is in it'})")

    def _report(self, trials, trial, failure: str) -> None:
        done = _finished(trials, trial)
        params = "  ".join(f"{key.rsplit('.', 1)[-1]}={_short(value)}"
                           for key, value in sorted((trial.config or {}).items()))
        result = trial.last_result or {}
        epochs = result.get("training_iteration")
        score = result.get(METRIC)
        if failure:
            outcome = failure
        elif isinstance(score, int | float):
            outcome = f"{METRIC} {score:.3f} after {epochs}/{self.epochs} epoch(s)"
            if isinstance(epochs, int) and epochs < self.epochs:
                outcome += " (stopped early by ASHA)"
        else:
            outcome = "no result"
        console_logs.say(f"trial {done}/{self.total} {trial.trial_id}: {params}: {outcome}")
        console_logs.update(completed=done, total=self.total)


def _finished(trials, ending=None) -> int:
    """Trials done, counting ``ending`` (Tune calls back before it marks the trial)."""
    return sum(1 for t in trials if t is ending or t.status in ("TERMINATED", "ERROR"))


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def run_trial(params: dict, sweep: SweepConfig, base: dict[str, Any], inputs: StageInputs):
    """One trial (runs inside a Tune trial actor): fit the stage's TorchTrainer."""
    config = trial_training_config(sweep, base, params)
    name = f"{tune.get_context().get_experiment_name()}-{tune.get_context().get_trial_id()}"
    trainer = make_trainer(config, sweep.stage, inputs, name=name,
                           callbacks=[TuneReportCallback()])
    trainer.fit()


def sweep_key(sweep: SweepConfig, base: DINetConfig, data_hash: str) -> str:
    text = json.dumps(sweep.model_dump(mode="json"), sort_keys=True) + dump_config(base)
    return hashlib.sha256(f"{text}\n{data_hash}".encode()).hexdigest()[:16]


def run_sweep(
    sweep: SweepConfig,
    base: DINetConfig,
    client: MlflowClient,
    console: Console | None = None,
) -> SweepResult:
    console = console or Console()
    shards = shards_path(base.data.shards)
    inputs = check_stage_inputs(base, sweep.stage, client, sweep.init_from, shards)
    key = sweep_key(sweep, base, load_manifest(shards)["content_hash"])
    experiment = experiment_id(client, base.tracking.experiment)
    parent_id = _parent_run(client, experiment, sweep, key)
    storage = ray_storage_path(base.training.storage_path)
    name = f"sweep-{sweep.name}-{key[:8]}"
    out_dir = dinet_home() / "sweeps" / name
    console.print(f"sweep {name}: {sweep.num_samples} trials at mouth {sweep.stage}, "
                  f"MLflow run {parent_id}")

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, sweep=sweep, base=base.model_dump(mode="json"),
                             inputs=inputs),
        {"CPU": sweep.resources.driver_cpus},
    )
    client.update_run(parent_id, status="RUNNING")
    try:
        with (console_logs.progress(console, f"sweep {name}", total=sweep.num_samples),
              ray_session()):
            experiment_path = f"{storage}/{name}"
            if tune.Tuner.can_restore(experiment_path):
                console.print(f"resuming the interrupted sweep from {experiment_path}")
                tuner = tune.Tuner.restore(experiment_path, trainable=trainable,
                                           resume_errored=True)
            else:
                tuner = _new_tuner(sweep, base, client, trainable, storage, name, parent_id,
                                   key)
            started = time.monotonic()
            with _own_interrupt_handlers():
                results = tuner.fit()
            _raise_if_interrupted(experiment_path, sweep, time.monotonic() - started)
        report = summarize(results, sweep, sweep.epochs or base.stage(sweep.stage).epochs)
        best_config = trial_config(base.model_dump(mode="json"), report.best_params,
                                   source="best trial")
        best_path = report.write(out_dir, dump_config(best_config))
        for path in out_dir.iterdir():
            client.log_artifact(parent_id, str(path))
        for name, value in report.summary_metrics().items():
            client.log_metric(parent_id, name, value)
    except BaseException as exc:
        client.set_terminated(parent_id, "KILLED" if isinstance(exc, KeyboardInterrupt)
                              else "FAILED")
        raise
    client.set_terminated(parent_id, "FINISHED")
    console.print(report.table())
    console.print(f"best config (ready to train): {best_path}")
    return SweepResult(run_id=parent_id, key=key, report=report, best_config_path=best_path)


@contextmanager
def _own_interrupt_handlers() -> Iterator[None]:
    """Tune installs its own SIGINT/SIGUSR1 handlers and leaves them behind when the run ends
    without a signal; put the caller's back, so Ctrl-C still interrupts whatever comes next
    (the demo goes on to evaluation and serving)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGUSR1)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


class SweepInterrupted(KeyboardInterrupt):
    """Tune stopped on a signal before every trial ended; its state is saved for a resume."""


def _raise_if_interrupted(experiment_path: str, sweep: SweepConfig, elapsed_s: float) -> None:
    # On SIGINT Tune saves its state and returns normally with partial results; a sweep that
    # neither ran all its trials nor used up its time budget was interrupted.
    trials = tune.ExperimentAnalysis(experiment_path).trials
    unfinished = [t for t in trials if t.status not in ("TERMINATED", "ERROR")]
    out_of_time = sweep.time_budget_s is not None and elapsed_s >= sweep.time_budget_s
    if unfinished or (len(trials) < sweep.num_samples and not out_of_time):
        raise SweepInterrupted(
            f"sweep interrupted with {len(trials) - len(unfinished)} of {sweep.num_samples} "
            "trials done; run the same command again to resume it"
        )


def _new_tuner(sweep, base, client, trainable, storage, name, parent_id, key) -> tune.Tuner:
    epochs = sweep.epochs or base.stage(sweep.stage).epochs
    if sweep.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(seed=sweep.seed)
    else:
        searcher = tune.search.BasicVariantGenerator(random_state=sweep.seed)
    return tune.Tuner(
        trainable,
        param_space=search_space(sweep.space),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            search_alg=searcher,
            scheduler=ASHAScheduler(
                time_attr="training_iteration",
                max_t=epochs,
                grace_period=min(sweep.asha.grace_period, epochs),
                reduction_factor=sweep.asha.reduction_factor,
            ),
            num_samples=sweep.num_samples,
            max_concurrent_trials=sweep.max_concurrent_trials,
            time_budget_s=sweep.time_budget_s,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
            callbacks=[
                MLflowLoggerCallback(
                    tracking_uri=client.tracking_uri,
                    experiment_name=base.tracking.experiment,
                    tags={PARENT_TAG: parent_id, KIND_TAG: "trial", SWEEP_TAG: key},
                ),
                TrialProgress(sweep.num_samples, epochs),
            ],
            verbose=1,
        ),
    )


def _parent_run(client: MlflowClient, experiment: str, sweep: SweepConfig, key: str) -> str:
    existing = find_runs(client, experiment, {SWEEP_TAG: key, KIND_TAG: "sweep"})
    if existing:
        return existing[0].info.run_id
    run = client.create_run(experiment, run_name=f"sweep-{sweep.name}",
                            tags={SWEEP_TAG: key, KIND_TAG: "sweep"})
    run_id = run.info.run_id
    for field in ("stage", "num_samples", "max_concurrent_trials", "searcher", "epochs"):
        client.log_param(run_id, field, getattr(sweep, field))
    client.log_dict(run_id, sweep.model_dump(mode="json"), "sweep.json")
    return run_id
