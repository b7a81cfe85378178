"""Speed benchmarks, ours against a baseline measured side by side in the same process.

    python -m utils.benchmark [--json out.json] [--device cpu|cuda] [--quick] [--only stage1_step,sample_kv]

Each benchmark warms up, then alternates candidate and baseline runs and reports medians. `ratio` is
how many times faster ours is (baseline time / our time). The training-step and lookup baselines are the
official taming-transformers code (`pip install --no-deps taming-transformers-rom1504 einops` and
`pip install requests`); without it those baselines are skipped with a note.
"""
import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import torch
import torch.nn as nn

from utils.run import autocast_context

BENCHMARKS = ("stage1_step", "stage1_step_gan", "stage2_step", "sample_kv", "sample_sliding", "codebook_lookup",
              "flops")


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - t) * 1000.0


def alternate(ours, base, device, warmup: int, repeats: int) -> dict:
    """Medians in ms of `ours` and `base` (None: no baseline), run alternately after warm-up."""
    for _ in range(warmup):
        ours()
        if base is not None:
            base()
    a, b = [], []
    for _ in range(repeats):
        a.append(timed(ours, device))
        if base is not None:
            b.append(timed(base, device))
    out = {"median_ms": statistics.median(a), "runs": repeats}
    if base is not None:
        out["baseline_median_ms"] = statistics.median(b)
        out["ratio"] = out["baseline_median_ms"] / out["median_ms"]
    return out


# ----------------------------------------------------------------------------- official code, patched offline

def official_available() -> bool:
    try:
        import taming.modules.diffusionmodules.model  # noqa: F401
        import taming.modules.losses.vqperceptual  # noqa: F401  (imports its LPIPS, which we patch)
        return True
    except Exception:
        return False


def official_autoencoder(arch: dict, device) -> nn.ModuleDict:
    """The official encoder, decoder, quantizer and 1x1 convs of VQModel, at `arch`."""
    from taming.modules.diffusionmodules.model import Decoder, Encoder
    from taming.modules.vqvae.quantize import VectorQuantizer2
    dd = dict(double_z=False, z_channels=arch["z"], resolution=arch["size"], in_channels=3, out_ch=3, ch=arch["ch"],
              ch_mult=arch["mult"], num_res_blocks=arch["res"], attn_resolutions=arch["attn"], dropout=0.0)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # its prints
        warnings.simplefilter("ignore")
        return nn.ModuleDict({"encoder": Encoder(**dd), "decoder": Decoder(**dd),
                              "quantize": VectorQuantizer2(arch["K"], arch["D"], beta=0.25),  # legacy, as VQModel
                              "quant_conv": nn.Conv2d(arch["z"], arch["D"], 1),
                              "post_quant_conv": nn.Conv2d(arch["D"], arch["z"], 1)}).to(device)


def official_stage1(arch: dict, device):
    """The official autoencoder and VQLPIPSWithDiscriminator. Its LPIPS downloads weights in __init__: the
    VGG16 is built randomly initialised instead, and the linear heads are loaded from the `lpips`
    package's vgg.pth (the same file the official code downloads)."""
    import taming.modules.losses.lpips as tl
    from taming.modules.losses.vqperceptual import VQLPIPSWithDiscriminator

    import types

    import torchvision

    from vqgan.lpips import lpips_head_weights_path
    vgg16 = torchvision.models.vgg16
    # only the official module's view of torchvision is replaced, so nothing else is affected
    tl.models = types.SimpleNamespace(vgg16=lambda pretrained=False, **k: vgg16(weights=None))

    def load_heads(self, name="vgg_lpips"):
        self.load_state_dict(torch.load(lpips_head_weights_path(), map_location="cpu", weights_only=True),
                             strict=False)
    tl.LPIPS.load_from_pretrained = load_heads
    ae = official_autoencoder(arch, device)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # its prints
        warnings.simplefilter("ignore")
        loss = VQLPIPSWithDiscriminator(disc_start=arch["disc_start"], disc_num_layers=3, disc_ndf=64).to(device)
    return ae, loss


def official_step_fn(ae, loss, x, global_step, lr=1e-4):
    """What the official Lightning loop does per batch: one training_step per optimizer, each with its
    own forward pass. Lightning's optimizer toggling leaves only the current optimizer's parameters
    trainable: no discriminator weight gradients in the generator step, no autoencoder graph in the
    discriminator step."""
    opt_ae = torch.optim.Adam(ae.parameters(), lr=lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(loss.discriminator.parameters(), lr=lr, betas=(0.5, 0.9))

    def forward():
        h = ae["quant_conv"](ae["encoder"](x))
        quant, qloss, _ = ae["quantize"](h)
        return ae["decoder"](ae["post_quant_conv"](quant)), qloss

    def step():
        loss.discriminator.requires_grad_(False)
        xrec, qloss = forward()
        aeloss, _ = loss(qloss, x, xrec, 0, global_step, last_layer=ae["decoder"].conv_out.weight, split="train")
        opt_ae.zero_grad(set_to_none=True)
        aeloss.backward()
        opt_ae.step()
        loss.discriminator.requires_grad_(True)
        with torch.no_grad():
            xrec, qloss = forward()
        dloss, _ = loss(qloss, x, xrec, 1, global_step, last_layer=ae["decoder"].conv_out.weight, split="train")
        opt_d.zero_grad(set_to_none=True)
        dloss.backward()
        opt_d.step()
    return step


# ----------------------------------------------------------------------------- ours

def our_stage1(arch: dict, device):
    from vqgan.discriminator import PatchDiscriminator
    from vqgan.lpips import LPIPS
    from vqgan.model import VQGAN, VQGANConfig
    cfg = VQGANConfig(ch=arch["ch"], ch_mult=arch["mult"], num_res_blocks=arch["res"], attn_resolutions=arch["attn"],
                      z_channels=arch["z"], codebook_size=arch["K"], codebook_dim=arch["D"], codebook_l2_norm=False,
                      codebook_restart_after=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lpips = LPIPS("random").to(device)
    return VQGAN(cfg, arch["size"]).to(device), PatchDiscriminator(3, 64, 3).to(device), lpips


def our_step_fn(model, disc, lpips, x, gan: bool, ctx, lr=1e-4):
    """One step of train_vqgan.py's loop: a single forward, the GAN only from disc_start."""
    from vqgan.losses import LossWeights, discriminator_loss, generator_backward
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.9))
    d_opt = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.9))
    weights = LossWeights(perceptual=1.0, disc=1.0)
    last = model.decoder.last_layer

    def step():
        with ctx:
            x_rec, vq_loss, _ = model(x)
        generator_backward(x, x_rec, vq_loss, last, weights, lpips, disc if gan else None, 1.0, ctx)
        if gan:
            with ctx:
                d = discriminator_loss(disc, x, x_rec)
            d["d_loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if gan:
            d_opt.step()
            d_opt.zero_grad(set_to_none=True)
        model.codebook.step_update()
    return step


def stage1_arch(quick: bool) -> dict:
    return dict(size=32, ch=32 if quick else 64, mult=[1, 2, 2], res=1 if quick else 2, attn=[8], z=64, K=1024,
                D=64, batch=8 if quick else 16)


def bench_stage1(device, quick: bool, gan: bool, ctx) -> dict:
    arch = stage1_arch(quick)
    torch.manual_seed(0)
    x = torch.rand(arch["batch"], 3, arch["size"], arch["size"], device=device) * 2 - 1
    model, disc, lpips = our_stage1(arch, device)
    ours = our_step_fn(model, disc, lpips, x, gan, ctx)
    base, note = None, None
    if official_available():
        arch["disc_start"] = 0 if gan else 10 ** 9
        ae, loss = official_stage1(arch, device)
        official_step = official_step_fn(ae, loss, x, global_step=1)

        def official():
            with ctx:
                official_step()
        base = official
    else:
        note = "official taming-transformers not installed: baseline skipped"
    r = alternate(ours, base, device, warmup=1 if quick else 2, repeats=3 if quick else 7)
    r.update(batch=arch["batch"], what=f"one training step, 32x32, batch {arch['batch']}, "
                                       f"{'after' if gan else 'before'} disc_start")
    if note:
        r["note"] = note
    return r


def official_gpt(vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int):
    """The official minGPT. Its module imports `top_k_top_p_filtering` from `transformers` for sampling
    helpers the training step never calls (and current `transformers` no longer has); when that import
    fails, a stand-in module is visible only while the official module is imported."""
    import types
    try:
        from taming.modules.transformer.mingpt import GPT as OfficialGPT
    except ImportError:
        saved = sys.modules.get("transformers")
        sys.modules["transformers"] = types.SimpleNamespace(top_k_top_p_filtering=None)
        try:
            from taming.modules.transformer.mingpt import GPT as OfficialGPT
        finally:
            if saved is None:
                del sys.modules["transformers"]
            else:
                sys.modules["transformers"] = saved
    return OfficialGPT(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                       embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0)


def bench_stage2(device, quick: bool, ctx) -> dict:
    """Our GPT step on cached tokens vs the official one (Net2NetTransformer's step: the frozen first stage
    encodes the batch, then minGPT's step), at one architecture for both."""
    import torch.nn.functional as F

    from transformer.gpt import GPT, GPTConfig
    torch.manual_seed(0)
    B, K, C = (16 if quick else 32), 1024, 10
    L, H, W = 4, 4, 256
    gpt = GPT(GPTConfig(codebook_size=K, block_size=64, num_classes=C, n_layer=L, n_head=H, n_embd=W)).to(device)
    opt = gpt.configure_optimizer(3e-4, (0.9, 0.95), 0.1)
    x = torch.rand(B, 3, 32, 32, device=device) * 2 - 1
    labels = torch.randint(0, C, (B,), device=device)
    cached = torch.randint(0, K, (B, 64), device=device)  # what the token cache hands the loop

    def ours():
        inp = torch.cat([(K + labels)[:, None], cached[:, :-1]], 1)
        with ctx:
            _, loss = gpt(inp, cached)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    base, note = None, None
    if official_available():
        ae = official_autoencoder(dict(stage1_arch(False), D=8), device).eval().requires_grad_(False)
        ogpt = official_gpt(K + C + 1, 65, L, H, W).to(device)
        oopt = torch.optim.AdamW(ogpt.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)

        def official():
            with ctx:
                with torch.no_grad():  # encode_to_z: encoder, quant_conv, quantizer, every step
                    _, _, (_, _, idx) = ae["quantize"](ae["quant_conv"](ae["encoder"](x)))
                idx = idx.reshape(B, -1)
                logits, _ = ogpt(torch.cat([(K + labels)[:, None], idx[:, :-1]], 1))
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx.reshape(-1))
            loss.backward()
            oopt.step()
            oopt.zero_grad(set_to_none=True)
        base = official
    else:
        note = "official taming-transformers not installed: baseline skipped"
    r = alternate(ours, base, device, warmup=2, repeats=5 if quick else 10)
    r["what"] = (f"GPT step ({L} x {W}, batch {B}, 64 tokens of a 32x32 image): ours on cached tokens vs the "
                 f"official minGPT step after encoding the batch with the official first stage")
    if note:
        r["note"] = note
    return r


def bench_sampling(device, quick: bool, sliding: bool) -> dict:
    from transformer.gpt import GPT, GPTConfig
    from transformer.sampling import sample, sliding_window_sample
    torch.manual_seed(0)
    side = 8 if (quick or sliding) else 16
    L, C = (4, 256) if quick else (8, 512)
    gpt = GPT(GPTConfig(codebook_size=1024, block_size=side * side, n_layer=L, n_head=8, n_embd=C)).to(device).eval()
    B = 4
    g = lambda: torch.Generator(device).manual_seed(0)  # noqa: E731
    if sliding:
        grid = (2 * side, 2 * side)
        r = alternate(lambda: sliding_window_sample(gpt, B, grid, (side, side), generator=g()),
                      lambda: sliding_window_sample(gpt, B, grid, (side, side), generator=g(), use_cache=False),
                      device, warmup=0, repeats=1 if quick else 2)
        n = B * grid[0] * grid[1]
        r.update(tokens_per_sec=n / (r["median_ms"] / 1000),
                 baseline_tokens_per_sec=n / (r["baseline_median_ms"] / 1000),
                 what=f"sliding window, grid {grid[0]}x{grid[1]}, window {side}x{side}, GPT {L} x {C}, batch {B}: "
                      f"KV cache vs recomputing the window context")
        return r
    r = alternate(lambda: sample(gpt, B, generator=g()), lambda: sample(gpt, B, generator=g(), use_cache=False),
                  device, warmup=0, repeats=1 if quick else 3)
    n = B * side * side
    r.update(tokens_per_sec=n / (r["median_ms"] / 1000), baseline_tokens_per_sec=n / (r["baseline_median_ms"] / 1000),
             what=f"{side}x{side} grid ({n // B} tokens), GPT {L} x {C}, batch {B}: KV cache vs recomputing the prefix")
    return r


_LOOKUP_CHILD = r"""
import resource, sys, time, torch
torch.manual_seed(0)
side, N, K, D = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
z = torch.randn(N // 256, D, 16, 16)
emb = torch.randn(K, D)
if side == "ours":
    from vqgan.codebook import Codebook
    q = Codebook(K, D).eval()
    q.embedding.weight.data.copy_(emb)
else:
    from taming.modules.vqvae.quantize import VectorQuantizer2
    q = VectorQuantizer2(K, D, beta=0.25).eval()
    q.embedding.weight.data.copy_(emb)
import os
def hwm():  # peak resident size of this process's memory, KiB
    try:
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    except OSError:  # no /proc (macOS: ru_maxrss in bytes)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
try:  # resident now, KiB
    base = os.sysconf("SC_PAGE_SIZE") * int(open("/proc/self/statm").read().split()[1]) / 1024
except OSError:
    base = hwm()
with torch.no_grad():
    q(z)
    ts = []
    for _ in range(int(sys.argv[5])):
        t = time.perf_counter(); q(z); ts.append((time.perf_counter() - t) * 1000)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec, so it would
# report the benchmark process's own footprint whenever that is larger than the child's
peak = hwm()
ts.sort()
print(ts[len(ts) // 2], max(0.0, peak - base) / 1024.0)
"""


# glibc moves its mmap threshold up as large blocks are freed, after which freed blocks stay resident in
# per-thread heaps depending on which thread freed them: the resident peak then varies from run to run.
# A fixed threshold serves every large tensor from its own mapping, returned when freed, on both sides.
_MALLOC_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}


def bench_codebook(device, quick: bool) -> dict:
    """Quantizing N vectors against a 16384-code book: time and the peak memory above what the process
    held before the lookup, one process per side on CPU (ru_maxrss), the allocator's peak on GPU.
    Memory ratios count ours as at least 1 MiB."""
    N, K, D = (4096 if quick else 16384), 16384, 256
    reps = 3 if quick else 5
    if device.type == "cuda":
        from taming.modules.vqvae.quantize import VectorQuantizer2

        from vqgan.codebook import Codebook
        z = torch.randn(N // 256, D, 16, 16, device=device)
        res = {}
        for side, q in (("ours", Codebook(K, D)), ("base", VectorQuantizer2(K, D, beta=0.25))):
            q = q.to(device).eval()
            with torch.no_grad():
                q(z)
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
                ts = sorted(timed(lambda: q(z), device) for _ in range(reps))
            res[side] = (ts[len(ts) // 2], (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20)
    else:
        res = {}
        for side in ("ours", "base") if official_available() else ("ours",):
            out = subprocess.run([sys.executable, "-c", _LOOKUP_CHILD, side, str(N), str(K), str(D), str(reps)],
                                 capture_output=True, text=True, check=True, env=_MALLOC_ENV,
                                 cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            ms, mb = out.stdout.split()
            res[side] = (float(ms), float(mb))
    what = f"quantize {N} vectors of {D} against {K} codes (forward, no grad)"
    if "base" not in res:
        return {"median_ms": res["ours"][0], "peak_mib": res["ours"][1], "what": what,
                "note": "official taming-transformers not installed: baseline skipped"}
    return {"median_ms": res["ours"][0], "baseline_median_ms": res["base"][0], "ratio": res["base"][0] / res["ours"][0],
            "peak_mib": res["ours"][1], "baseline_peak_mib": res["base"][1],
            "memory_ratio": res["base"][1] / max(res["ours"][1], 1.0), "what": what}


def bench_flops(device, quick: bool, ctx) -> dict:
    """Achieved GFLOP/s of our stage-1 step next to a large fp32 matmul's, measured in the same run."""
    from torch.utils.flop_counter import FlopCounterMode
    arch = stage1_arch(quick)
    torch.manual_seed(0)
    x = torch.rand(arch["batch"], 3, arch["size"], arch["size"], device=device) * 2 - 1
    model, disc, lpips = our_stage1(arch, device)
    step = our_step_fn(model, disc, lpips, x, False, ctx)
    step()
    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    counted = {str(k) for k in fc.get_flop_counts().get("Global", {})}
    if not any("scaled_dot_product" in k or "_flash" in k or "_efficient" in k for k in counted):
        # CPU SDPA is invisible to the counter: add QK^T and AV, forward (x1) and backward (x2), by formula
        B = arch["batch"]
        for m in model.modules():
            if m.__class__.__name__ == "AttnBlock":
                C = m.q.in_channels
                hw = _attn_tokens(model, m, arch)
                flops += 3 * 2 * (2 * B * hw * hw * C)
    r = alternate(step, None, device, warmup=1, repeats=3 if quick else 5)
    n = 2048 if quick else 4096
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    mm = alternate(lambda: a @ b, None, device, warmup=1, repeats=5)
    achieved = flops / (r["median_ms"] / 1000) / 1e9
    peak = 2 * n ** 3 / (mm["median_ms"] / 1000) / 1e9
    return {"median_ms": r["median_ms"], "gflop_per_step": flops / 1e9, "achieved_gflops": achieved,
            "matmul_gflops": peak, "fraction_of_matmul": achieved / peak,
            "what": f"our stage-1 step vs a {n}x{n} fp32 matmul"}


def _attn_tokens(model, block, arch) -> int:
    """Spatial positions seen by an attention block: the side at which it was placed, squared."""
    res = arch["size"]
    for stage in model.encoder.down:
        if any(a is block for a in stage.attn):
            return res * res
        if hasattr(stage, "downsample"):
            res //= 2
    if block is model.encoder.mid.attn_1 or block is model.decoder.mid.attn_1:
        return res * res
    res_up = res
    for stage in reversed(model.decoder.up):
        if any(a is block for a in stage.attn):
            return res_up * res_up
        if hasattr(stage, "upsample"):
            res_up *= 2
    return res * res


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None, help="write the results as one JSON object here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="reduced sizes (a few minutes on 2 CPU cores)")
    p.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16", "fp16"),
                   help="autocast precision (default: bf16 on CUDA, fp32 elsewhere)")
    args = p.parse_args(argv)
    names = BENCHMARKS if not args.only else tuple(n.strip() for n in args.only.split(","))
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"error: unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        sys.exit(2)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available here", file=sys.stderr)
        sys.exit(2)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    ctx = autocast_context(device, precision)
    results = {}
    runners = {"stage1_step": lambda: bench_stage1(device, args.quick, False, ctx),
               "stage1_step_gan": lambda: bench_stage1(device, args.quick, True, ctx),
               "stage2_step": lambda: bench_stage2(device, args.quick, ctx),
               "sample_kv": lambda: bench_sampling(device, args.quick, False),
               "sample_sliding": lambda: bench_sampling(device, args.quick, True),
               "codebook_lookup": lambda: bench_codebook(device, args.quick),
               "flops": lambda: bench_flops(device, args.quick, ctx)}
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPU threads"
    print(f"device {device} ({hw}), torch {torch.__version__}, {precision}, threads {torch.get_num_threads()}"
          f"{', quick' if args.quick else ''}")
    print(f"{'benchmark':<17} {'ours':>12} {'baseline':>12} {'ratio':>7}  notes")
    for name in names:
        t0 = time.time()
        r = runners[name]()
        r["seconds"] = round(time.time() - t0, 1)
        results[name] = r
        ours = f"{r['median_ms']:.1f} ms" if "median_ms" in r else "-"
        base = f"{r['baseline_median_ms']:.1f} ms" if "baseline_median_ms" in r else "-"
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
        extra = []
        if "tokens_per_sec" in r:
            extra.append(f"{r['tokens_per_sec']:.0f} tok/s")
        if "baseline_tokens_per_sec" in r:
            extra.append(f"baseline {r['baseline_tokens_per_sec']:.0f} tok/s")
        if "baseline_peak_mib" in r:
            extra.append(f"extra peak memory {r['peak_mib']:.0f} vs {r['baseline_peak_mib']:.0f} MiB "
                         f"(at least {r['memory_ratio']:.0f}x less)")
        if "achieved_gflops" in r:
            extra.append(f"{r['achieved_gflops']:.1f} GFLOP/s = {100 * r['fraction_of_matmul']:.0f}% of matmul "
                         f"{r['matmul_gflops']:.1f}")
        if "note" in r:
            extra.append(r["note"])
        print(f"{name:<17} {ours:>12} {base:>12} {ratio:>7}  {'; '.join(extra)}", flush=True)
    for r in results.values():  # every entry says where it was measured
        r.update(device=str(device), hardware=hw, torch=torch.__version__, precision=precision, quick=args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
