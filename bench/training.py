"""Training throughput: a plain PyTorch loop vs the same steps in Ray Train (1 and 2 workers).

    python bench/training.py [--out FILE.json] [--config configs/demo.yaml] [--stage 64]
                             [--steps 24] [--warmup 2] [--objectives]

``--objectives`` instead compares what one step of the objective costs: the demo's full
objective at 7636b4f (GAN + MS-SSIM + temporal terms, 5-frame clips, fp32) vs ``--config``'s
at its precision (bf16 autocast where the CPU has native bf16) and, where that is not fp32,
``--config``'s in fp32, in generated frames per second on one thread.

Every variant runs the platform's own ``train_step`` (discriminators, then the generator on the
full objective) on the same in-memory batch of the stage's shape, so the difference is what
Ray Train and DDP add, not data loading. Steady state is samples/s at the median step time of
``--steps`` steps after ``--warmup`` (the mean is in the JSON too: on a shared VM a single
stalled step moves it by several percent); a sample is one clip of ``data.clip_len`` frames.
The plain loop runs before Ray starts and again after it stops, and its figure is the mean of
the two, so drift in the machine's speed over the run does not land on one side. The 1-worker
run gets the same 2 threads as the plain loop; the 2-worker run splits them, 1 thread each
(DDP over gloo).

Start-up cost of a stage = from ``TorchTrainer.fit()`` to the end of the first step (worker
group, process group, model build, first step); Ray itself is started once beforehand, the way
the pipeline starts it (``start_local_ray``), and its start is reported on its own line.

Each comparison runs twice: with the stage's threads filling both cores (the configuration the
overhead target is about), and with one thread, which leaves a core to Ray's own processes
(controller, placement-group cleaner, GCS, raylet, dashboard). The gap between the two rows
says how much of the overhead is the per-step cost of Ray Train and how much is Ray's control
plane competing for a fully booked CPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch
from common import markdown_table, median, write_json
from dinet_platform.config import DINetConfig, load_config
from dinet_platform.models import build_discriminators, build_generator
from dinet_platform.models.clip import ClipGenerator
from dinet_platform.ray_runtime import start_local_ray
from dinet_platform.training.objective import (
    Discriminators,
    StageObjective,
    autocast_dtype,
    example_batch,
    make_optimizers,
    train_step,
)
from dinet_platform.training.schedule import stage_loss_weights
from ray.train.torch import TorchTrainer


def run_steps(config: DINetConfig, mouth_size: int, steps: int, warmup: int, threads: int,
              distributed: bool) -> dict[str, float]:
    """Build the stage's networks and time ``steps`` training steps after ``warmup``."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    stage = config.stage(mouth_size)
    generator = ClipGenerator(build_generator(config.model))
    discriminators = build_discriminators(config.model, clip_len=config.data.clip_len)
    if distributed:
        generator = ray.train.torch.prepare_model(generator)
        discriminators = Discriminators(
            ray.train.torch.prepare_model(discriminators.frame),
            ray.train.torch.prepare_model(discriminators.clip),
        )
    objective = StageObjective(stage_loss_weights(config, mouth_size), mouth_size)
    optimizers = make_optimizers(generator, discriminators, stage.lr)
    batch = example_batch(mouth_size, stage.batch_size, config.data.clip_len,
                          config.model.audio_channels, config.data.audio_window)
    precision = autocast_dtype("cpu", config.training.mixed_precision)
    train_step(generator, discriminators, objective, optimizers, batch, precision)
    first_step_at = time.time()
    for _ in range(warmup):
        train_step(generator, discriminators, objective, optimizers, batch, precision)
    step_times = []
    for _ in range(steps):
        started = time.perf_counter()
        train_step(generator, discriminators, objective, optimizers, batch, precision)
        step_times.append(time.perf_counter() - started)
    return {"samples_per_s": stage.batch_size / median(step_times),
            "mean_samples_per_s": stage.batch_size * steps / sum(step_times),
            "first_step_at": first_step_at}


def _worker(loop_config: dict) -> None:
    config = DINetConfig.model_validate(loop_config["config"])
    stats = run_steps(config, loop_config["mouth_size"], loop_config["steps"],
                      loop_config["warmup"], loop_config["threads"], distributed=True)
    context = ray.train.get_context()
    if context.get_world_rank() == 0:
        # Ray Train V2 does not surface metrics reported without a checkpoint in
        # Result.metrics, so rank 0 hands its figures back through a file.
        Path(loop_config["out"]).write_text(json.dumps(
            {**stats, "samples_per_s": stats["samples_per_s"] * context.get_world_size(),
             "mean_samples_per_s": stats["mean_samples_per_s"] * context.get_world_size()}))


def run_ray(config: DINetConfig, mouth_size: int, workers: int, threads: int, steps: int,
            warmup: int) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(prefix="dinet-bench-")) / "stats.json"
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"config": config.model_dump(mode="json"), "mouth_size": mouth_size,
                           "steps": steps, "warmup": warmup, "threads": threads,
                           "out": str(out)},
        scaling_config=ray.train.ScalingConfig(num_workers=workers,
                                               resources_per_worker={"CPU": threads}),
        run_config=ray.train.RunConfig(name=f"bench-{workers}w-{time.time_ns()}",
                                       storage_path="/tmp/dinet-bench-ray"),
    )
    started = time.time()
    trainer.fit()
    metrics = json.loads(out.read_text())
    return {"samples_per_s": metrics["samples_per_s"],
            "mean_samples_per_s": metrics["mean_samples_per_s"],
            "time_to_first_step_s": metrics["first_step_at"] - started}


# The demo objective at 7636b4f (before issue 18): every term on, clips of 5 frames, batch 4,
# fp32 (mixed precision then applied on GPUs only).
FULL_OBJECTIVE = {
    "model": {"variant": "dinet_attention", "width": 0.125, "discriminator_width": 0.25,
              "attention": {"reduction": 4}},
    "stages": [{"mouth_size": 64, "epochs": 1, "batch_size": 4, "lr": 1e-4}],
    "data": {"clip_len": 5},
    "training": {"mixed_precision": False},
}


def compare_objectives(args: argparse.Namespace) -> None:
    """Frames/s of one training step, 1 thread: the 7636b4f demo objective vs ``--config``'s
    (a frame is one generated image; a sample is a clip of ``clip_len`` frames)."""
    config = load_config(args.config)
    precision = autocast_dtype("cpu", config.training.mixed_precision)
    variants = {"full objective (7636b4f demo)": DINetConfig.model_validate(FULL_OBJECTIVE),
                f"{args.config} ({_precision_name(precision)})": config}
    if precision is not None:
        fp32 = config.model_copy(update={"training": config.training.model_copy(
            update={"mixed_precision": False})})
        variants[f"{args.config} (fp32)"] = fp32
    rows = []
    for rounds in range(2):  # alternate, so drift in the machine's speed lands on both
        for name, config in variants.items():
            stats = run_steps(config, args.stage, args.steps, args.warmup, 1, distributed=False)
            frames = stats["samples_per_s"] * config.data.clip_len
            if rounds == 0:
                rows.append({"variant": name, "clip_len": config.data.clip_len,
                             "batch_size": config.stage(args.stage).batch_size,
                             "frames_per_s": [frames]})
            else:
                next(r for r in rows if r["variant"] == name)["frames_per_s"].append(frames)
    for row in rows:
        row["frames_per_s"] = sum(row["frames_per_s"]) / len(row["frames_per_s"])
        row["vs_full"] = row["frames_per_s"] / rows[0]["frames_per_s"]
    print(f"\nstage {args.stage}, 1 thread, median of {args.steps} steps, 2 alternating rounds\n")
    print(markdown_table(rows, ["variant", "clip_len", "batch_size", "frames_per_s", "vs_full"]))
    write_json(args.out, {"rows": rows})


def _precision_name(dtype: torch.dtype | None) -> str:
    return "fp32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out")
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--stage", type=int, default=64, help="mouth size of the stage")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--objectives", action="store_true",
                        help="compare the cost of a step: 7636b4f's full objective vs --config")
    args = parser.parse_args()
    if args.objectives:
        compare_objectives(args)
        return
    config = load_config(args.config)
    cpus = 2

    def plain_runs() -> dict[int, dict[str, float]]:
        runs = {}
        for threads in (cpus, 1):
            build_started = time.time()
            stats = run_steps(config, args.stage, args.steps, args.warmup, threads,
                              distributed=False)
            runs[threads] = {**stats,
                             "time_to_first_step_s": stats["first_step_at"] - build_started}
        return runs

    before = plain_runs()

    rows: list[dict] = []
    ray_started = time.perf_counter()
    start_local_ray(num_cpus=cpus)
    ray_init_s = time.perf_counter() - ray_started
    try:
        for workers, threads in ((1, cpus), (2, cpus // 2), (1, 1)):
            stats = run_ray(config, args.stage, workers, threads, args.steps, args.warmup)
            rows.append({"variant": f"ray_train_{workers}w", "workers": workers,
                         "threads": threads, **stats})
    finally:
        ray.shutdown()
    after = plain_runs()
    rows = [{"variant": "plain", "workers": 1, "threads": threads,
             **{key: (before[threads][key] + after[threads][key]) / 2
                for key in ("samples_per_s", "mean_samples_per_s", "time_to_first_step_s")},
             "samples_per_s_before_after": [before[threads]["samples_per_s"],
                                            after[threads]["samples_per_s"]]}
            for threads in (cpus, 1)] + rows

    # Each Ray row is compared with the plain loop on the same number of cores.
    plain_by_cores = {row["threads"]: row["samples_per_s"] for row in rows
                      if row["variant"] == "plain"}
    for row in rows:
        base = plain_by_cores[row["workers"] * row["threads"]]
        row.update(config=args.config, mouth_size=args.stage,
                   batch_size=config.stage(args.stage).batch_size,
                   clip_len=config.data.clip_len, cores=row["workers"] * row["threads"],
                   vs_plain=row["samples_per_s"] / base,
                   overhead=1 - row["samples_per_s"] / base)
    print(f"\n{args.config}, stage {args.stage}, {args.steps} timed steps; "
          f"Ray started in {ray_init_s:.1f}s (once per pipeline, not per stage)\n")
    print(markdown_table(rows, ["variant", "workers", "threads", "cores", "samples_per_s",
                                "mean_samples_per_s", "vs_plain", "overhead",
                                "time_to_first_step_s"]))
    write_json(args.out, {"ray_init_s": ray_init_s, "rows": rows})


if __name__ == "__main__":
    main()
