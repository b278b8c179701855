"""Forward cost of DINet vs DINetWithAttention (all modules on), side by side.

    python bench/models.py [--out FILE.json] [--sizes 64 128 160] [--widths 1.0 0.125]
                           [--batches 1 8] [--repeats 5]

Times are per frame (the forward time divided by the batch), eval mode, inference_mode. The two
variants are timed in alternation inside one process so drift hits both alike. Peak memory on
CPU is measured in a fresh subprocess per configuration (peak RSS while running one forward,
minus RSS before it, i.e. activation memory); on CUDA it is ``max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from common import (
    current_rss_mb,
    device_name,
    markdown_table,
    median,
    peak_rss_mb,
    time_call,
    write_json,
)
from dinet_platform.config import AttentionConfig, ModelConfig
from dinet_platform.geometry import crop_geometry
from dinet_platform.models import build_generator, count_parameters

ALL_ON = AttentionConfig(spatial=True, mouth_focused=True, multi_scale=True, adaptive_fusion=True)
VARIANTS = {"dinet": "dinet", "attention": "dinet_attention"}


def build(variant: str, width: float, device: torch.device) -> torch.nn.Module:
    config = ModelConfig(variant=VARIANTS[variant], width=width, attention=ALL_ON)
    model = build_generator(config).to(device).eval()
    if variant == "attention":
        for block in model.attention.values():  # as after training: attention in use
            block.gamma.data.fill_(0.5)
    return model


def make_inputs(mouth_size: int, batch: int, device: torch.device):
    height, width = crop_geometry(mouth_size).crop_shape
    return (
        torch.rand(batch, 3, height, width, device=device),
        torch.rand(batch, 15, height, width, device=device),
        torch.rand(batch, 29, 5, device=device),
    )


def memory_probe(variant: str, mouth_size: int, width: float, batch: int) -> dict:
    """Run in a fresh process: activation memory of one forward."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build(variant, width, device)
    inputs = make_inputs(mouth_size, batch, device)
    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device) / 2**20
            model(*inputs)
            return {"peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 - before}
        before = current_rss_mb()
        model(*inputs)
        return {"peak_mb": peak_rss_mb() - before}


def measure_memory(variant: str, mouth_size: int, width: float, batch: int) -> float:
    args = [sys.executable, __file__, "--probe", variant, str(mouth_size), str(width), str(batch)]
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def measure_times(
    models: dict[str, torch.nn.Module], inputs, repeats: int, device: torch.device
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model(*inputs)  # warm-up: allocator, kernel selection
        for _ in range(repeats):
            for name, model in models.items():
                times[name].append(time_call(lambda m=model: m(*inputs), device))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the figures as JSON")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 160])
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.125])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--probe", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        variant, size, width, batch = args.probe
        print(json.dumps(memory_probe(variant, int(size), float(width), int(batch))))
        return

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for width in args.widths:
        models = {name: build(name, width, device) for name in VARIANTS}
        params = {name: count_parameters(model) for name, model in models.items()}
        for mouth_size in args.sizes:
            for batch in args.batches:
                inputs = make_inputs(mouth_size, batch, device)
                times = measure_times(models, inputs, args.repeats, device)
                base_ms = median(times["dinet"]) / batch * 1e3
                for name in VARIANTS:
                    ms = median(times[name]) / batch * 1e3
                    row = {
                        "variant": name,
                        "device": device_name(device),
                        "width": width,
                        "mouth_size": mouth_size,
                        "batch": batch,
                        "params": params[name],
                        "ms_per_frame": ms,
                        "overhead_vs_dinet": ms / base_ms - 1.0,
                        "peak_mb": measure_memory(name, mouth_size, width, batch),
                    }
                    rows.append(row)
                    print(
                        f"width {width} mouth {mouth_size} batch {batch} {name}: "
                        f"{ms:.1f} ms/frame ({row['overhead_vs_dinet']:+.1%})",
                        file=sys.stderr,
                    )
    columns = ["variant", "width", "mouth_size", "batch", "params", "ms_per_frame",
               "overhead_vs_dinet", "peak_mb"]
    print(f"\nDevice: {device_name(device)}\n")
    print(markdown_table(rows, columns))
    write_json(args.out, rows)


if __name__ == "__main__":
    main()
