"""The one call that samples any stage-2 model with its own sampler: raster-order autoregressive sampling
(sliding window, KV cache) for a GPT, parallel decoding for a masked (MaskGIT) model."""
from typing import Optional

import torch

from transformer.gpt import GPT
from transformer.maskgit import CHOICE_TEMPERATURE, STEPS, sample_masked
from transformer.sampling import sample


def draw(model: GPT, batch: int, grid=None, classes=None, *, steps: Optional[int] = None,
         choice_temperature: float = CHOICE_TEMPERATURE, use_cache: bool = True, **options) -> torch.Tensor:
    """(B, H, W) sampled token grids. options: temperature, top_k, top_p, cfg_scale, generator, cond, tokens, keep
    (transformer.sampling.sample). steps and choice_temperature are a masked model's; use_cache a GPT's (a masked
    model has no cache to use)."""
    if model.cfg.masked:
        return sample_masked(model, batch, grid, classes, steps=steps or STEPS,
                             choice_temperature=choice_temperature, **options)
    if steps is not None:
        raise ValueError("steps are the decoding rounds of a masked (maskgit) model; a GPT samples token by token")
    return sample(model, batch, grid, classes, use_cache=use_cache, **options)


def sample_options(sample_cfg, model: GPT, **given) -> dict:
    """The keyword arguments of `draw` that a stage-2 config's `sample` section (its dataclass or its dict) sets;
    `given` values that are not None (command-line options) replace them."""
    get = sample_cfg.get if isinstance(sample_cfg, dict) else lambda k, default=None: getattr(sample_cfg, k, default)
    opts = {k: get(k) for k in ("temperature", "top_k", "top_p", "cfg_scale")}
    if model.cfg.masked:
        opts.update(steps=get("steps", STEPS), choice_temperature=get("choice_temperature", CHOICE_TEMPERATURE))
    opts.update({k: v for k, v in given.items() if v is not None})
    return opts
