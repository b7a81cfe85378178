"""Cost as the canvas grows: sampling a layout-conditional scene GPT (the model section of
configs/scenes_seg_gpt.yaml, random weights, batch 1) over token canvases of 16x16 to 64x64 by the sliding window,
with each window placement, the KV cache against recomputing each token's window context."""
import os

import torch
import yaml

from transformer.gpt import GPT, GPTConfig
from transformer.sampling import PLACEMENTS, sample
from utils.benchmark.harness import ROOT, alternate

SIDES = (16, 32, 64)


def _yaml(name: str) -> dict:
    with open(os.path.join(ROOT, "configs", f"{name}.yaml")) as f:
        return yaml.safe_load(f)


def scene_gpt(device) -> GPT:
    """A GPT with the model section of configs/scenes_seg_gpt.yaml and the code counts of the scenes tokenizers."""
    gpt = _yaml("scenes_seg_gpt")["model"]
    codes = {name: _yaml(name)["model"]["codebook_size"]
             for name in ("scenes_vqgan", "scenes_seg_vqgan")}
    cfg = GPTConfig(codebook_size=codes["scenes_vqgan"], window=tuple(gpt["window"]),
                    cond_codebook_size=codes["scenes_seg_vqgan"], n_layer=gpt["n_layer"], n_head=gpt["n_head"],
                    n_embd=gpt["n_embd"])
    return GPT(cfg).to(device).eval()


def bench_canvas(device, quick: bool) -> dict:
    torch.manual_seed(0)
    gpt = scene_gpt(device)
    K = gpt.cfg.cond_codebook_size
    repeats = 1 if quick else 3

    def run(side, placement, use_cache=True):
        cond = torch.randint(0, K, (1, side, side), generator=torch.Generator().manual_seed(side)).to(device)
        return lambda: sample(gpt, 1, (side, side), cond=cond, generator=torch.Generator(device).manual_seed(0),
                              placement=placement, use_cache=use_cache)
    per_placement = {}
    for placement in PLACEMENTS:
        rates = {}
        for side in SIDES:
            rates[f"{side}x{side}"] = side * side / (alternate(run(side, placement), None, device, warmup=0,
                                                               repeats=repeats)["median_ms"] / 1000)
        big = alternate(run(SIDES[-1], placement), run(SIDES[-1], placement, use_cache=False), device, warmup=0,
                        repeats=repeats)
        per_placement[placement] = dict(tokens_per_sec=rates, vs_recompute=big["ratio"])
    wh, ww = gpt.cfg.window
    plain = alternate(run(wh, "centred"), run(wh, "centred", use_cache=False), device, warmup=1, repeats=3 * repeats)
    big_key = f"{SIDES[-1]}x{SIDES[-1]}"
    fastest = max(PLACEMENTS, key=lambda p: per_placement[p]["tokens_per_sec"][big_key])
    best = per_placement[fastest]
    rates = best["tokens_per_sec"]
    c = gpt.cfg
    return dict(
        placement=fastest, tokens_per_sec=rates, ratio=rates[big_key] / rates[f"{SIDES[-2]}x{SIDES[-2]}"],
        plain_gain=plain["ratio"], vs_recompute=best["vs_recompute"],
        centred_vs_recompute=per_placement["centred"]["vs_recompute"],
        centred_tokens_per_sec=per_placement["centred"]["tokens_per_sec"],
        what=f"sampling token canvases of {', '.join(f'{s}x{s}' for s in SIDES)} (GPT {c.n_layer} x {c.n_embd}, "
             f"window {wh}x{ww}, layout-conditional, random weights, batch 1, decoding excluded): image tokens/s")
