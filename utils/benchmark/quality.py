"""Time to quality: how long until the tokenizer is as good as the official code's after 500 steps.

Both sides train the same architecture on real Fashion-MNIST (32x32, grayscale) with the same losses
(L1 + codebook, no LPIPS, no GAN), batch 64, the same batches in the same order and the same threads:
- baseline: the official encoder, decoder and VectorQuantizer2 (embed_dim = z_channels, as in its configs),
  trained the official way (fp32, Adam 2e-4, betas 0.5/0.9, constant) for `steps` steps, then scored;
- ours: this project's VQGAN with the codebook recipe, learning rate, schedule (over the same `steps`) and
  precision (`auto`) of configs/fashion_mnist_vqgan.yaml, scored every `every` steps until its PSNR first
  reaches the baseline's final PSNR.
Scores (PSNR, SSIM, codebook usage, perplexity) use the first `n_eval` test images; scoring time is not counted.
"""
import os
import time

import torch

from utils.benchmark.harness import ROOT
from utils.benchmark.official import official_autoencoder, official_available
from utils.core.config import load_config
from utils.core.errors import UserError
from utils.core.precision import autocast_context, resolve_precision
from utils.data.registry import build_datasets
from utils.eval.reconstruction import ReconstructionScores
from utils.train.loop import clip_gradients, optimizer_step, set_lr
from utils.train.stage1_config import Stage1Config
from vqgan.losses import LossWeights, generator_backward
from vqgan.model import VQGAN

ARCH = dict(ch=32, mult=[1, 2, 2], res=1, attn=[8], z=64, K=512, size=32, channels=1)
FASHION_CONFIG = os.path.join(ROOT, "configs", "fashion_mnist_vqgan.yaml")


def fashion_batches(root: str, steps: int, batch: int, n_eval: int, seed: int = 0):
    """(train images (steps * batch, 1, 32, 32) in the order both sides see them, the first n_eval test images)."""
    cfg = load_config(Stage1Config, FASHION_CONFIG, [f"data.root={root}"])
    train, test = build_datasets(cfg.data, seed, augment=False)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    order = order.repeat(steps * batch // len(train) + 1)[:steps * batch]
    x = torch.stack([train[int(i)][0] for i in order])
    return x, torch.stack([test[i][0] for i in range(min(n_eval, len(test)))])


@torch.no_grad()
def score(reconstruct, x_eval: torch.Tensor, K: int, batch: int = 250) -> dict:
    """reconstruct(x) -> (x_rec, indices); PSNR and SSIM on [0, 1] images, codebook usage and perplexity."""
    scores = ReconstructionScores(K)
    for i in range(0, len(x_eval), batch):
        x = x_eval[i:i + batch]
        x_rec, idx = reconstruct(x)
        scores.update(x, x_rec.float().clamp(-1, 1), idx.cpu())
    r = scores.result()
    return {k: r[k] for k in ("psnr", "ssim", "codebook_usage", "perplexity")}


def train_official(x_train, x_eval, steps: int, batch: int, device) -> dict:
    torch.manual_seed(0)
    ae = official_autoencoder(dict(ARCH, D=ARCH["z"]), device).train()
    opt = torch.optim.Adam(ae.parameters(), lr=2e-4, betas=(0.5, 0.9))
    seconds = 0.0
    for step in range(steps):
        x = x_train[step * batch:(step + 1) * batch].to(device)
        t = time.perf_counter()
        quant, qloss, _ = ae["quantize"](ae["quant_conv"](ae["encoder"](x)))
        x_rec = ae["decoder"](ae["post_quant_conv"](quant))
        loss = (x - x_rec).abs().mean() + qloss  # L1 + codebook, as VQLPIPSWithDiscriminator without LPIPS or GAN
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seconds += time.perf_counter() - t
    ae.eval()

    def reconstruct(x):
        quant, _, (_, _, idx) = ae["quantize"](ae["quant_conv"](ae["encoder"](x.to(device))))
        return ae["decoder"](ae["post_quant_conv"](quant)).cpu(), idx
    return {"seconds": seconds, **score(reconstruct, x_eval, ARCH["K"])}


def train_ours(x_train, x_eval, steps: int, batch: int, device, target_psnr: float, every: int) -> dict:
    cfg = load_config(Stage1Config, FASHION_CONFIG, [
        f"model.ch={ARCH['ch']}", f"model.ch_mult={ARCH['mult']}", f"model.num_res_blocks={ARCH['res']}",
        f"model.attn_resolutions={ARCH['attn']}", f"model.z_channels={ARCH['z']}", f"model.codebook_size={ARCH['K']}",
        f"train.max_steps={steps}", "loss.perceptual_weight=0", f"loss.disc_start={steps}"])
    t = cfg.train
    precision, _ = resolve_precision(t.precision, device)
    ctx = autocast_context(device, precision)
    torch.manual_seed(0)
    model = VQGAN(cfg.model).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    weights = LossWeights(1.0, 0.0, 0.0, cfg.loss.codebook_weight, 0.0)  # L1 + codebook

    def reconstruct(x):
        x_rec, _, info = model(x.to(device))
        return x_rec.cpu(), info["indices"]
    seconds, reached, scores, trace = 0.0, None, None, []
    for step in range(steps):
        x = x_train[step * batch:(step + 1) * batch].to(device)
        tic = time.perf_counter()
        set_lr(step, t, (opt, t.lr))
        with ctx:
            x_rec, vq_loss, _ = model(x)
        generator_backward(x, x_rec, vq_loss, model.decoder.last_layer, weights, autocast=ctx)
        clip_gradients(opt, scaler, model.parameters(), t.grad_clip)
        optimizer_step(opt, scaler)
        model.codebook.step_update()
        seconds += time.perf_counter() - tic
        if (step + 1) % every == 0 or step + 1 == steps:
            model.eval()
            with ctx:
                scores = score(reconstruct, x_eval, ARCH["K"])
            model.train()
            trace.append({"step": step + 1, "seconds": seconds, "psnr": scores["psnr"]})
            if scores["psnr"] >= target_psnr:
                reached = step + 1
                break
    return {"seconds": seconds, "steps": step + 1, "reached": reached, "precision": precision, "trace": trace,
            **scores}


def bench_time_to_quality(device, quick: bool, root: str = "/usr/share/datasets/fashion-mnist", steps: int = 500,
                          batch: int = 64, n_eval: int = 2000, every: int = 50) -> dict:
    if not official_available():
        raise UserError("time_to_quality needs the official code as its baseline: pip install --no-deps "
                        "taming-transformers-rom1504 einops && pip install requests")
    if quick:
        steps, n_eval, every = 100, 500, 25
    x_train, x_eval = fashion_batches(root, steps, batch, n_eval)
    base = train_official(x_train, x_eval, steps, batch, device)
    ours = train_ours(x_train, x_eval, steps, batch, device, base["psnr"], every)
    return {"ratio": base["seconds"] / ours["seconds"] if ours["reached"] else 0.0,  # 0: never reached
            "baseline_s": base["seconds"], "ours_s": ours["seconds"], "baseline_psnr": base["psnr"],
            "ours_psnr": ours["psnr"], "ours_steps": ours["steps"], "reached": ours["reached"] is not None,
            "baseline_steps": steps, "baseline_ssim": base["ssim"], "ours_ssim": ours["ssim"],
            "baseline_codebook_usage": base["codebook_usage"], "ours_codebook_usage": ours["codebook_usage"],
            "baseline_perplexity": base["perplexity"], "ours_perplexity": ours["perplexity"],
            "ours_precision": ours["precision"], "ours_trace": ours["trace"], "eval_images": len(x_eval),
            "what": f"training seconds until our PSNR on {len(x_eval)} Fashion-MNIST test images first reaches the "
                    f"official code's after {steps} steps (batch {batch}, L1 + codebook, ch 32, mult 1,2,2, 1 res "
                    f"block, attention at 8, z 64, 512 codes); ratio = baseline seconds / ours"}
