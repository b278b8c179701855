"""Export a finished training run as the committed base model, with its provenance.

    python tools/export_base_model.py --run RUN_ID --config configs/base.yaml \
        --shards SHARDS [--out models/base] [--data-command "..."] [--train-command "..."]

``RUN_ID`` is a pipeline or stage run in the MLflow store of ``--config``. The folder gets
``checkpoint.pt`` + ``config.yaml`` (weights without optimizer state, as the registry stores
a version) and ``provenance.json``: the training config, the data's content hash and how to
make it, the code's commit, the run, and the held-out metrics next to the baselines, measured
here by the platform's evaluation on the data's held-out videos (with the sync expert registered
in the same store, when there is one: LSE-C and the sync offset; it is copied to ``syncnet/``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from dinet_platform.config import dump_config, load_config
from dinet_platform.evaluation.data import VideoSet
from dinet_platform.evaluation.evaluate import evaluate, load_model
from dinet_platform.evaluation.outputs import write_report
from dinet_platform.evaluation.runs import find_sync_expert
from dinet_platform.models.checkpoints import load_checkpoint, save_checkpoint
from dinet_platform.registry.refs import final_stage_run, resolve
from dinet_platform.registry.versions import git_commit
from dinet_platform.tracking import client_for, get_run

REPORTED = ("mouth_psnr", "mouth_ssim", "seam_psnr", "mouth_open_corr", "mouth_open_error_px",
            "warp_error", "lse_c", "lse_d", "sync_offset")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--out", default="models/base")
    parser.add_argument("--data-command", default="")
    parser.add_argument("--train-command", default="")
    args = parser.parse_args()

    config = load_config(args.config)
    client = client_for(config.tracking)
    stage_run = final_stage_run(client, get_run(client, args.run))
    state = load_checkpoint(resolve(stage_run.info.run_id, client).path)
    out = Path(args.out)
    save_checkpoint(out, {k: v for k, v in state.items() if k != "format"}
                    | {"optimizers": None})

    videos = VideoSet(args.shards, "val")
    model = load_model("base", out, source=str(out))
    expert, expert_source = find_sync_expert(config, client)
    print(f"sync expert: {expert_source}")
    if expert is not None:  # ships with the model: the demo judges sync with it
        shutil.rmtree(out / "syncnet", ignore_errors=True)
        shutil.copytree(resolve(expert_source, client).path, out / "syncnet")
    result = evaluate([model], videos, config.evaluation, expert)
    history = client.get_metric_history(stage_run.info.run_id, "val_mouth_psnr")
    manifest = json.loads((Path(args.shards) / "manifest.json").read_text())
    provenance = {
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_commit": git_commit(),
        "config": dump_config(config),
        "data": {"content_hash": manifest.get("content_hash"), "counts": manifest["counts"],
                 "command": args.data_command},
        "training": {
            "command": args.train_command,
            "stage_run": stage_run.info.run_id,
            "mouth_size": state["mouth_size"],
            "epochs": state["epoch"] + 1,
            "steps": (state["epoch"] + 1) * (config.training.steps_per_epoch or 0),
            "wall_time_s": (stage_run.info.end_time - stage_run.info.start_time) / 1000,
            "val_mouth_psnr_by_epoch": [round(m.value, 3)
                                        for m in sorted(history, key=lambda m: m.step)],
        },
        "held_out": {
            "videos": result.info["videos"],
            "frames": result.info["frames"],
            "sync_expert": {"source": expert_source,
                            "copy": "syncnet" if expert is not None else None},
            "metrics": {entry: {k: values[k] for k in REPORTED if k in values}
                        for entry, values in result.metrics.items()},
        },
    }
    write_report(out / "provenance.json", provenance)  # strict JSON: infinite PSNR as "inf"
    base, paste = result.metrics["base"], result.metrics["paste_reference"]
    print(f"exported {out}: held-out mouth PSNR {base['mouth_psnr']:.2f} dB vs paste_reference "
          f"{paste['mouth_psnr']:.2f}; mouth_open_corr {base.get('mouth_open_corr', 0):.3f}")


if __name__ == "__main__":
    main()
