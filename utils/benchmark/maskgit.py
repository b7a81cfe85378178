"""Parallel decoding (MaskGIT, 8 rounds) against autoregressive sampling with the KV cache: models of the same
size and random weights, the same grids, measured alternately in one run, with the arithmetic of each side."""
import torch

from transformer.gpt import GPT, GPTConfig
from transformer.maskgit import sample_masked
from transformer.sampling import sample
from utils.benchmark.harness import alternate

LAYERS, HEADS, WIDTH, CODES, ROUNDS = 4, 4, 128, 128, 8  # the shapes quickstart's GPT and codebook


def gflop_per_image(cfg: GPTConfig, rounds: int) -> float:
    """Multiply-adds x 2 of one image's sampling: per token and layer 24 d^2 for the projections and MLP and
    4 d per attended key, plus 2 d K for the head. The cached GPT runs each of the L positions once (the prefix
    and L - 1 codes), position p attending to p + 1 keys; the masked model runs all L + 1 positions in every
    round, each attending to all of them."""
    L, d, K, n = cfg.window[0] * cfg.window[1], cfg.n_embd, cfg.codebook_size, cfg.n_layer
    if not cfg.masked:
        return sum(n * (24 * d * d + 4 * (p + 1) * d) + 2 * d * K for p in range(L)) / 1e9
    T = L + 1
    return rounds * (n * (T * 24 * d * d + 4 * T * T * d) + T * 2 * d * K) / 1e9


def bench_maskgit(device, quick: bool) -> dict:
    """`ratio` = MaskGIT / GPT-KV tokens per second at batch 1 on 16x16 grids, `ratio_8x8` the same on 8x8; batch 8
    rows beside them."""
    out = {}
    for side in (8, 16):
        models = {}
        for kind in ("gpt", "maskgit"):
            torch.manual_seed(0)
            cfg = GPTConfig(codebook_size=CODES, window=(side, side), n_layer=LAYERS, n_head=HEADS, n_embd=WIDTH,
                            kind=kind)
            models[kind] = GPT(cfg).to(device).eval()
        for batch in (1, 8):
            g = lambda: torch.Generator(device).manual_seed(0)  # noqa: E731
            r = alternate(lambda: sample_masked(models["maskgit"], batch, generator=g(), steps=ROUNDS),
                          lambda: sample(models["gpt"], batch, generator=g()),
                          device, warmup=1, repeats=3 if quick else 7)
            n = batch * side * side
            out[f"{side}x{side}_batch{batch}"] = {
                "maskgit_ms": r["median_ms"], "gpt_kv_ms": r["baseline_median_ms"], "ratio": r["ratio"],
                "maskgit_tokens_per_sec": n / (r["median_ms"] / 1000),
                "gpt_kv_tokens_per_sec": n / (r["baseline_median_ms"] / 1000),
                "maskgit_gflop_per_image": gflop_per_image(models["maskgit"].cfg, ROUNDS),
                "gpt_kv_gflop_per_image": gflop_per_image(models["gpt"].cfg, ROUNDS)}
    main = out["16x16_batch1"]
    return {"median_ms": main["maskgit_ms"], "baseline_median_ms": main["gpt_kv_ms"], "ratio": main["ratio"],
            "ratio_8x8": out["8x8_batch1"]["ratio"], "ratio_batch8": out["16x16_batch8"]["ratio"],
            "ratio_8x8_batch8": out["8x8_batch8"]["ratio"],
            "tokens_per_sec": main["maskgit_tokens_per_sec"], "baseline_tokens_per_sec": main["gpt_kv_tokens_per_sec"],
            "rows": out,
            "what": f"MaskGIT ({ROUNDS} rounds) vs GPT with KV cache, {LAYERS} x {WIDTH}, {CODES} codes, random "
                    "weights, unconditional; median_ms and ratio: one 16x16 image (batch 1); ratio = MaskGIT tokens/s "
                    "over GPT-KV tokens/s; rows: 8x8 and 16x16 at batch 1 and 8, with GFLOP per image"}
