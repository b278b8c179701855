"""Inference optimizations side by side: naive DINet vs each step alone vs all combined.

    python bench/inference.py [--out FILE.json] [--sizes 64 128] [--batches 1 8] [--width 1.0]
                              [--repeats 7] [--weights CHECKPOINT] [--quick]

Variants (``dinet_platform.inference.optimize`` modes): ``naive`` (the original model, fp32
eager, BatchNorm unfolded, full network every frame), ``structure``, ``cache``,
``dynamic_int8``, ``static_int8``, ``compile`` and ``all``; plus two neighbours of ``all``:
``all_eager`` (without compile) and ``all_full_int8`` (every conv stage int8, not just the
default ``appearance`` scope). For each mouth size and batch:

- ``fps``, ``ms_p50``, ``ms_p99``: per-frame figures from ``generate`` calls timed in
  alternation across variants inside one process, so drift hits all alike. Cached variants
  encode the avatar's references once beforehand (that is the optimization); the others
  re-encode them every call, as the original inference does.
- ``peak_rss_mb``: in a fresh subprocess per variant, the build is done, the peak-RSS counter
  is reset (``/proc/self/clear_refs``), then inference runs: weights + runtime + activations
  of a serving process, without the build's transients (calibration, the fp32 model).
- ``model_bytes``: serialized ``state_dict`` size (int8 weights are packed int8; ``all``'s
  float stages keep int8/fp16 weights, see ``inference.weight_storage``).
- ``psnr_vs_fp32``: output PSNR (peak 1.0) against the naive model's output on the same frames.

Without ``--weights`` the model is a random initialisation whose BatchNorm statistics are
settled on image-like frames (a fresh DINet's output is nearly constant, which would make PSNR
meaningless). That stand-in is likely *pessimistic* for int8: a random BatchNorm net amplifies
small perturbations along the alignment path (we measured 1 % noise growing to 3.7 % through
it); a trained checkpoint may do better, and ``--weights`` measures one. Building a variant
(folding, calibration) is ``setup_s``; its first call at each shape (``first_call_s``)
includes ``torch.compile``'s compilation.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import io
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import device_name, markdown_table, percentile, time_call, write_json
from dinet_platform.metrics import output_psnr
from dinet_platform.models import DINet, load_generator_weights
from dinet_platform.optimize.modes import MODES, OptimizeOptions, optimize
from dinet_platform.optimize.quantize import linear_share
from dinet_platform.optimize.stand_in import settle_batchnorm, synthetic_batch, synthetic_batches
from dinet_platform.runtime.engine import InferenceEngine

VARIANTS: dict[str, OptimizeOptions] = {
    "naive": OptimizeOptions.for_mode("fp32"),
    **{mode: OptimizeOptions.for_mode(mode) for mode in MODES if mode != "fp32"},
    # two neighbours of "all", to show what compile and the int8 scope contribute
    "all_eager": replace(OptimizeOptions.for_mode("all"), compile=False),
    "all_full_int8": replace(OptimizeOptions.for_mode("all"), int8_scope="full"),
}
CALIBRATION = {"batch": 2, "count": 4, "seed": 100}  # 8 frames
EVAL_SEED = 7


def build_generator(width: float, mouth_size: int, weights: str | None) -> DINet:
    """The model under test, reproducibly (the memory probes rebuild it in a subprocess)."""
    torch.manual_seed(0)
    model = DINet(width=width)
    if weights:
        load_generator_weights(model, weights)
        return model.eval()
    return settle_batchnorm(model, synthetic_batches(mouth_size, 4, 3, seed=50))


def build_engine(generator: DINet, variant: str, mouth_size: int) -> InferenceEngine:
    calibration = synthetic_batches(
        mouth_size, CALIBRATION["batch"], CALIBRATION["count"], seed=CALIBRATION["seed"]
    )
    return optimize(generator, VARIANTS[variant], calibration=calibration)


def model_bytes(engine: InferenceEngine) -> int:
    module = engine.backend
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)  # type: ignore[attr-defined]
    return buffer.tell()


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory_probe(variant: str, mouth_size: int, batch: int, width: float, weights: str | None):
    """In a fresh process: peak RSS of serving (after the build) for one variant."""
    generator = build_generator(width, mouth_size, weights)
    engine = build_engine(generator, variant, mouth_size)
    frames = synthetic_batch(mouth_size, batch, seed=EVAL_SEED)
    del generator
    engine.generate(frames.source, frames.audio, engine.encode_reference(frames.references[:1]))
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand the build's freed heap back to the OS
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (Linux)
    features = engine.encode_reference(frames.references[:1])
    for _ in range(2):
        engine.generate(frames.source, frames.audio, features)
    return {"peak_rss_mb": vm_hwm_mb()}


def measure_memory(variant: str, mouth_size: int, batch: int, width: float,
                   weights: str | None) -> float:
    args = [sys.executable, __file__, "--probe", variant, str(mouth_size), str(batch),
            "--width", str(width)] + (["--weights", weights] if weights else [])
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"memory probe {variant} failed:\n{result.stderr[-2000:]}", file=sys.stderr)
        return float("nan")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def measure(
    engines: dict[str, InferenceEngine], mouth_size: int, batch: int, repeats: int
) -> tuple[dict[str, list[float]], dict[str, torch.Tensor], dict[str, float]]:
    """Seconds per ``generate`` call for each variant (in alternation), its output, and its
    first call's seconds (which include compilation for the compiled variants)."""
    frames = synthetic_batch(mouth_size, batch, seed=EVAL_SEED)
    references = frames.references[:1]  # one avatar
    features = {name: engine.encode_reference(references) for name, engine in engines.items()}
    outputs, first_call_s, times = {}, {}, {name: [] for name in engines}

    def call(name: str) -> torch.Tensor:
        return engines[name].generate(frames.source, frames.audio, features[name])

    for name in engines:  # warm-up: allocator, kernel selection, compilation of this shape
        start = time.perf_counter()
        outputs[name] = call(name)
        first_call_s[name] = time.perf_counter() - start
        call(name)
    for _ in range(repeats):
        for name in engines:
            times[name].append(time_call(lambda n=name: call(n), torch.device("cpu")))
    return times, outputs, first_call_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the figures as JSON")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the per-variant memory subprocesses (they rebuild and, for "
                             "compiled variants, recompile every variant)")
    parser.add_argument("--weights", help="a trained generator checkpoint (else a stand-in)")
    parser.add_argument("--quick", action="store_true",
                        help="reduced run: width 0.25, mouth 64, 3 repeats")
    parser.add_argument("--probe", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        variant, size, batch = args.probe
        print(json.dumps(memory_probe(variant, int(size), int(batch), args.width, args.weights)))
        return
    if args.quick:
        args.width, args.sizes, args.repeats = 0.25, [64], 3
    if "naive" not in args.variants:
        args.variants = ["naive", *args.variants]

    device = torch.device("cpu")  # int8 kernels are CPU kernels; GPU uses bf16 (not here)
    rows = []
    for mouth_size in args.sizes:
        generator = build_generator(args.width, mouth_size, args.weights)
        frames = synthetic_batch(mouth_size, 1, seed=EVAL_SEED)
        share = linear_share(generator, frames.source, frames.references, frames.audio)
        print(f"mouth {mouth_size}: dynamic int8 (Linear) covers {share.param_fraction:.2%} of "
              f"parameters, {share.flop_fraction:.4%} of FLOPs", file=sys.stderr)
        engines, setup_s = {}, {}
        for variant in args.variants:
            start = time.perf_counter()
            engines[variant] = build_engine(generator, variant, mouth_size)
            setup_s[variant] = time.perf_counter() - start
        for batch in args.batches:
            times, outputs, first_call_s = measure(engines, mouth_size, batch, args.repeats)
            base_fps = batch / percentile(times["naive"], 50)
            base_bytes = model_bytes(engines["naive"])
            for variant in args.variants:
                per_frame_ms = [t / batch * 1e3 for t in times[variant]]
                fps = batch / percentile(times[variant], 50)
                row = {
                    "variant": variant,
                    "device": device_name(device),
                    "width": args.width,
                    "mouth_size": mouth_size,
                    "batch": batch,
                    "fps": fps,
                    "ms_p50": percentile(per_frame_ms, 50),
                    "ms_p99": percentile(per_frame_ms, 99),
                    "peak_rss_mb": float("nan") if args.no_memory else measure_memory(
                        variant, mouth_size, batch, args.width, args.weights),
                    "model_bytes": model_bytes(engines[variant]),
                    "psnr_vs_fp32": output_psnr(outputs[variant], outputs["naive"]),
                    "speedup_vs_naive": fps / base_fps,
                    "bytes_vs_naive": model_bytes(engines[variant]) / base_bytes,
                    "setup_s": setup_s[variant],
                    "first_call_s": first_call_s[variant],
                    "applied": engines[variant].description,
                }
                rows.append(row)
                print(f"mouth {mouth_size} batch {batch} {variant}: {fps:.2f} frames/s "
                      f"({row['speedup_vs_naive']:.2f}x naive), {row['psnr_vs_fp32']:.1f} dB",
                      file=sys.stderr)
            write_json(args.out, rows)  # after each block: a long run keeps what it measured
    columns = ["variant", "mouth_size", "batch", "fps", "speedup_vs_naive", "ms_p50", "ms_p99",
               "peak_rss_mb", "model_bytes", "bytes_vs_naive", "psnr_vs_fp32", "setup_s",
               "first_call_s"]
    print(f"\nDevice: {device_name(device)}; width {args.width}; "
          f"{'weights ' + args.weights if args.weights else 'stand-in weights (settled BN)'}\n")
    print(markdown_table(rows, columns))
    write_json(args.out, rows)


if __name__ == "__main__":
    main()
