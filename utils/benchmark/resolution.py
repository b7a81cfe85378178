"""What resolution costs: one stage-1 training step at 32, 64, 128 and 256 pixels, batch 1, for the laptop
architecture (configs/custom_cpu_vqgan.yaml) and the paper's f16 one (configs/custom_vqgan.yaml), each built at
each size as its own model and trained with its config's losses after disc_start (LPIPS with random weights where the
config uses it: the same work as the ImageNet weights, offline). Time and peak memory; on a CPU each (architecture,
size) runs in a fresh process (`python -m utils.benchmark.resolution ARCH SIZE REPEATS`), so that its peak resident
memory is its own; the peak is taken above what the process held before the models were built, as the lookup
benchmark measures (the whole process's beside it); on a GPU the allocator's peak."""
import os
import subprocess
import sys
import warnings
from contextlib import nullcontext

import torch

from utils.benchmark.harness import ROOT, alternate, sync
from utils.benchmark.lookup import _MALLOC_ENV, peak_resident_kib, resident_kib
from utils.benchmark.stage1 import our_step_fn
from utils.core.config import load_config
from utils.train.stage1_config import Stage1Config
from vqgan.discriminator import PatchDiscriminator
from vqgan.losses import LossWeights
from vqgan.lpips import LPIPS
from vqgan.model import VQGAN

SIZES = (32, 64, 128, 256)
ARCHS = {"custom_cpu": "custom_cpu_vqgan", "paper_f16": "custom_vqgan"}  # name -> config


def step_fn(arch: str, size: int, device):
    """One training step (generator, then discriminator, both optimizers) of config ARCHS[arch] at size x size."""
    cfg = load_config(Stage1Config, os.path.join(ROOT, "configs", f"{ARCHS[arch]}.yaml"),
                      [f"data.image_size={size}", "data.crop_size=null", "data.channels=3"])
    lc = cfg.loss
    torch.manual_seed(0)
    model = VQGAN(cfg.model).to(device)
    disc = PatchDiscriminator(3, lc.disc_channels, lc.disc_layers).to(device)
    lpips = None
    if lc.perceptual_weight > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lpips = LPIPS("random").to(device)
    weights = LossWeights(lc.l1_weight, lc.l2_weight, lc.perceptual_weight, lc.codebook_weight, lc.disc_weight)
    x = torch.rand(1, 3, size, size, device=device) * 2 - 1
    return our_step_fn(model, disc, lpips, x, True, nullcontext(), weights=weights, disc_loss=lc.disc_loss)


def measure_here(arch: str, size: int, repeats: int, device=torch.device("cpu")) -> tuple[float, float, float]:
    """(median ms, peak MiB above what the process held before the models were built, the process's whole peak MiB)
    of `repeats` steps after one warm-up step in this process. On a CPU the resident size (what the size costs:
    weights, optimizer state, activations; and what a machine must hold), on a GPU the allocator's."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if cuda else resident_kib() * 1024
    step = step_fn(arch, size, device)
    ms = alternate(step, None, device, warmup=1, repeats=repeats)["median_ms"]
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) if cuda else peak_resident_kib() * 1024
    return ms, (peak - base) / 2 ** 20, peak / 2 ** 20


def bench_resolution(device, quick: bool) -> dict:
    repeats = 1 if quick else 3
    out = {}
    for arch in ARCHS:
        ms, mb, whole = {}, {}, {}
        for size in SIZES:
            if device.type == "cuda":
                t, m, w = measure_here(arch, size, repeats, device)
            else:
                r = subprocess.run([sys.executable, "-m", "utils.benchmark.resolution", arch, str(size), str(repeats)],
                                   capture_output=True, text=True, env=_MALLOC_ENV, cwd=ROOT)
                if r.returncode:
                    raise RuntimeError(f"resolution benchmark {arch} at {size}: {r.stderr.strip().splitlines()[-1]}")
                t, m, w = map(float, r.stdout.split())
            ms[str(size)], mb[str(size)], whole[str(size)] = round(t, 1), round(m, 1), round(w, 1)
        base = str(SIZES[0])
        out[arch] = {"config": f"configs/{ARCHS[arch]}.yaml", "ms": ms, "peak_mb": mb, "process_peak_mb": whole,
                     "ms_ratio": {s: round(v / ms[base], 2) for s, v in ms.items()},
                     "peak_ratio": {s: round(v / mb[base], 2) for s, v in mb.items()}}
    big, small = str(SIZES[-1]), str(SIZES[0])
    out["median_ms"] = out["custom_cpu"]["ms"][big]
    out["what"] = (f"one stage-1 training step at {', '.join(map(str, SIZES))} pixels, batch 1, after disc_start, "
                   "each config's losses, fp32; peak_mb: the peak above the process before the models were built, a "
                   f"fresh process per size ({'allocator' if device.type == 'cuda' else 'resident'}); process_peak_mb: "
                   "the whole process's")
    out["note"] = "; ".join(f"{a}: {out[a]['ms'][small]:.0f} -> {out[a]['ms'][big]:.0f} ms, "
                            f"{out[a]['peak_mb'][small]:.0f} -> {out[a]['peak_mb'][big]:.0f} MB ({small} -> {big} px)"
                            for a in ARCHS)
    return out


if __name__ == "__main__":
    arch_, size_, reps_ = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(*measure_here(arch_, size_, reps_))
