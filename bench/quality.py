"""The seed's quality claims, measured: DINet vs +attention vs +temporal losses vs both (and
+ the sync loss, given an expert), same data, steps and seeds.

    python bench/quality.py --shards SHARDS [--config configs/base.yaml] [--steps 600]
                            [--seeds 0 1] [--sync-expert FILE] [--eval-frames 150]
                            [--eval-mouth-size 128] [--variants dinet +attention ...]
                            [--out FILE.json]

Every run trains the platform's ``ClipGenerator`` with its ``train_step`` and ``StageObjective``
in a plain loop (one thread, no Ray: the runs are compared with each other, not timed) on the
``train`` split of ``SHARDS`` at ``--config``'s first stage (batch, lr, clip length), from the
same initial weights per seed; then the platform's evaluation measures it on the held-out
``val`` split (identities and voices it never saw). A variant differs from ``dinet`` only by
the overrides shown in the table.

The verdict per claim compares the mean difference to the run-to-run spread: "confirmed" or
"refuted" when the difference exceeds the larger of the two variants' seed ranges in the
claimed or the opposite direction, otherwise "not distinguishable". With 2 seeds that is a weak
test; more seeds (``--seeds 0 1 2 3``) sharpen it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch
from common import markdown_table, write_json
from dinet_platform.config import DINetConfig, load_config
from dinet_platform.config.sweep import trial_config
from dinet_platform.data.samples import ShardDataset
from dinet_platform.evaluation.data import VideoSet
from dinet_platform.evaluation.evaluate import PASTE_REFERENCE, evaluate, load_model
from dinet_platform.models import build_discriminators, build_generator
from dinet_platform.models.checkpoints import load_sync_expert, save_checkpoint
from dinet_platform.models.clip import ClipGenerator
from dinet_platform.training.objective import (
    StageObjective,
    autocast_dtype,
    make_optimizers,
    train_step,
)
from dinet_platform.training.schedule import stage_loss_weights

# The seed's attention as configs/multiscale.yaml sets it (all four modules), and its temporal
# terms that a 2-frame clip can carry (optical flow and the long-term window need more frames).
ATTENTION = {"model.variant": "dinet_attention", "model.attention.spatial": True,
             "model.attention.mouth_focused": True, "model.attention.multi_scale": True,
             "model.attention.adaptive_fusion": True, "model.attention.reduction": 4}
TEMPORAL = {"loss.temporal.frame_diff": 1.0, "loss.temporal.mouth_temporal": 1.0}
VARIANTS: dict[str, dict[str, object]] = {
    "dinet": {},
    "+attention": ATTENTION,
    "+temporal": TEMPORAL,
    "+both": {**ATTENTION, **TEMPORAL},
    "+sync": {"loss.sync": 0.1},
    # the config trains with bf16 autocast where the CPU computes bf16 natively: does that cost
    # learning per step?
    "fp32": {"training.mixed_precision": False},
    # the seed's claim that 128 px+ training improves detail: needs shards stored at >= 128
    # and --eval-mouth-size 128, so that every variant is measured at 128 (outputs of a model
    # trained at 64 are upscaled, as the evaluation does for any smaller model)
    "128px": {"stages.0.mouth_size": 128},
}
METRICS = ("mouth_psnr", "mouth_ssim", "mouth_open_corr", "lse_c", "warp_error",
           "frame_diff_error")
# claim -> (variant, baseline variant, metric, the direction the claim predicts)
CLAIMS = {
    "attention sharpens the mouth": ("+attention", "dinet", "mouth_ssim", +1),
    "the temporal loss smooths transitions": ("+temporal", "dinet", "warp_error", -1),
    "the sync loss makes the mouth follow the audio": ("+sync", "dinet", "mouth_open_corr", +1),
    "bf16 autocast (the config's precision here) learns less per step than fp32":
        ("dinet", "fp32", "psnr_gain_vs_paste", -1),
    "128 px+ training improves detail": ("128px", "dinet", "mouth_ssim", +1),
}


def train_and_evaluate(config: DINetConfig, shards: Path, steps: int, seed: int,
                       videos: VideoSet, expert: torch.nn.Module | None) -> dict[str, float]:
    stage = config.stages[0]
    torch.manual_seed(seed)
    generator = ClipGenerator(build_generator(config.model))
    discriminators = build_discriminators(config.model, clip_len=config.data.clip_len)
    objective = StageObjective(stage_loss_weights(config, stage.mouth_size), stage.mouth_size,
                               syncnet=expert)
    optimizers = make_optimizers(generator, discriminators, stage.lr)
    data = ShardDataset(shards, stage.mouth_size, config.data.clip_len, config=config.data,
                        seed=seed)
    loader = torch.utils.data.DataLoader(
        data, batch_size=stage.batch_size, shuffle=True, drop_last=True,
        generator=torch.Generator().manual_seed(seed))
    precision = autocast_dtype("cpu", config.training.mixed_precision)
    started, done = time.perf_counter(), 0
    while done < steps:
        for batch in islice(loader, steps - done):
            train_step(generator, discriminators, objective, optimizers, batch, precision)
            done += 1
    train_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(Path(tmp), {
            "generator": generator.generator.state_dict(), "discriminators": {},
            "optimizers": None, "epoch": 0, "mouth_size": stage.mouth_size,
            "config": config.model_dump(mode="json"), "metrics": {}})
        result = evaluate([load_model("model", path, "bench")], videos, config.evaluation,
                          expert)
    metrics = result.metrics["model"]
    row = {m: metrics[m] for m in METRICS if m in metrics}
    row["psnr_gain_vs_paste"] = metrics["mouth_psnr"] - result.metrics[PASTE_REFERENCE][
        "mouth_psnr"]
    row["train_s"] = train_s
    return row


def verdicts(summary: dict[str, dict[str, dict[str, float]]],
             seeds: int) -> list[dict[str, object]]:
    rows = []
    for claim, (variant, baseline, metric, direction) in CLAIMS.items():
        if variant not in summary or baseline not in summary or metric not in summary[variant]:
            rows.append({"claim": claim, "metric": metric, "verdict": "not measured"})
            continue
        ours, theirs = summary[variant][metric], summary[baseline][metric]
        difference = ours["mean"] - theirs["mean"]
        spread = max(ours["range"], theirs["range"])
        if seeds < 2:
            verdict = "one seed: no spread to compare with"
        elif abs(difference) <= spread:
            verdict = "not distinguishable"
        else:
            verdict = "confirmed" if difference * direction > 0 else "refuted"
        rows.append({"claim": claim, "metric": metric, "difference": difference,
                     "spread": spread, "verdict": verdict})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", required=True, type=Path)
    parser.add_argument("--config", default="configs/base.yaml")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS))
    parser.add_argument("--sync-expert", type=Path)
    parser.add_argument("--eval-frames", type=int, default=150)
    parser.add_argument("--eval-mouth-size", type=int,
                        help="evaluate every variant at this mouth size (128 for '128px')")
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(1)

    base = load_config(args.config)
    expert = None
    if args.sync_expert is not None:
        expert = load_sync_expert(args.sync_expert, base.model, base.data.clip_len)
    names = args.variants or [n for n in VARIANTS if (n != "+sync" or expert is not None)
                              and (n != "128px" or (args.eval_mouth_size or 0) >= 128)]
    videos = VideoSet(args.shards, "val", max_frames=args.eval_frames)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for seed in args.seeds:  # seed-major, so drift in the machine lands on every variant
        for name in names:
            overrides = dict(VARIANTS[name])
            if args.eval_mouth_size:
                overrides["evaluation.mouth_size"] = args.eval_mouth_size
            if overrides.get("loss.sync"):  # the config names the expert the loss uses
                overrides["loss.sync_expert"] = str(args.sync_expert)
            row = train_and_evaluate(trial_config(base.model_dump(mode="json"), overrides),
                                     args.shards,
                                     args.steps, seed, videos, expert)
            runs[name].append(row)
            print(f"seed {seed} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()),
                  flush=True)

    summary = {name: {metric: {"mean": statistics.fmean(r[metric] for r in rows),
                               "range": max(r[metric] for r in rows) - min(r[metric]
                                                                          for r in rows)}
                      for metric in rows[0]}
               for name, rows in runs.items()}
    table = [{"variant": name, **{metric: f"{values['mean']:.3f} ± {values['range'] / 2:.3f}"
                 for metric, values in summary[name].items() if metric != "train_s"}}
             for name in names]
    columns = ["variant", "psnr_gain_vs_paste",
               *[m for m in METRICS if m in summary[names[0]]]]
    print(f"\n{args.steps} steps per run, seeds {args.seeds}, {args.config} stage "
          f"{base.stages[0].mouth_size}; held-out: {len(videos)} videos x <= {args.eval_frames}"
          " frames; mean ± half the seed range\n")
    for name in names:
        print(f"- {name}: " + (" ".join(f"{k}={v}" for k, v in VARIANTS[name].items())
                                or f"{args.config} as it is"))
    print()
    print(markdown_table(table, columns))
    claims = verdicts(summary, len(args.seeds))
    print()
    print(markdown_table(claims, ["claim", "metric", "difference", "spread", "verdict"]))
    write_json(args.out, {"steps": args.steps, "seeds": args.seeds, "config": args.config,
                          "runs": runs, "summary": summary, "claims": claims})


if __name__ == "__main__":
    main()
