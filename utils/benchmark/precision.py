"""bf16 against fp32 for the shapes quickstart's two models, side by side in one process: what
train.precision=auto decides. Run it as is, and with `ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2` to see a
CPU without native bf16 (most laptops), where bf16 is emulated."""
import os

import torch

from transformer.gpt import GPT, GPTConfig
from utils.benchmark.harness import ROOT, alternate
from utils.core.config import load_config
from utils.core.precision import autocast_context
from utils.train.stage1_config import Stage1Config
from vqgan.losses import LossWeights, generator_backward
from vqgan.model import VQGAN


def bench_bf16(device, quick: bool, model: str) -> dict:
    """One training step of the shapes VQGAN (batch 32) or of the shapes GPT (4 x 128, batch 64): ours = bf16
    autocast, baseline = fp32; ratio = how many times faster bf16 is (below 1: slower)."""
    torch.manual_seed(0)
    if model == "vqgan":
        cfg = load_config(Stage1Config, os.path.join(ROOT, "configs", "shapes_vqgan.yaml")).model
        net = VQGAN(cfg).to(device)
        x = torch.rand(16 if quick else 32, 3, 32, 32, device=device) * 2 - 1
        weights = LossWeights(1.0, 0.0, 0.0, 1.0, 0.1)

        def loss_of(ctx):
            with ctx:
                x_rec, vq_loss, _ = net(x)
            generator_backward(x, x_rec, vq_loss, net.decoder.last_layer, weights, autocast=ctx)
        what = f"shapes VQGAN training step, batch {x.shape[0]}"
    else:
        net = GPT(GPTConfig(codebook_size=128, window=(8, 8), num_classes=5, n_layer=4, n_head=4, n_embd=128)).to(device)
        B = 32 if quick else 64
        seq = torch.randint(0, 128, (B, 64), device=device)
        inp = torch.cat([torch.full((B, 1), 128, device=device), seq[:, :-1]], 1)

        def loss_of(ctx):
            with ctx:
                _, loss = net(inp, seq)
            loss.backward()
        what = f"shapes GPT (4 x 128) training step, batch {B}"
    opt = torch.optim.Adam(net.parameters(), 1e-4)

    def step(precision):
        def run():
            loss_of(autocast_context(device, precision))
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run
    r = alternate(step("bf16"), step("fp32"), device, warmup=2, repeats=5 if quick else 15)
    r["what"] = f"{what}: bf16 autocast (ours) against fp32 (baseline)"
    return r
