"""How samples are drawn, decided once: the sampling settings (a stage-2 config's `sample` section, with command-line
values in place), the one call that samples any stage-2 model with its own sampler (raster-order autoregressive
sampling with the sliding window and KV cache for a GPT, parallel decoding for a masked model), and the class a
completion is drawn in. generate.py, the training-time samples, utils.visualize and utils.sample_eval all use them."""
import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from transformer.gpt import GPT
from transformer.maskgit import CHOICE_TEMPERATURE, STEPS, sample_masked
from transformer.sampling import PLACEMENTS, likeliest_classes, raster_prefix, sample
from utils.core.config import check_option, choices, num
from utils.core.errors import UserError

# the settings of parallel decoding, which a GPT does not have: what each is, for the error that says so
MASKED_ONLY = {"steps": "the number of parallel decoding rounds", "choice_temperature": "the confidence noise"}
# and those of the sliding window of a GPT, which a masked model does not have (its windows are fixed)
GPT_ONLY = {"window_placement": "where a GPT's sliding window sits for each token"}


@dataclass
class SampleConfig:
    """The `sample` section of a stage-2 config."""
    temperature: float = num(1.0, above=0)  # logits divided by it before sampling
    top_k: Optional[int] = num(None, min=1)  # sample among the k likeliest codes; null: all
    top_p: Optional[float] = num(None, above=0, max=1)  # nucleus: the likeliest codes up to this mass; null: all
    cfg_scale: float = num(1.0, min=0)  # classifier-free guidance (class-conditional models)
    steps: int = num(STEPS, min=1)      # maskgit: parallel decoding rounds per window
    choice_temperature: float = num(CHOICE_TEMPERATURE, min=0)  # maskgit: initial scale of the confidence noise
                                        # (annealed to 0)
    window_placement: str = choices(*PLACEMENTS, default="centred")  # a GPT on a grid larger than its window:
                                        # centred on each token (the paper's), or strided (moved across in strides of
                                        # half a window: the same quality, the KV cache kept ~4x longer)
    num: int = num(8, min=1)            # images sampled at each evaluation (last: the field shadows `num`)

    def with_options(self, model: GPT, **given) -> "SampleConfig":
        """These settings with the command-line values `given` (those not None) in their place, each checked against
        its key's range under its option's name (cfg_scale: --cfg-scale). The settings of parallel decoding given
        for a GPT are an error."""
        given = {k: v for k, v in given.items() if v is not None}
        for key, what in MASKED_ONLY.items():
            if key in given and not model.cfg.masked:
                raise UserError(f"{option(key)} is {what} of a masked model (model.kind=maskgit); this checkpoint is a "
                                "GPT, which samples token by token")
        for key, what in GPT_ONLY.items():
            if key in given and model.cfg.masked:
                raise UserError(f"{option(key)} is {what}; this checkpoint is a masked model (model.kind=maskgit), "
                                "which decodes fixed windows at half-window strides")
        for f in dataclasses.fields(self):
            if f.name in given and "choices" in f.metadata and given[f.name] not in f.metadata["choices"]:
                raise UserError(f"{option(f.name)} {given[f.name]} is not one of {', '.join(f.metadata['choices'])}")
            if f.name in given and "range" in f.metadata:
                check_option(option(f.name), given[f.name], **f.metadata["range"])
        return dataclasses.replace(self, **given)

    def described(self, model: GPT) -> dict:
        """The settings that sample this model (a GPT has no rounds), as reports name them."""
        keys = ["temperature", "top_k", "top_p", "cfg_scale"] + list(MASKED_ONLY if model.cfg.masked else GPT_ONLY)
        return {k: getattr(self, k) for k in keys}


def option(key: str) -> str:
    """The command-line option of a sample setting: cfg_scale -> --cfg-scale."""
    return "--" + key.replace("_", "-")


def draw(model: GPT, batch: int, settings: SampleConfig, grid=None, classes=None, *, generator=None, cond=None,
         tokens=None, keep=None, use_cache: bool = True) -> torch.Tensor:
    """(B, H, W) sampled token grids, by the model's own sampler with `settings`. grid, classes, cond, tokens and keep
    mean what they mean for transformer.sampling.sample; use_cache is a GPT's (a masked model has no cache)."""
    s = settings
    common = dict(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, cfg_scale=s.cfg_scale, generator=generator,
                  cond=cond, tokens=tokens, keep=keep)
    if model.cfg.masked:
        return sample_masked(model, batch, grid, classes, steps=s.steps, choice_temperature=s.choice_temperature,
                             **common)
    return sample(model, batch, grid, classes, use_cache=use_cache, placement=s.window_placement, **common)


def completion_classes(model: GPT, tokens: torch.Tensor, keep: torch.Tensor) -> tuple[Optional[list[int]], str]:
    """The class a completion of `tokens` (B, H, W) keeping `keep` (H, W) is drawn in when none is asked for, and
    which policy chose it: none for a model without classes ("none"); the null class for a masked model, so that
    the kept tokens decide ("null_class"); for a GPT, per grid, the class under which its kept tokens are likeliest
    ("likeliest_class"), which needs them to be a raster prefix (the order the GPT reads them in)."""
    cfg = model.cfg
    if not cfg.num_classes:
        return None, "none"
    if cfg.masked:
        return [cfg.num_classes], "null_class"
    if not torch.equal(keep.cpu(), raster_prefix(tuple(keep.shape), int(keep.sum()))):
        raise ValueError("a class is picked by the likelihood of kept tokens in raster order only")
    wh, ww = cfg.window
    return likeliest_classes(model, tokens, int(keep[:wh, :ww].sum())), "likeliest_class"
