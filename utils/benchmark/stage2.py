"""Stage-2 benchmarks: our GPT training step on cached tokens against the official step (which encodes every
batch), and sampling with the KV cache against recomputing the context, plain and by sliding window."""
import torch
import torch.nn.functional as F

from transformer.gpt import GPT, GPTConfig
from transformer.sampling import sample
from utils.benchmark.harness import alternate
from utils.benchmark.official import official_autoencoder, official_available, official_gpt
from utils.benchmark.stage1 import stage1_arch


def bench_stage2(device, quick: bool, ctx) -> dict:
    """Our GPT step on cached tokens vs the official one (Net2NetTransformer's step: the frozen first stage
    encodes the batch, then minGPT's step), at one architecture for both."""
    torch.manual_seed(0)
    B, K, C = (16 if quick else 32), 1024, 10
    L, H, W = 4, 4, 256
    gpt = GPT(GPTConfig(codebook_size=K, window=(8, 8), num_classes=C, n_layer=L, n_head=H, n_embd=W)).to(device)
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
    torch.manual_seed(0)
    side = 8 if (quick or sliding) else 16
    L, C = (4, 256) if quick else (8, 512)
    gpt = GPT(GPTConfig(codebook_size=1024, window=(side, side), n_layer=L, n_head=8, n_embd=C)).to(device).eval()
    B = 4
    g = lambda: torch.Generator(device).manual_seed(0)  # noqa: E731
    if sliding:
        grid = (2 * side, 2 * side)
        r = alternate(lambda: sample(gpt, B, grid, generator=g()),
                      lambda: sample(gpt, B, grid, generator=g(), use_cache=False),
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
