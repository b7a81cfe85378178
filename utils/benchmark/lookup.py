"""The codebook lookup benchmark: quantizing N vectors against a 16384-code book, ours against the official
quantizer, time and peak memory. On a CPU each side runs in a fresh process (this module, run as
`python -m utils.benchmark.lookup SIDE N K D REPEATS`), so that its peak memory is its own."""
import os
import resource
import subprocess
import sys
import time

import torch

from utils.benchmark.harness import ROOT, timed
from utils.benchmark.official import official_available

# glibc moves its mmap threshold up as large blocks are freed, after which freed blocks stay resident in
# per-thread heaps depending on which thread freed them: the resident peak then varies from run to run.
# A fixed threshold serves every large tensor from its own mapping, returned when freed, on both sides.
_MALLOC_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}


def quantizer(side: str, K: int, D: int) -> torch.nn.Module:
    """Ours or the official quantizer (`side` "ours" or "base") with K codes of dimension D, in eval mode."""
    if side == "ours":
        from vqgan.codebook import Codebook
        return Codebook(K, D).eval()
    from taming.modules.vqvae.quantize import VectorQuantizer2
    return VectorQuantizer2(K, D, beta=0.25).eval()


def peak_resident_kib() -> float:
    """The peak resident size of this process, KiB: VmHWM, not ru_maxrss, which Linux carries over from the
    parent across fork and exec (it would report the benchmark process's footprint when that is larger)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except OSError:  # no /proc (macOS: ru_maxrss in bytes)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)


def resident_kib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return os.sysconf("SC_PAGE_SIZE") * int(f.read().split()[1]) / 1024
    except OSError:
        return peak_resident_kib()


def measure_here(side: str, N: int, K: int, D: int, repeats: int) -> tuple[float, float]:
    """(median ms, MiB above what the process held before the lookup) of `repeats` lookups in this process."""
    torch.manual_seed(0)
    z = torch.randn(N // 256, D, 16, 16)
    emb = torch.randn(K, D)
    q = quantizer(side, K, D)
    q.embedding.weight.data.copy_(emb)
    base = resident_kib()
    with torch.no_grad():
        q(z)
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            q(z)
            ts.append((time.perf_counter() - t) * 1000)
    ts.sort()
    return ts[len(ts) // 2], max(0.0, peak_resident_kib() - base) / 1024.0


def bench_codebook(device, quick: bool) -> dict:
    """Quantizing N vectors against a 16384-code book: time and the peak memory above what the process
    held before the lookup, one process per side on CPU, the allocator's peak on GPU.
    Memory ratios count ours as at least 1 MiB."""
    N, K, D = (4096 if quick else 16384), 16384, 256
    reps = 3 if quick else 5
    res = {}
    if device.type == "cuda":
        z = torch.randn(N // 256, D, 16, 16, device=device)
        for side in ("ours", "base"):
            q = quantizer(side, K, D).to(device)
            with torch.no_grad():
                q(z)
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
                ts = sorted(timed(lambda: q(z), device) for _ in range(reps))
            res[side] = (ts[len(ts) // 2], (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20)
    else:
        for side in ("ours", "base") if official_available() else ("ours",):
            out = subprocess.run([sys.executable, "-m", "utils.benchmark.lookup", side, str(N), str(K), str(D),
                                  str(reps)], capture_output=True, text=True, check=True, env=_MALLOC_ENV, cwd=ROOT)
            ms, mb = out.stdout.split()
            res[side] = (float(ms), float(mb))
    what = f"quantize {N} vectors of {D} against {K} codes (forward, no grad)"
    if "base" not in res:
        return {"median_ms": res["ours"][0], "peak_mib": res["ours"][1], "what": what,
                "note": "official taming-transformers not installed: baseline skipped"}
    return {"median_ms": res["ours"][0], "baseline_median_ms": res["base"][0], "ratio": res["base"][0] / res["ours"][0],
            "peak_mib": res["ours"][1], "baseline_peak_mib": res["base"][1],
            "memory_ratio": res["base"][1] / max(res["ours"][1], 1.0), "what": what}


if __name__ == "__main__":
    side_, n_, k_, d_, reps_ = sys.argv[1], *map(int, sys.argv[2:6])
    print(*measure_here(side_, n_, k_, d_, reps_))
