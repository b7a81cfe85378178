"""The stage-1 config schema (`configs/*_vqgan.yaml`): every key, its type, default and meaning.

The `model` section is the VQGAN's own config (`vqgan.model.VQGANConfig`); `run`, `data` and the shared
part of `train` are reused by the stage-2 schema.
"""
from dataclasses import dataclass, field
from typing import Optional

from utils.config import ConfigError, choices
from vqgan.discriminator import PatchDiscriminator
from vqgan.model import VQGANConfig


@dataclass
class RunConfig:
    name: str = "shapes_vqgan"
    out_dir: str = "runs"
    seed: int = 0


@dataclass
class DataConfig:
    dataset: str = choices("shapes", "mnist", "fashion_mnist", "cifar10", "folder", default="shapes")
    root: str = "data"                  # dataset files (mnist/fashion_mnist/cifar10) or the image tree (folder)
    val_root: Optional[str] = None      # folder only: a separate validation tree instead of val_fraction
    val_fraction: float = 0.05          # folder only: deterministic held-out fraction (at least one image)
    image_size: int = 32
    channels: int = choices(1, 3, default=3)
    batch_size: int = 32
    num_workers: int = 0
    download: bool = False              # torchvision datasets: download into root when missing
    num_train: int = 8000               # shapes only: generated training images
    num_val: int = 512                  # shapes only: generated validation images


@dataclass
class LossConfig:
    l1_weight: float = 1.0
    l2_weight: float = 0.0
    perceptual_weight: float = 0.0      # LPIPS; 0 builds no VGG at all
    lpips_vgg_weights: str = "imagenet"  # "imagenet" (torchvision download), a local VGG16 state dict, or "random"
    codebook_weight: float = 1.0
    disc_weight: float = 0.8            # multiplies the adaptive weight
    disc_start: int = 2000              # optimizer step at which the GAN terms switch on
    disc_loss: str = choices("hinge", "vanilla", default="hinge")
    disc_layers: int = 3
    disc_channels: int = 64
    disc_lr: Optional[float] = None     # defaults to train.lr


@dataclass
class BaseTrainConfig:
    """The `train` keys of both stages."""
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = choices("constant", "cosine", default="constant")
    min_lr_ratio: float = 0.1           # cosine floor, as a fraction of lr
    grad_clip: float = 0.0              # max global grad norm; 0 = off
    grad_accum: int = 1
    max_steps: int = 3000
    log_every: int = 50
    eval_every: int = 500
    ckpt_every: int = 500
    keep_last: int = 0                  # periodic step_XXXXXXX.pt kept besides last.pt; 0 = none
    precision: str = choices("fp32", "bf16", "fp16", default="fp32")
    compile: bool = False
    device: str = "auto"                # auto | cpu | cuda | cuda:N | mps
    eval_batches: int = 0               # validation batches per evaluation; 0 = the whole val split

    def check(self, where: str) -> None:
        for key in ("log_every", "eval_every", "ckpt_every", "grad_accum"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be at least 1, got {getattr(self, key)} ({where})")
        if self.max_steps < 0:
            raise ConfigError(f"train.max_steps must be >= 0, got {self.max_steps} ({where})")
        if len(self.betas) != 2:
            raise ConfigError(f"train.betas must be a list of two floats, got {self.betas} ({where})")


@dataclass
class TrainConfig(BaseTrainConfig):
    ema_decay: float = 0.0              # EMA of the autoencoder weights, used for validation; 0 = off
    rfid: bool = False                  # rFID on the val split (needs Inception weights)


@dataclass
class Stage1Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: VQGANConfig = field(default_factory=VQGANConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def check(self, where: str) -> None:
        """Impossible combinations are errors; model.image_size and model.channels left null take the data's."""
        m, d = self.model, self.data
        if m.channels is not None and m.channels != d.channels:
            raise ConfigError(f"model.channels={m.channels} but data.channels={d.channels} ({where}); "
                              "leave model.channels null to use data.channels")
        m.image_size = d.image_size if m.image_size is None else m.image_size
        m.channels = d.channels
        f = m.downsample_factor
        if d.image_size % f:
            raise ConfigError(f"data.image_size={d.image_size} is not divisible by the downsampling factor {f} "
                              f"of model.ch_mult={m.ch_mult} ({where}); use a multiple of {f}")
        for c in [m.ch * k for k in m.ch_mult] + [m.z_channels]:
            if c % 32:
                raise ConfigError(f"model.ch x model.ch_mult and model.z_channels must be multiples of 32 "
                                  f"(GroupNorm with 32 groups), got {c} ({where})")
        if self.loss.disc_start < self.train.max_steps and \
                PatchDiscriminator.output_size(d.image_size, self.loss.disc_layers) < 1:
            raise ConfigError(f"data.image_size={d.image_size} is too small for loss.disc_layers="
                              f"{self.loss.disc_layers} ({where}); use fewer layers or a later loss.disc_start")
        self.train.check(where)
