"""The stage-2 config schema (`configs/*_gpt.yaml`), and its completion from the frozen stage-1 model.

`run` and `data` are the stage-1 sections (the data section's image size and channels default to the
stage-1 model's); `model` holds the GPT's size, `sample` the settings samples are drawn with.
"""
from dataclasses import dataclass, field, fields
from typing import Optional, Sequence

from transformer.draw import SampleConfig
from transformer.gpt import GPTConfig, GPTSection
from utils.core.config import ConfigError, choices, num
from utils.core.errors import UserError
from utils.train.stage1_config import BaseTrainConfig, DataConfig, RunConfig
from vqgan.model import VQGANConfig


@dataclass
class Stage1Ref:
    checkpoint: str = field(default="runs/shapes_vqgan/checkpoints/last.pt", metadata={"required": True})  # the
                                        # image tokenizer (a stage-1 checkpoint)
    condition_checkpoint: Optional[str] = None  # conditional models: the tokenizer of the data.condition maps


@dataclass
class TokenDataConfig(DataConfig):
    image_size: Optional[int] = num(None, min=1)  # None: the stage-1 model's
    channels: Optional[int] = choices(None, 1, 3, default=None)  # None: the stage-1 model's
    batch_size: int = num(64, min=1)    # token grids (or windows) per optimizer step and process


@dataclass
class Train2Config(BaseTrainConfig):
    lr: float = num(3e-4, above=0)      # AdamW's peak learning rate (after warm-up)
    optimizer: str = choices("adamw", "muon", default="adamw")  # muon: Muon for the blocks' weight matrices,
                                        # AdamW (lr, betas, weight_decay) for the rest (utils/train/optim.py)
    muon_lr: float = num(0.02, above=0)  # Muon's rate for those matrices, scaled by the same schedule
    betas: list[float] = num(factory=lambda: [0.9, 0.95], min=0, below=1)  # AdamW betas
    weight_decay: float = num(0.1, min=0)  # on the matmul weights (AdamW), never on Muon's
    warmup_steps: int = num(100, min=0)  # linear warm-up from 0 over this many steps
    lr_schedule: str = choices("constant", "cosine", default="cosine")  # after warm-up
    grad_clip: float = num(1.0, min=0)  # max global grad norm; 0 = off
    pkeep: float = num(1.0, above=0, max=1)  # probability of keeping each input token (else a random code)
    class_dropout: float = num(0.1, min=0, below=1)  # probability of the null class, for classifier-free guidance


@dataclass
class Stage2Config:
    run: RunConfig = field(default_factory=lambda: RunConfig(name="shapes_gpt"))
    stage1: Stage1Ref = field(default_factory=Stage1Ref)
    data: TokenDataConfig = field(default_factory=TokenDataConfig)
    model: GPTSection = field(default_factory=GPTSection)
    sample: SampleConfig = field(default_factory=SampleConfig)
    train: Train2Config = field(default_factory=Train2Config)

    def check(self, where: str) -> None:
        """Impossible combinations are errors; the data section is checked once the stage-1 model has completed it
        (complete_from_stage1)."""
        self.model.check(where)
        if self.model.kind == "maskgit" and self.train.pkeep < 1:
            raise ConfigError(f"train.pkeep={self.train.pkeep} corrupts a GPT's inputs; a masked model (model.kind="
                              f"maskgit) masks them instead: leave train.pkeep=1.0 ({where})")
        d = self.data
        if d.crop_size is not None:
            raise ConfigError(f"data.crop_size={d.crop_size} is for stage 1 ({where}): stage 2 encodes whole images "
                              "once and trains on windows of their token grids; leave data.crop_size out and set "
                              "model.window")
        if d.tokenize != "image":
            raise ConfigError(f"data.tokenize={d.tokenize} is for stage 1; a transformer reads image tokens ({where})")
        if (d.condition != "none") != bool(self.stage1.condition_checkpoint):
            raise ConfigError(f"data.condition={d.condition} and stage1.condition_checkpoint="
                              f"{self.stage1.condition_checkpoint} ({where}): a conditional transformer needs both, the "
                              "condition kind and the tokenizer trained on those maps (data.tokenize=condition)")
        if d.condition != "none" and self.model.class_conditional:
            raise ConfigError(f"model.class_conditional=true with data.condition={d.condition} ({where}): a model is "
                              "conditioned on classes or on maps, not both")
        self.train.check(where)

    def init_keys(self, init: dict) -> list[str]:
        """The keys a train.init_from checkpoint fixes: its model section."""
        return [f"model.{f.name}" for f in fields(GPTSection)]


def complete_from_stage1(cfg: Stage2Config, vq: VQGANConfig, cond: Optional[dict] = None) -> tuple[int, int]:
    """Fills data.channels and data.image_size left null with the stage-1 model's, checks those given, and returns
    the (h, w) token grid the data encodes to. The autoencoder is convolutional: larger images give larger grids.
    cond: the record of the condition tokenizer (transformer/loading.py), which must have tokenized maps of this
    kind, with its settings, into grids of the image's size."""
    d = cfg.data
    if d.channels is not None and d.channels != vq.channels:
        raise UserError(f"data.channels={d.channels} but the stage-1 model takes {vq.channels}; "
                        "leave data.channels unset (null) to use the stage-1 value")
    d.channels = vq.channels
    f = vq.downsample_factor
    if d.image_size is None:
        d.image_size = vq.image_size
    elif d.image_size % f:
        raise UserError(f"data.image_size={d.image_size} is not a multiple of the stage-1 downsampling factor {f}")
    grid = (d.image_size // f, d.image_size // f)
    if cond is not None:
        c = cond["data"]
        theirs = {k: c[k] for k in ("tokenize", "condition", "condition_classes", "condition_factor")}
        ours = {"tokenize": "condition", "condition": d.condition, "condition_classes": d.condition_classes or
                theirs["condition_classes"], "condition_factor": d.condition_factor}
        if d.condition != "segmentation":
            theirs.pop("condition_classes"), ours.pop("condition_classes")
        if d.condition != "lowres":
            theirs.pop("condition_factor"), ours.pop("condition_factor")
        if theirs != ours:
            raise UserError(f"stage1.condition_checkpoint '{cond['checkpoint']}' tokenizes {theirs}, this run's "
                            f"condition is {ours}; train the condition tokenizer with the same data.condition settings "
                            "and data.tokenize=condition")
        d.condition_classes = c["condition_classes"]
        cf = 2 ** (len(cond["model"]["ch_mult"]) - 1)
        if cf != f:
            raise UserError(f"the condition tokenizer's downsampling factor {cf} differs from the image tokenizer's "
                            f"{f}: their token grids must match position for position")
    d.check()
    w = tuple(cfg.model.window) or grid
    if w[0] > grid[0] or w[1] > grid[1]:
        raise UserError(f"model.window={list(w)} is larger than the {grid[0]}x{grid[1]} token grid of "
                        f"the stage-1 model; use at most [{grid[0]}, {grid[1]}] or [] for the whole grid")
    return grid


def gpt_config(cfg: Stage2Config, vq: VQGANConfig, grid: tuple[int, int], class_names: Optional[Sequence[str]],
               cond_vq: Optional[VQGANConfig] = None) -> GPTConfig:
    """The GPT this config trains over the codes of `vq`: its vocabulary (codes, then a start token or one token
    per class and a null class, then the codes of the condition tokenizer `cond_vq`), its window of the `grid`,
    and its size."""
    if cfg.model.class_conditional and not class_names:
        raise UserError(f"data.dataset={cfg.data.dataset} has no class labels; set model.class_conditional=false")
    return cfg.model.config(vq.codebook_size, grid, len(class_names) if cfg.model.class_conditional else 0,
                            cond_vq.codebook_size if cond_vq is not None else 0)


def check_init_layout(init: GPTConfig, gcfg: GPTConfig, path: str) -> None:
    """A transformer that a new run starts from (train.init_from) must read the same tokens: the same vocabulary
    (codes and classes) and the same sequence length (window)."""
    where = f"train.init_from '{path}'"
    if init.kind != gcfg.kind:
        raise UserError(f"{where} is a model.kind={init.kind} model, this run trains model.kind={gcfg.kind}: a "
                        "causal and a masked transformer read different sequences; start from scratch")
    if init.codebook_size != gcfg.codebook_size:
        raise UserError(f"{where} predicts {init.codebook_size} codes, this stage-1 model has {gcfg.codebook_size}: "
                        "a changed vocabulary; start from a transformer over this stage-1 model's codes, or from scratch")
    if init.num_classes != gcfg.num_classes:
        raise UserError(f"{where} knows {init.num_classes} classes, this data has "
                        f"{gcfg.num_classes}: a changed vocabulary ({init.vocab_size} tokens there, {gcfg.vocab_size} "
                        "here)")
    if init.window != gcfg.window:
        raise UserError(f"{where} reads windows of {init.window[0]}x{init.window[1]} tokens, this run's are "
                        f"{gcfg.window[0]}x{gcfg.window[1]}: a changed sequence length ({init.block_size} tokens "
                        f"there, {gcfg.block_size} here); use images of the size it was trained on")
