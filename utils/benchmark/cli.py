"""The command line: runs the chosen benchmarks, prints a table, writes one JSON object."""
import argparse
import json
import os
import time

import torch

from utils.benchmark.canvas import bench_canvas
from utils.benchmark.lookup import bench_codebook
from utils.benchmark.maskgit import bench_maskgit
from utils.benchmark.precision import bench_bf16
from utils.benchmark.quality import bench_time_to_quality
from utils.benchmark.resolution import bench_resolution
from utils.benchmark.stage1 import bench_flops, bench_stage1
from utils.benchmark.stage2 import bench_sampling, bench_stage2
from utils.core.errors import UserError, command
from utils.core.precision import autocast_context

# name -> runner(device, quick, autocast context) -> a dict with at least `median_ms` (or what the row holds instead)
RUNNERS = {
    "stage1_step": lambda device, quick, ctx: bench_stage1(device, quick, False, ctx),
    "stage1_step_gan": lambda device, quick, ctx: bench_stage1(device, quick, True, ctx),
    "stage2_step": lambda device, quick, ctx: bench_stage2(device, quick, ctx),
    "sample_kv": lambda device, quick, ctx: bench_sampling(device, quick, False),
    "sample_sliding": lambda device, quick, ctx: bench_sampling(device, quick, True),
    "codebook_lookup": lambda device, quick, ctx: bench_codebook(device, quick),
    "flops": lambda device, quick, ctx: bench_flops(device, quick, ctx),
    "bf16_vqgan_step": lambda device, quick, ctx: bench_bf16(device, quick, "vqgan"),
    "bf16_gpt_step": lambda device, quick, ctx: bench_bf16(device, quick, "gpt"),
    "sample_maskgit": lambda device, quick, ctx: bench_maskgit(device, quick),
    "canvas_scaling": lambda device, quick, ctx: bench_canvas(device, quick),
    "resolution_scaling": lambda device, quick, ctx: bench_resolution(device, quick),
    "time_to_quality": lambda device, quick, ctx: bench_time_to_quality(device, quick),
}
ON_REQUEST = ("time_to_quality",)  # long (minutes of training): run only when named in --only


@command
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Speed benchmarks, ours against a baseline measured side by side.")
    p.add_argument("--json", default=None, help="write the results as one JSON object here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="reduced sizes (a few minutes on 2 CPU cores)")
    p.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(RUNNERS)} "
                   f"({', '.join(ON_REQUEST)} only when named here)")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16", "fp16"),
                   help="autocast precision (default: bf16 on CUDA, fp32 elsewhere)")
    args = p.parse_args(argv)
    names = tuple(n for n in RUNNERS if n not in ON_REQUEST) if not args.only else \
        tuple(n.strip() for n in args.only.split(","))
    unknown = [n for n in names if n not in RUNNERS]
    if unknown:
        raise UserError(f"unknown benchmark(s) {unknown}; choose from {', '.join(RUNNERS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but CUDA is not available here")
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    ctx = autocast_context(device, precision)
    results = {}
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPU threads"
    print(f"device {device} ({hw}), torch {torch.__version__}, {precision}, threads {torch.get_num_threads()}"
          f"{', quick' if args.quick else ''}")
    print(f"{'benchmark':<17} {'ours':>12} {'baseline':>12} {'ratio':>7}  notes")
    for name in names:
        t0 = time.time()
        r = RUNNERS[name](device, args.quick, ctx)
        r["seconds"] = round(time.time() - t0, 1)
        results[name] = r
        ours = f"{r['median_ms']:.1f} ms" if "median_ms" in r else "-"
        base = f"{r['baseline_median_ms']:.1f} ms" if "baseline_median_ms" in r else "-"
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
        extra = []
        if "tokens_per_sec" in r and "plain_gain" not in r:
            extra.append(f"{r['tokens_per_sec']:.0f} tok/s")
        if "baseline_tokens_per_sec" in r:
            extra.append(f"baseline {r['baseline_tokens_per_sec']:.0f} tok/s")
        if "baseline_peak_mib" in r:
            extra.append(f"extra peak memory {r['peak_mib']:.0f} vs {r['baseline_peak_mib']:.0f} MiB "
                         f"(at least {r['memory_ratio']:.0f}x less)")
        if "achieved_gflops" in r:
            extra.append(f"{r['achieved_gflops']:.1f} GFLOP/s = {100 * r['fraction_of_matmul']:.0f}% of matmul "
                         f"{r['matmul_gflops']:.1f}")
        if "baseline_psnr" in r:
            extra.append(f"ours {r['ours_s']:.0f} s to PSNR {r['ours_psnr']:.2f} in {r['ours_steps']} steps, baseline "
                         f"{r['baseline_s']:.0f} s to {r['baseline_psnr']:.2f}" + ("" if r["reached"] else
                                                                                   " (never reached)"))
        if "ratio_8x8" in r:
            extra.append(f"8x8: {r['ratio_8x8']:.2f}x; batch 8: {r['ratio_batch8']:.2f}x (16x16), "
                         f"{r['ratio_8x8_batch8']:.2f}x (8x8)")
        if "plain_gain" in r:
            extra.append(f"{r['placement']} placement: " + ", ".join(f"{k} {v:.0f}" for k, v in
                                                                    r["tokens_per_sec"].items())
                         + f" tok/s, 64x64/32x32 {r['ratio']:.2f}; KV cache gain {r['vs_recompute']:.2f}x at 64x64 "
                         f"(centred {r['centred_vs_recompute']:.2f}x), {r['plain_gain']:.2f}x on one window")
        if "note" in r:
            extra.append(r["note"])
        print(f"{name:<17} {ours:>12} {base:>12} {ratio:>7}  {'; '.join(extra)}", flush=True)
    for r in results.values():  # every entry says where it was measured
        r.update(device=str(device), hardware=hw, torch=torch.__version__, precision=precision, quick=args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")
