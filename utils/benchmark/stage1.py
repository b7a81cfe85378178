"""Stage-1 benchmarks: our training step against the official one (before and after disc_start), and the
achieved FLOP rate of ours next to a large matmul's."""
import warnings

import torch

from utils.benchmark.harness import alternate
from utils.benchmark.official import official_available, official_stage1, official_step_fn
from vqgan.discriminator import PatchDiscriminator
from vqgan.losses import LossWeights, discriminator_loss, generator_backward
from vqgan.lpips import LPIPS
from vqgan.model import VQGAN, VQGANConfig


def stage1_arch(quick: bool) -> dict:
    return dict(size=32, ch=32 if quick else 64, mult=[1, 2, 2], res=1 if quick else 2, attn=[8], z=64, K=1024,
                D=64, batch=8 if quick else 16)


def our_stage1(arch: dict, device):
    cfg = VQGANConfig(image_size=arch["size"], channels=3, ch=arch["ch"], ch_mult=arch["mult"],
                      num_res_blocks=arch["res"], attn_resolutions=arch["attn"], z_channels=arch["z"],
                      codebook_size=arch["K"], codebook_dim=arch["D"], codebook_l2_norm=False, codebook_restart_after=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lpips = LPIPS("random").to(device)
    return VQGAN(cfg).to(device), PatchDiscriminator(3, 64, 3).to(device), lpips


def our_step_fn(model, disc, lpips, x, gan: bool, ctx, lr=1e-4, weights: LossWeights = None, disc_loss: str = "hinge"):
    """One step of train_vqgan.py's loop: a single forward, the GAN only from disc_start. weights: the loss weights
    (default: perceptual and GAN terms at 1)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.9))
    d_opt = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.9))
    weights = weights or LossWeights(perceptual=1.0, disc=1.0)
    last = model.decoder.last_layer

    def step():
        with ctx:
            x_rec, vq_loss, _ = model(x)
        generator_backward(x, x_rec, vq_loss, last, weights, lpips=lpips, disc=disc if gan else None, autocast=ctx)
        if gan:
            with ctx:
                d = discriminator_loss(disc, x, x_rec, disc_loss)
            d["d_loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if gan:
            d_opt.step()
            d_opt.zero_grad(set_to_none=True)
        model.codebook.step_update()
    return step


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
